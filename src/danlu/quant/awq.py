"""AWQ (Lin et al. 2024): activation-aware weight quantization, one block at a time.

A few input channels carry much larger activations than the rest; the weights that multiply them matter
most. AWQ scales each input channel j of a Linear by s_j before quantizing (W' = W diag(s), which
rounds those columns on a finer relative grid) and divides its input by s_j, folded into the operation
that produces the input, so the model computes the same function in full precision:

    s = mean_tokens |x|^alpha, normalized by sqrt(max(s) min(s)); alpha in [0, 1] by grid search,
    minimizing || X W^T - (X / s) Q(W diag(s))^T ||^2 on the calibration inputs X of the block

Folds in a pre-norm Llama block: attn_norm's weight (qkv's input), mlp_norm's weight (gate_up's input),
the `up` rows of gate_up (down's input: silu(gate) * up is linear in up), and the v rows of qkv (proj's
input) when every query head has its own value head (under grouped-query attention a value channel feeds
several query heads' outputs, so proj is not scaled). Then a clipping search: for each (row, group),
the range ratio r in [clip_min, 1] whose clipped grid [r min, r max] gives the least output error.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from danlu.errors import ConfigError
from danlu.quant.quantizers import QuantSpec, _grouped, fake_quantize

GRID = 10  # alpha values searched (0, 0.1, ..., 0.9)
CLIP_STEPS = 10  # range ratios searched, from 1 down to clip_min
CLIP_MIN = 0.5
SCALE_ROWS = 256  # calibration tokens of the scale search (a seeded subset: its cost is GRID matmuls)
CLIP_ROWS = 256  # calibration tokens of the clipping search (its error tensor is rows x groups x tokens)


def _inputs(
    block: nn.Module, layer: int, x: torch.Tensor, rest: tuple[Any, ...], chunk: int
) -> dict[str, torch.Tensor]:
    """The inputs [tokens, in] of qkv, proj, gate_up and down over the block's calibration inputs."""
    names = ("attn.qkv", "attn.proj", "mlp.gate_up", "mlp.down")
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [
        block.get_submodule(n).register_forward_pre_hook(
            lambda _m, a, n=n: seen[n].append(a[0].flatten(0, -2))
        )
        for n in names
    ]
    try:
        for i in range(0, x.shape[0], chunk):
            block(x[i : i + chunk], layer, *rest)
    finally:
        for h in hooks:
            h.remove()
    g = torch.Generator().manual_seed(layer)
    out = {}
    for n, parts in seen.items():
        X = torch.cat(parts).float()
        out[n] = X[torch.randperm(X.shape[0], generator=g)[:SCALE_ROWS]]
    return out


def search_scale(W: torch.Tensor, X: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, float]:
    """The per-input-channel scale s (and its alpha) that minimizes the output error of Q(W s) (X / s)."""
    W, X = W.float(), X.float()
    ref = X @ W.T
    mean_abs = X.abs().mean(dim=0).clamp(min=1e-8)
    best = (torch.ones_like(mean_abs), 0.0, float("inf"))
    for i in range(GRID):
        alpha = i / GRID
        s = mean_abs.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        err = ((X / s) @ fake_quantize(W * s, spec).T - ref).square().mean().item()
        if err < best[2]:
            best = (s, alpha, err)
    return best[0], best[1]


def search_clip(W: torch.Tensor, X: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """W clipped per (row, group) to the range ratio with the least output error of that group."""
    rows, cols = W.shape
    width = spec.width(cols)
    Wg = _grouped(W.float(), width, 0.0)  # [rows, groups, width]
    Xg = _grouped(X.float(), width, 0.0)  # [tokens, groups, width]
    hi, lo = Wg.amax(dim=-1, keepdim=True), Wg.amin(dim=-1, keepdim=True)
    if spec.symmetric:
        hi = torch.maximum(hi.abs(), lo.abs())
        lo = -hi
    ref = torch.einsum("rgw,tgw->rgt", Wg, Xg)
    best_err = torch.full(Wg.shape[:2], float("inf"))
    best = Wg.clone()
    for i in range(CLIP_STEPS):
        r = 1 - (1 - CLIP_MIN) * i / CLIP_STEPS
        clipped = torch.minimum(torch.maximum(Wg, lo * r), hi * r)
        q = fake_quantize(clipped.reshape(rows, -1), QuantSpec(spec.bits, spec.symmetric, "group", width))
        q = q.view_as(Wg)
        err = (torch.einsum("rgw,tgw->rgt", q, Xg) - ref).square().mean(dim=-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better[..., None], clipped, best)
    return best.reshape(rows, -1)[:, :cols].to(W.dtype)


def _fold_input_scale(block: nn.Module, linear: str, s: torch.Tensor) -> None:
    """Divide the input of `linear` by s where it is made, multiply its weight's columns by s."""
    lin = block.get_submodule(linear)
    lin.weight.mul_(s.to(lin.weight.dtype))
    attn = block.attn
    if linear == "attn.qkv":
        _scale_norm(block.attn_norm, s)
    elif linear == "mlp.gate_up":
        _scale_norm(block.mlp_norm, s)
    elif linear == "mlp.down":
        up = block.mlp.gate_up
        hidden = up.out_features // 2
        up.weight[hidden:].div_(s[:, None].to(up.weight.dtype))
        if up.bias is not None:
            up.bias[hidden:].div_(s.to(up.bias.dtype))
    elif linear == "attn.proj":
        qkv = attn.qkv
        v0 = (attn.n_head + attn.n_kv_head) * attn.head_dim
        qkv.weight[v0:].div_(s[:, None].to(qkv.weight.dtype))
        if qkv.bias is not None:
            qkv.bias[v0:].div_(s.to(qkv.bias.dtype))


def _scale_norm(norm: nn.Module, s: torch.Tensor) -> None:
    weight = getattr(norm, "weight", None)
    if weight is None:
        raise ConfigError("AWQ folds its scales into the norms' weights; this model's norms have none")
    weight.div_(s.to(weight.dtype))
    if getattr(norm, "bias", None) is not None:
        norm.bias.div_(s.to(norm.bias.dtype))


def check_supported(model: nn.Module) -> None:
    cfg = model.cfg
    if cfg.norm_position != "pre" or cfg.n_experts or cfg.mlp not in ("swiglu", "geglu"):
        raise ConfigError("AWQ here folds scales into pre-norm dense gated blocks; use --method gptq or rtn")


@torch.no_grad()
def awq_block(
    block: nn.Module, layer: int, x: torch.Tensor, rest: tuple[Any, ...], local: list[str], spec: QuantSpec
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Fold AWQ scales into block (in place) and return, per targeted Linear (names local to the block),
    the clipped weight to quantize; and each scaled Linear's alpha."""
    X = _inputs(block, layer, x, rest, chunk=8)
    attn = block.attn
    scalable = {"attn.qkv", "mlp.gate_up", "mlp.down"}
    if attn.n_head == attn.n_kv_head:
        scalable.add("attn.proj")
    alphas: dict[str, float] = {}
    for name in ("attn.qkv", "attn.proj", "mlp.gate_up", "mlp.down"):
        if name not in local or name not in scalable:
            continue
        W = block.get_submodule(name).weight
        s, alphas[name] = search_scale(W, X[name], spec)
        _fold_input_scale(block, name, s)
        X[name] = X[name] / s
    clipped = {n: search_clip(block.get_submodule(n).weight, X[n][:CLIP_ROWS], spec) for n in local}
    return clipped, alphas
