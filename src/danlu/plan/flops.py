"""Parameter and FLOP counts of a model, exact from a danlu config or approximate from N.

The exact counts come from the model itself: the config is built on the meta device (no memory) and
asked for `num_params()` and `flops_per_token(seq_len)` (6 FLOPs per Linear weight a token passes
through, LM head included, plus attention's 12 * n_layer * n_embd * seq_len; PaLM appendix B).
Without a config, training costs the textbook C = 6 N D (Kaplan et al. 2020, section 2.1), and
generating a token costs 2 N (one multiply-add per weight) plus attention over the context,
4 * n_layer * n_embd * context.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from danlu.errors import ConfigError
from danlu.model.config import ModelConfig
from danlu.model.presets import PRESETS, resolve_model_config

# vocabulary assumed for presets that take theirs from a tokenizer (tiny, small, d12, d20), when the
# caller names none: GPT-2's 50257 padded to a multiple of 64, as nanoGPT does
DEFAULT_VOCAB = 50304


@dataclass(frozen=True)
class ModelShape:
    """What planning needs to know about a model: its dimensions and exact parameter counts."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int
    ffn_hidden: int
    vocab_size: int
    max_seq_len: int
    # distinct parameters (a tied LM head counts once)
    n_params: int
    # the token-embedding table (and position table); with tying it is also the LM head
    n_embedding: int
    # the Linear weights one token passes through, LM head included; an MoE counts top_k experts
    n_matmul: int
    # parameters used per token: n_params less the experts a token skips (= n_params when dense)
    n_active: int
    # weights of every expert MLP together (0 when dense)
    n_expert_params: int
    n_experts: int
    moe_top_k: int
    gated_mlp: bool
    norm: str

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_non_embedding(self) -> int:
        return self.n_params - self.n_embedding

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward) at this sequence length: the model's count."""
        return 6 * self.n_matmul + 12 * self.n_layer * self.n_embd * seq_len

    def inference_flops_per_token(self, context: int) -> int:
        """Forward FLOPs to generate one token with `context` tokens already in the KV cache."""
        return 2 * self.n_matmul + 4 * self.n_layer * self.n_embd * context


def model_config(spec: str | ModelConfig, **fields: object) -> ModelConfig:
    """A ModelConfig from a preset name or a config, with fields overriding it."""
    if isinstance(spec, ModelConfig):
        return dataclasses.replace(spec, **fields) if fields else spec  # type: ignore[arg-type]
    if spec not in PRESETS:
        raise ConfigError(f"unknown model {spec!r}; name a preset ({', '.join(PRESETS)}) or pass a recipe")
    return ModelConfig(preset=spec, **fields)  # type: ignore[arg-type]


def model_shape(cfg: ModelConfig, vocab_size: int | None = None) -> ModelShape:
    """The exact counts of `cfg` (preset, depth and fields resolved as training resolves them).

    vocab_size: the tokenizer's size, for configs whose vocabulary comes from the tokenizer; None uses
    the preset's own, else DEFAULT_VOCAB."""
    from danlu.model.moe import MoE
    from danlu.model.transformer import build_meta

    preset_vocab = PRESETS.get(cfg.preset or "", {}).get("vocab_size", 0)
    vocab = vocab_size or cfg.vocab_size or preset_vocab or DEFAULT_VOCAB
    resolved = resolve_model_config(cfg, vocab)
    model = build_meta(resolved)
    n_params = model.num_params()
    n_embedding = model.embed.weight.numel()
    if resolved.pos == "learned":
        n_embedding += model.pos_embed.weight.numel()
    n_matmul = model.flops_per_token(0) // 6
    experts = skipped = 0
    for block in model.blocks:
        if isinstance(block.mlp, MoE):
            n = sum(p.numel() for p in block.mlp.experts.parameters())
            experts += n
            skipped += n * (1 - block.mlp.top_k / block.mlp.n_experts)
    return ModelShape(
        name=resolved.preset or (f"depth {resolved.depth}" if resolved.depth else "custom"),
        n_layer=resolved.n_layer,
        n_embd=resolved.n_embd,
        n_head=resolved.n_head,
        n_kv_head=resolved.n_kv_head or resolved.n_head,
        ffn_hidden=resolved.ffn_hidden or 0,
        vocab_size=resolved.vocab_size,
        max_seq_len=resolved.max_seq_len,
        n_params=n_params,
        n_embedding=n_embedding,
        n_matmul=int(n_matmul),
        n_active=int(n_params - skipped),
        n_expert_params=experts,
        n_experts=resolved.n_experts,
        moe_top_k=resolved.moe_top_k if resolved.n_experts else 0,
        gated_mlp=resolved.mlp in ("swiglu", "geglu"),
        norm=resolved.norm,
    )


def training_flops(n_params: float, tokens: float) -> float:
    """C = 6 N D: 2 FLOPs per weight per token forward, 4 backward (Kaplan et al. 2020, 2.1)."""
    if n_params <= 0 or tokens <= 0:
        raise ConfigError(f"parameters and tokens must be > 0, got {n_params:g} and {tokens:g}")
    return 6.0 * n_params * tokens


def inference_flops(n_params: float, tokens: float) -> float:
    """2 N per generated token (attention over the context left out; see ModelShape for it)."""
    if n_params <= 0 or tokens < 0:
        raise ConfigError(f"parameters must be > 0 and tokens >= 0, got {n_params:g} and {tokens:g}")
    return 2.0 * n_params * tokens


def steps_for_budget(shape: ModelShape, flops: float, tokens_per_step: int, seq_len: int) -> int:
    """Whole optimizer steps of `tokens_per_step` tokens that a FLOP budget pays for (at least one)."""
    if tokens_per_step < 1 or seq_len < 1:
        raise ConfigError(
            f"tokens per step and sequence length must be >= 1, got {tokens_per_step}, {seq_len}"
        )
    per_step = shape.flops_per_token(seq_len) * tokens_per_step
    if flops < per_step:
        raise ConfigError(
            f"a budget of {flops:.3g} FLOPs is below one optimizer step of {shape.name} "
            f"({per_step:.3g} FLOPs for {tokens_per_step} tokens at sequence length {seq_len}); "
            "raise the budget or shrink the batch or the model"
        )
    return int(flops // per_step)
