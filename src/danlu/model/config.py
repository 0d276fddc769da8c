"""The model's shape and architecture options (`model.*` in a recipe; config.json of a model dir)."""

from __future__ import annotations

from dataclasses import dataclass

from danlu.errors import check


@dataclass
class ModelConfig:
    # Named shape from danlu.model.presets ("tiny", "small", ...); explicit fields below override it.
    preset: str | None = None
    # Single dial: n_layer = depth, width and heads follow (see danlu.model.presets.from_depth).
    depth: int | None = None
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    # Key/value heads for grouped-query attention; None means n_head (multi-head attention).
    n_kv_head: int | None = None
    # SwiGLU hidden size; None means 8/3 * n_embd rounded up to a multiple of 16.
    ffn_hidden: int | None = None
    # 0 means: take it from the tokenizer.
    vocab_size: int = 0
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02
    # Architecture options; the defaults are the Llama design (and what HF Llama export supports).
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    norm_position: str = "pre"  # pre | post (the original Transformer's post-LN)
    mlp: str = "swiglu"  # swiglu | geglu | gelu | relu
    pos: str = "rope"  # rope | alibi | learned | sinusoidal | none
    # RoPE context extension: none | linear (position interpolation) | ntk | yarn, by rope_factor over
    # rope_original_max_len (0: max_seq_len / rope_factor).
    rope_scaling: str = "none"
    rope_factor: float = 1.0
    rope_original_max_len: int = 0
    # Each query sees only the last sliding_window keys (0: all earlier keys).
    sliding_window: int = 0
    # RMSNorm on each head's queries and keys before RoPE.
    qk_norm: bool = False
    # Final logits squashed to (-cap, cap) by cap * tanh(logits / cap); 0 disables it.
    logit_softcap: float = 0.0
    # Biases in every Linear (and LayerNorm).
    bias: bool = False
    # Dropout on embeddings, attention probabilities and residual branches.
    dropout: float = 0.0
    # Distinct blocks; n_layer blocks cycle through them (ALBERT-style sharing). 0: no sharing.
    n_unique_layers: int = 0
    # Mixture of experts: n_experts > 0 replaces the MLP of every moe_every-th block by n_experts MLPs
    # (each ffn_hidden wide) and a router sending each token to its moe_top_k best. An expert takes at
    # most capacity_factor * tokens * top_k / n_experts tokens per batch (0: no limit, nothing dropped).
    n_experts: int = 0
    moe_top_k: int = 2
    moe_every: int = 1
    moe_capacity_factor: float = 0.0
    # Switch-Transformer load-balancing loss and ST-MoE router z-loss, added to the training loss.
    moe_aux_loss: float = 0.01
    moe_z_loss: float = 0.001

    def __post_init__(self) -> None:
        choices = {
            "norm": ("rmsnorm", "layernorm"),
            "norm_position": ("pre", "post"),
            "mlp": ("swiglu", "geglu", "gelu", "relu"),
            "pos": ("rope", "alibi", "learned", "sinusoidal", "none"),
            "rope_scaling": ("none", "linear", "ntk", "yarn"),
        }
        for key, allowed in choices.items():
            value = getattr(self, key)
            check(value in allowed, f"model.{key}", f"must be one of {', '.join(allowed)}, got {value!r}")
        check(self.rope_factor >= 1.0, "model.rope_factor", f"must be >= 1, got {self.rope_factor}")
        check(self.rope_original_max_len >= 0, "model.rope_original_max_len", "must be >= 0")
        check(self.sliding_window >= 0, "model.sliding_window", "must be >= 0")
        check(self.logit_softcap >= 0, "model.logit_softcap", "must be >= 0")
        check(0 <= self.dropout < 1, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        check(
            self.n_unique_layers == 0 or (1 <= self.n_unique_layers <= self.n_layer),
            "model.n_unique_layers",
            f"must be 0 or in [1, n_layer], got {self.n_unique_layers}",
        )
        check(self.n_experts >= 0, "model.n_experts", "must be >= 0")
        if self.n_experts:
            check(
                1 <= self.moe_top_k <= self.n_experts,
                "model.moe_top_k",
                f"must be in [1, n_experts={self.n_experts}], got {self.moe_top_k}",
            )
            check(self.moe_every >= 1, "model.moe_every", "must be >= 1")
            check(self.moe_capacity_factor >= 0, "model.moe_capacity_factor", "must be >= 0")
            check(self.moe_aux_loss >= 0 and self.moe_z_loss >= 0, "model.moe_aux_loss", "must be >= 0")
        for key in ("n_layer", "n_embd", "n_head", "max_seq_len"):
            check(getattr(self, key) >= 1, f"model.{key}", f"must be >= 1, got {getattr(self, key)}")
        check(self.depth is None or self.depth >= 1, "model.depth", f"must be >= 1, got {self.depth}")
        check(self.vocab_size >= 0, "model.vocab_size", f"must be >= 0, got {self.vocab_size}")
        check(self.n_kv_head is None or self.n_kv_head >= 1, "model.n_kv_head", "must be >= 1")
        check(self.ffn_hidden is None or self.ffn_hidden >= 1, "model.ffn_hidden", "must be >= 1")
