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
- build on the meta device (`build_meta`), transform from outside (adapters, parallelism), then
  `materialize`: `to_empty(device)` and `init_weights()` (or load weights), so a single-device build and
  a sharded one share one path; RoPE tables are non-persistent buffers made in `init_weights`
- inference uses a preallocated `KVCache` (kv_cache.py) with a length per row; prefill, single-token
  decode and rows at different positions (continuous batching) share `forward`
- speed: RoPE, SwiGLU and RMSNorm are small autograd Functions whose backward writes into one buffer
  (no cat, fewer passes); when nothing needs a gradient (inference) they skip the Function and call
  its forward directly (`_needs_grad`): a Function call costs tens of microseconds, which a batch-1
  decode step pays about 150 times. Every Linear is still called as a module, so LoRA/quantization
  can swap it

Options beyond that Llama default (ModelConfig): LayerNorm, post-LN, GeGLU/GELU/ReLU MLPs (non-gated
ones have `up` and `down`), ALiBi / learned / sinusoidal / no positions, RoPE scaling (linear position
interpolation, NTK-aware, YaRN: positions.py), sliding-window attention, QK-norm, final-logit soft-capping,
biases, dropout, and cross-layer sharing (n_layer blocks cycling through n_unique_layers). Masks other
than plain causal (ALiBi, windows, a caller's attn_mask) are built once per forward in `attention_bias`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from danlu.errors import ConfigError
from danlu.model.config import ModelConfig
from danlu.model.kv_cache import KVCache, Step
from danlu.model.moe import MoE, MoELosses
from danlu.model.positions import alibi_slopes, rope_frequencies, sinusoidal_table

# (cos, sin) tables of the positions in the forward pass, or None without RoPE
Rope = tuple[torch.Tensor, torch.Tensor] | None
# (SDPA attn_mask: bool mask or additive bias, or None; is_causal), built once per forward
AttnBias = tuple[torch.Tensor | None, bool]


def _needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will record this op: only then is the Function's backward needed."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


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
    if not _needs_grad(x, cos, sin):
        return _rotate(x, cos, sin, 1.0)
    return _Rope.apply(x, cos, sin)


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Attention of one query per row, q [B, H, 1, hd], over its keys k, v [B, H_kv, S, hd]; mask (bool,
    True = may attend, or an additive float bias) broadcasts to [B, 1, 1, S]. Three small batched
    matmuls: at one query SDPA's CPU flash kernel spends more on its blocking than on the product (about
    half of a SmolLM2 decode step). Query heads are grouped by the key/value head they share, so GQA
    needs no repeated keys."""
    B, H, _, hd = q.shape
    H_kv = k.size(1)
    scores = (q.reshape(B, H_kv, H // H_kv, hd) @ k.transpose(-1, -2)).mul_(hd**-0.5)  # [B, H_kv, g, S]
    if mask is not None:
        scores = scores.masked_fill_(~mask, float("-inf")) if mask.dtype == torch.bool else scores.add_(mask)
    return (scores.softmax(-1) @ v).reshape(B, H, 1, hd)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.n_kv_head or cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=cfg.bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, cfg.n_embd, bias=cfg.bias)
        self.q_norm = RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.dropout = cfg.dropout

    def forward(
        self,
        x: torch.Tensor,
        layer: int,
        rope: Rope,
        bias: AttnBias,
        cache: KVCache | None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        nq, nkv, hd = self.n_head, self.n_kv_head, self.head_dim
        qkv = self.qkv(x).view(B, T, nq + 2 * nkv, hd)
        if rope is not None and self.q_norm is None:
            # q and k heads are adjacent in the fused output: rotate them with one set of ops. split (not
            # slicing) keeps the backward to one cat instead of a zero-filled full-size gradient per slice
            qk, v = qkv.split((nq + nkv, nkv), dim=2)
            q, k = apply_rope(qk, *rope).split((nq, nkv), dim=2)
        else:
            q, k, v = qkv.split((nq, nkv, nkv), dim=2)
            if self.q_norm is not None and self.k_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, hd]
        if cache is not None:
            k, v = cache.update(layer, k, v)
        mask, causal = bias
        # the one-query path takes bool masks and additive biases shared by every head ([B, 1, 1, S])
        per_head = mask is not None and mask.dtype != torch.bool and mask.dim() >= 3 and mask.size(-3) > 1
        if T == 1 and not self.training and not per_head:
            y = decode_attention(q, k, v, mask)
        else:
            drop = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, dropout_p=drop, enable_gqa=nkv != nq
            )
        return self.proj(y.transpose(1, 2).reshape(B, T, nq * hd))


def _rstd(x: torch.Tensor, eps: float) -> torch.Tensor:
    # the mean square in at least fp32, also for bf16 inputs
    acc = torch.promote_types(x.dtype, torch.float32)
    ms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=acc).square_().div_(x.size(-1))
    return ms.add_(eps).rsqrt_().to(x.dtype)


class _RMSNormFn(torch.autograd.Function):
    """y = x / rms(x) * w with a hand-written backward (torch's CPU RMSNorm is a chain of small ops)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        rstd = _rstd(x, eps)
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
        if not _needs_grad(x, self.weight):
            if x.dtype == self.weight.dtype:  # torch's fused kernel: the same fp32 numbers, fewer ops
                return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)
            return torch.mul(x, _rstd(x, self.eps)).mul_(self.weight)
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
    """Gated (swiglu, geglu: one fused `gate_up` Linear) or plain (gelu, relu: `up`), then `down`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.ffn_hidden or default_ffn_hidden(cfg.n_embd)
        self.kind = cfg.mlp
        if self.kind in ("swiglu", "geglu"):
            self.gate_up = nn.Linear(cfg.n_embd, 2 * hidden, bias=cfg.bias)
        else:
            self.up = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            gate_up = self.gate_up(x)
            if not _needs_grad(gate_up):
                gate, up = gate_up.chunk(2, dim=-1)
                return self.down(F.silu(gate).mul_(up))
            return self.down(_SwiGLU.apply(gate_up))
        if self.kind == "geglu":
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.down(F.gelu(gate, approximate="tanh") * up)
        h = self.up(x)
        return self.down(F.gelu(h, approximate="tanh") if self.kind == "gelu" else F.relu(h))


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "layernorm":
        return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)
    return RMSNorm(dim, eps=cfg.norm_eps)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, moe: bool = False):
        super().__init__()
        self.attn_norm = make_norm(cfg, cfg.n_embd)
        self.attn = Attention(cfg)
        self.mlp_norm = make_norm(cfg, cfg.n_embd)
        self.mlp: nn.Module = MoE(cfg, MLP) if moe else MLP(cfg)
        self.post_norm = cfg.norm_position == "post"
        self.resid_drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        layer: int,
        rope: Rope,
        bias: AttnBias,
        cache: KVCache | None,
    ) -> tuple[torch.Tensor, MoELosses | None]:
        """(the block's output, the MoE router losses of this call or None)."""
        if self.post_norm:  # x = norm(x + f(x)), as in the original Transformer
            x = self.attn_norm(x + self.resid_drop(self.attn(x, layer, rope, bias, cache)))
            h, aux = self._mlp(x)
            return self.mlp_norm(x + self.resid_drop(h)), aux
        x = x + self.resid_drop(self.attn(self.attn_norm(x), layer, rope, bias, cache))
        h, aux = self._mlp(self.mlp_norm(x))
        return x + self.resid_drop(h), aux

    def _mlp(self, x: torch.Tensor) -> tuple[torch.Tensor, MoELosses | None]:
        if isinstance(self.mlp, MoE):
            return self.mlp(x)
        return self.mlp(x), None


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
        if cfg.pos == "learned":
            self.pos_embed = nn.Embedding(cfg.max_seq_len, cfg.n_embd)
        self.embed_drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(cfg, moe=cfg.n_experts > 0 and i % cfg.moe_every == cfg.moe_every - 1)
            for i in range(cfg.n_unique_layers or cfg.n_layer)
        )
        self.moe_layers = [b.mlp for b in self.blocks if isinstance(b.mlp, MoE)]
        # post-LN blocks end normalized; pre-LN ones need a final norm before the head
        self.norm = make_norm(cfg, cfg.n_embd) if cfg.norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        half = cfg.n_embd // cfg.n_head // 2
        if cfg.pos == "rope":
            self.register_buffer("rope_cos", torch.empty(cfg.max_seq_len, 1, half), persistent=False)
            self.register_buffer("rope_sin", torch.empty(cfg.max_seq_len, 1, half), persistent=False)
        if cfg.pos == "sinusoidal":
            self.register_buffer("pos_table", torch.empty(cfg.max_seq_len, cfg.n_embd), persistent=False)
        if cfg.pos == "alibi":
            self.register_buffer("alibi", torch.empty(cfg.n_head), persistent=False)

    @torch.no_grad()
    def init_buffers(self) -> None:
        """After `to_empty`: tie the head to the embedding again (to_empty may have replaced the shared
        tensor) and compute the non-persistent position tables. Weights are left as they are. A
        quantized table (danlu.quant.embedding) is one module at both names, tied already."""
        if self.cfg.tie_embeddings and isinstance(self.embed, nn.Embedding):
            self.lm_head.weight = self.embed.weight
        self._init_positions()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Every initialisation in one place (see the module docstring)."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layer)
        self.init_buffers()
        nn.init.normal_(self.embed.weight, 0.0, std)
        if not self.cfg.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, 0.0, std)
        if self.cfg.pos == "learned":
            nn.init.normal_(self.pos_embed.weight, 0.0, std)
        for block in self.blocks:
            for name, m in block.named_modules():
                if isinstance(m, nn.Linear):
                    out = name.endswith(("proj", "down"))  # residual outputs, scaled as in GPT-2
                    nn.init.normal_(m.weight, 0.0, out_std if out else std)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, nn.RMSNorm | nn.LayerNorm):
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def _init_positions(self) -> None:
        cfg = self.cfg
        if cfg.pos == "rope":
            device = self.rope_cos.device
            inv_freq, scale = rope_frequencies(cfg, device)
            pos = torch.arange(cfg.max_seq_len, device=device, dtype=torch.float32)
            angles = torch.outer(pos, inv_freq)[:, None, :]  # [T, 1, hd/2]: broadcasts over heads
            self.rope_cos.copy_(angles.cos() * scale)
            self.rope_sin.copy_(angles.sin() * scale)
        elif cfg.pos == "sinusoidal":
            self.pos_table.copy_(sinusoidal_table(cfg.max_seq_len, cfg.n_embd))
        elif cfg.pos == "alibi":
            self.alibi.copy_(alibi_slopes(cfg.n_head))

    def attention_bias(
        self,
        start: int,
        T: int,
        device: torch.device,
        dtype: torch.dtype,
        attn_mask: torch.Tensor | None,
        starts: torch.Tensor | None = None,
    ) -> AttnBias:
        """(mask or additive bias for SDPA, is_causal) for queries at start..start+T-1 over all keys
        up to them, or, with per-row `starts` [B], for each row's queries over its own keys. A plain
        causal model uses SDPA's is_causal without building a mask."""
        cfg = self.cfg
        plain = cfg.pos != "alibi" and not cfg.sliding_window and attn_mask is None
        if plain and starts is None:
            if start == 0:
                return None, T > 1
            if T == 1:
                return None, False  # one new query sees every cached key
        # queries sit after the cached keys; is_causal aligns top-left, wrong when keys outnumber queries
        if starts is None:
            rel = torch.arange(start, start + T, device=device)[:, None] - torch.arange(
                start + T, device=device
            )
        else:
            queries = starts[:, None] + torch.arange(T, device=device)  # [B, T]
            keys = torch.arange(int(starts.max()) + T, device=device)
            rel = (queries[:, :, None] - keys)[:, None]  # [B, 1, T, S]: a row sees only its own keys
        allowed = rel >= 0 if attn_mask is None else attn_mask.to(device=device, dtype=torch.bool)
        if cfg.sliding_window:
            allowed = allowed & (rel < cfg.sliding_window)
        if cfg.pos != "alibi":
            if starts is not None and T == 1:  # rows decoding at their own lengths: the bias is added
                # in every layer, once built here (a bool mask would be negated and filled per layer)
                bias = torch.zeros(allowed.shape, dtype=dtype, device=device)
                return bias.masked_fill_(~allowed, float("-inf")), False
            return allowed, False
        # distance penalty; |rel| also serves bidirectional masks (for causal ones the two agree)
        slopes = self.alibi[:, None, None]  # [H, 1, 1]: broadcasts over [T, S] and [B, 1, T, S]
        bias = -slopes * rel.abs().to(self.alibi.dtype)
        return bias.masked_fill(~allowed, float("-inf")).to(dtype), False

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
        return_aux: bool = False,
        rows: slice | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [B, T, vocab] (fp32) for token ids idx [B, T]; with a cache, idx continues it.

        With a cache, idx continues rows `rows` of it (all rows when None), each at its own length.
        attn_mask (bool, True = may attend, [B, 1, T, T] or [T, T]) replaces causal attention, for the
        bidirectional and prefix-LM objectives. return_aux: return (logits, aux) where aux is the
        weighted MoE router loss of this forward (None for a dense model, or without gradients), for
        the caller to add to its training loss."""
        cfg = self.cfg
        T = idx.size(1)
        step = self._plan(cache, rows, idx.size(0), T, attn_mask)
        start = step.start if step is not None else 0
        # per-row positions [B, T] when the rows sit at different lengths, else one range
        where: slice | torch.Tensor = slice(start, start + T)
        if step is not None and not step.uniform:
            where = step.starts[:, None] + torch.arange(T, device=idx.device)
        x = self.embed(idx)
        if cfg.pos == "learned":
            x = x + self.pos_embed.weight[where]
        elif cfg.pos == "sinusoidal":
            x = x + self.pos_table[where].to(x.dtype)
        x = self.embed_drop(x)
        rope = None
        if cfg.pos == "rope":
            rope = (self.rope_cos[where].to(x.dtype), self.rope_sin[where].to(x.dtype))
        starts = step.starts if step is not None and not step.uniform else None
        bias = self.attention_bias(start, T, x.device, x.dtype, attn_mask, starts)
        router_losses: list[MoELosses] = []
        for layer in range(cfg.n_layer):
            x, aux = self.blocks[layer % len(self.blocks)](x, layer, rope, bias, cache)
            if aux is not None:
                router_losses.append(aux)
        if cache is not None:
            cache.finish()
        logits = self.lm_head(self.norm(x)).float()
        if cfg.logit_softcap > 0:
            logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
        return (logits, self._moe_loss(router_losses)) if return_aux else logits

    def _plan(
        self, cache: KVCache | None, rows: slice | None, B: int, T: int, attn_mask: torch.Tensor | None
    ) -> Step | None:
        """The cache's write plan for this forward, checked against the context."""
        context = self.cfg.max_seq_len
        if cache is None:
            end = T
        else:
            step = cache.begin(rows, T)
            end, context = step.end, min(cache.max_len, context)
            if step.starts.numel() != B:
                cache.step = None
                raise ConfigError(f"a batch of {B} rows continues {step.starts.numel()} cache rows")
            if attn_mask is not None and not step.uniform:
                cache.step = None
                raise ConfigError("attn_mask needs cache rows at one length")
        if end > context:
            if cache is not None:
                cache.step = None
            raise ConfigError(
                f"{end} positions exceed the model's context of {context} "
                "tokens; use shorter sequences or a model with a larger model.max_seq_len"
            )
        return cache.step if cache is not None else None

    def _moe_loss(self, losses: list[MoELosses]) -> torch.Tensor | None:
        if not losses:
            return None
        balance = torch.stack([b for b, _ in losses]).mean()
        z = torch.stack([z for _, z in losses]).mean()
        return self.cfg.moe_aux_loss * balance + self.cfg.moe_z_loss * z

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Distinct parameters; exclude_embedding drops the embedding table (with tying, the LM head too)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embedding else n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token: 6 * N_matmul + 12 * n_layer * n_embd * seq_len.

        N_matmul counts the weights of every Linear a token passes through, the LM head included (tied
        or not): each weight costs 2 FLOPs forward and 4 backward per token. An MoE layer counts its
        router and top_k of its experts; shared blocks count once per use. The second term is
        attention's score and value matmuls (PaLM appendix B), over the full seq_len x seq_len matrix.
        """

        def linear_weights(module: nn.Module) -> int:
            return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))

        per_pass = 0.0
        for block in self.blocks:
            per_pass += linear_weights(block)
            if isinstance(block.mlp, MoE):  # only top_k of the experts run for a token
                per_pass -= linear_weights(block.mlp.experts) * (1 - block.mlp.top_k / block.mlp.n_experts)
        n_matmul = (
            per_pass * self.cfg.n_layer / len(self.blocks)
            + linear_weights(self)
            - linear_weights(self.blocks)
        )
        return int(6 * n_matmul) + 12 * self.cfg.n_layer * self.cfg.n_embd * seq_len


def build_meta(cfg: ModelConfig) -> Transformer:
    """The model on the meta device: shapes only, no memory. Transform it from outside (adapters, a
    parallel layout), then `materialize` it."""
    with torch.device("meta"):
        return Transformer(cfg)


def materialize(model: nn.Module, device: torch.device | str = "cpu", init: bool = True) -> nn.Module:
    """Allocate a meta-built model's tensors on `device`; with init, initialise every weight
    (`init_weights`), else only tie and compute the position tables, for weights loaded next."""
    model.to_empty(device=device)
    for m in model.modules():
        if isinstance(m, Transformer):
            m.init_weights() if init else m.init_buffers()
    return model


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> Transformer:
    """Build on the meta device (no memory, no wasted init), materialise on `device`, initialise."""
    model = build_meta(cfg)
    materialize(model, device)
    return model
