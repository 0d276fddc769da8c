"""The danlu transformer: a decoder-only Llama-style language model in one file.

Architecture choices (each matches Hugging Face `LlamaForCausalLM`, so weights map one to one):

- token embedding `embed` (no position embedding); `lm_head` tied to `embed` when `cfg.tie_embeddings`
- n_layer pre-norm blocks: x + attn(attn_norm(x)), then x + mlp(mlp_norm(x)); a final `norm`
- RMSNorm (an `nn.RMSNorm` with a fused backward; learned gain, eps = cfg.norm_eps), no biases
- attention: one fused `qkv` Linear (rows: q heads, then k heads, then v heads), grouped-query attention
  with `n_kv_head` key/value heads, output `proj` Linear, causal `F.scaled_dot_product_attention`
- rotary position embedding on q and k, HF/Llama "rotate_half" (non-interleaved) convention:
  the first and second halves of each head are the two coordinates of each rotated pair
- SwiGLU MLP: one fused `gate_up` Linear (rows: gate, then up), silu(gate) * up, `down` Linear
- logits are returned in fp32
- init (all of it in `init_weights`): normal(0, init_std) for embeddings and Linears, output projections
  (`proj`, `down`) scaled by 1/sqrt(2 * n_layer) as in GPT-2, RMSNorm gains 1
- build on the meta device, `to_empty(device)`, then `init_weights()` (`build_model`), so a single-device
  build and a sharded one share one path; RoPE tables are non-persistent buffers made in `init_weights`
- inference uses a preallocated `KVCache`; prefill and single-token decode share `forward`
- speed: RoPE, SwiGLU and RMSNorm are small autograd Functions whose backward writes into one buffer
  (no cat, fewer passes); every Linear is still called as a module, so LoRA/quantization can swap it
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from danlu.config import ModelConfig
from danlu.errors import ConfigError


class KVCache:
    """Preallocated keys and values of every layer: [n_layer, batch, n_kv_head, max_len, head_dim].

    `pos` is the number of positions already written; the model advances it after each forward.
    """

    def __init__(
        self,
        batch: int,
        n_layer: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ):
        shape = (n_layer, batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0

    @classmethod
    def for_model(cls, model: Transformer, batch: int = 1, max_len: int | None = None) -> KVCache:
        cfg = model.cfg
        param = model.embed.weight
        return cls(
            batch,
            cfg.n_layer,
            model.n_kv_head,
            max_len or cfg.max_seq_len,
            cfg.n_embd // cfg.n_head,
            param.device,
            param.dtype,
        )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, n_kv_head, T, hd] at `pos`; return all cached keys and values up to pos + T."""
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reset(self) -> None:
        self.pos = 0


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    # written into halves of one output buffer: no cat, no temporaries
    x1, x2 = x.chunk(2, dim=-1)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    o1, o2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin, value=sign)
    return out


class _Rope(torch.autograd.Function):
    """Rotation by the RoPE angles; its gradient is the rotation by minus the angles."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, -1.0), None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + hd/2]) of x [..., T, H, hd] by the angles in cos/sin [T, 1, hd/2].

    Equals HF's q * cos + rotate_half(q) * sin with cos/sin repeated over both halves.
    """
    return _Rope.apply(x, cos, sin)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.n_kv_head or cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.proj = nn.Linear(self.n_head * self.head_dim, cfg.n_embd, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        nq, nkv, hd = self.n_head, self.n_kv_head, self.head_dim
        # q and k heads are adjacent in the fused output: rotate them with one set of ops. split (not
        # slicing) keeps the backward to one cat instead of a zero-filled full-size gradient per slice
        qk, v = self.qkv(x).view(B, T, nq + 2 * nkv, hd).split((nq + nkv, nkv), dim=2)
        q, k = apply_rope(qk, cos, sin).split((nq, nkv), dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, hd]
        mask, causal = None, T > 1
        if cache is not None:
            start = cache.pos
            k, v = cache.update(self.layer, k, v)
            if start > 0 and T > 1:
                # queries sit at start..start+T-1 and may see every key up to their own position;
                # SDPA's is_causal aligns the mask top-left, which is wrong when keys outnumber queries
                q_pos = torch.arange(start, start + T, device=x.device)
                mask = torch.arange(start + T, device=x.device) <= q_pos[:, None]
                causal = False
            elif start > 0:
                causal = False  # one new query sees every cached key
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=nkv != nq)
        return self.proj(y.transpose(1, 2).reshape(B, T, nq * hd))


class _RMSNormFn(torch.autograd.Function):
    """y = x / rms(x) * w with a hand-written backward (torch's CPU RMSNorm is a chain of small ops)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        # the mean square in at least fp32, also for bf16 inputs
        acc = torch.promote_types(x.dtype, torch.float32)
        ms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=acc).square_().div_(x.size(-1))
        rstd = ms.add_(eps).rsqrt_().to(x.dtype)
        ctx.save_for_backward(x, weight, rstd)
        return torch.mul(x, rstd).mul_(weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, weight, rstd = ctx.saved_tensors
        xhat = x * rstd
        d_weight = (grad * xhat).flatten(0, -2).sum(0)
        d_xhat = grad * weight
        # d/dx of x * rstd(x): rstd * (d_xhat - xhat * mean(d_xhat * xhat))
        dot = (d_xhat * xhat).sum(-1, keepdim=True)
        return d_xhat.addcmul_(xhat, dot, value=-1.0 / x.size(-1)).mul_(rstd), d_weight, None


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm (same parameters and type) with a faster fused forward and backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.eps is not None and self.weight is not None
        return _RMSNormFn.apply(x, self.weight, self.eps)


class _SwiGLU(torch.autograd.Function):
    """silu(gate) * up from the fused [..., 2 * hidden] projection.

    The backward writes both halves of the gradient into one buffer, where autograd would build them
    separately and then cat them.
    """

    @staticmethod
    def forward(ctx: Any, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(gate_up, act)
        return act * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        gate_up, act = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        out = torch.empty(gate_up.shape, dtype=gate_up.dtype, device=gate_up.device)
        d_gate, d_up = out.chunk(2, dim=-1)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=d_gate)
        torch.mul(act, grad, out=d_up)
        return out


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.ffn_hidden or default_ffn_hidden(cfg.n_embd)
        self.gate_up = nn.Linear(cfg.n_embd, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(_SwiGLU.apply(self.gate_up(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

        # set by danlu.train.memory.apply_activation_checkpointing: recompute activations in backward
        self.checkpointed = False

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None
    ) -> torch.Tensor:
        if self.checkpointed and cache is None and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, cos, sin, None, use_reentrant=False)
        return self._forward(x, cos, sin, cache)

    def _forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.mlp(self.mlp_norm(x))


def default_ffn_hidden(n_embd: int) -> int:
    """SwiGLU width 8/3 * d (same parameters as a 4d GELU MLP), rounded up to a multiple of 16."""
    return 16 * math.ceil(8 * n_embd / 3 / 16)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ConfigError("model.vocab_size is 0; resolve the config first (danlu.model.presets)")
        self.cfg = cfg
        self.n_kv_head = cfg.n_kv_head or cfg.n_head
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        half = cfg.n_embd // cfg.n_head // 2
        self.register_buffer("rope_cos", torch.empty(cfg.max_seq_len, 1, half), persistent=False)
        self.register_buffer("rope_sin", torch.empty(cfg.max_seq_len, 1, half), persistent=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Every initialisation in one place (see the module docstring)."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layer)
        if self.cfg.tie_embeddings:  # to_empty may have replaced the shared tensor: tie again
            self.lm_head.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, 0.0, std)
        if not self.cfg.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, 0.0, std)
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, 0.0, std)
            nn.init.normal_(block.attn.proj.weight, 0.0, out_std)
            nn.init.normal_(block.mlp.gate_up.weight, 0.0, std)
            nn.init.normal_(block.mlp.down.weight, 0.0, out_std)
            nn.init.ones_(block.attn_norm.weight)
            nn.init.ones_(block.mlp_norm.weight)
        nn.init.ones_(self.norm.weight)
        self._init_rope()

    def _init_rope(self) -> None:
        # angles as HF computes them (fp32 inverse frequencies times positions), so logits match
        hd = self.cfg.n_embd // self.cfg.n_head
        device = self.rope_cos.device
        inv_freq = 1.0 / (
            self.cfg.rope_theta ** (torch.arange(0, hd, 2, device=device, dtype=torch.int64).float() / hd)
        )
        pos = torch.arange(self.cfg.max_seq_len, device=device, dtype=torch.float32)
        angles = torch.outer(pos, inv_freq)[:, None, :]  # [T, 1, hd/2]: broadcasts over heads
        self.rope_cos.copy_(angles.cos())
        self.rope_sin.copy_(angles.sin())

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits [B, T, vocab] (fp32) for token ids idx [B, T]; with a cache, idx continues it."""
        T = idx.size(1)
        start = cache.pos if cache is not None else 0
        limit = cache.max_len if cache is not None else self.cfg.max_seq_len
        if start + T > min(limit, self.cfg.max_seq_len):
            raise ConfigError(
                f"{start + T} positions exceed the model's context of {min(limit, self.cfg.max_seq_len)} "
                "tokens; use shorter sequences or a model with a larger model.max_seq_len"
            )
        x = self.embed(idx)
        cos = self.rope_cos[start : start + T].to(x.dtype)
        sin = self.rope_sin[start : start + T].to(x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        if cache is not None:
            cache.pos += T
        return self.lm_head(self.norm(x)).float()

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Distinct parameters; exclude_embedding drops the embedding table (with tying, the LM head too)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embedding else n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token: 6 * N_matmul + 12 * n_layer * n_embd * seq_len.

        N_matmul counts the weights of every Linear, the LM head included (tied or not): each weight
        costs 2 FLOPs forward and 4 backward per token. The second term is attention's score and
        value matmuls (PaLM appendix B), counted over the full, unmasked seq_len x seq_len matrix.
        """
        n_matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * n_matmul + 12 * self.cfg.n_layer * self.cfg.n_embd * seq_len


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> Transformer:
    """Construct on the meta device (no memory, no wasted init), materialise on `device`, initialise."""
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    model.init_weights()
    return model
