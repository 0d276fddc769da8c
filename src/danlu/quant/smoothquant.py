"""SmoothQuant (Xiao et al. 2023): W8A8 with the activations' outlier channels moved into the weights.

Per-token int8 activations lose the small channels to a few large ones. SmoothQuant divides each input
channel j of a Linear by

    s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)        (alpha: the migration strength, 0.5 default)

and multiplies the weight's column j by s_j (folded as in AWQ: into the norms, the up rows of gate_up,
the v rows of qkv without grouped-query attention), so the function is unchanged in full precision and
activations and weights share the range. Then weights are int8 per output channel and activations
int8 per token at run time (danlu.quant.linear.W8A8Linear).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from danlu.quant.awq import _fold_input_scale

LINEARS = ("attn.qkv", "attn.proj", "mlp.gate_up", "mlp.down")


def _input_absmax(
    block: nn.Module, layer: int, x: torch.Tensor, rest: tuple[Any, ...]
) -> dict[str, torch.Tensor]:
    """max |input| per channel of each Linear of block over its calibration inputs x."""
    amax: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def grab(_m: nn.Module, args: tuple[Any, ...]) -> None:
            a = args[0].detach().abs().flatten(0, -2).amax(dim=0).float()
            amax[name] = torch.maximum(amax[name], a) if name in amax else a

        return grab

    handles = [block.get_submodule(n).register_forward_pre_hook(hook(n)) for n in LINEARS]
    try:
        for i in range(0, x.shape[0], 8):
            block(x[i : i + 8], layer, *rest)
    finally:
        for h in handles:
            h.remove()
    return amax


def smoothing_scale(act_absmax: torch.Tensor, W: torch.Tensor, alpha: float) -> torch.Tensor:
    w_absmax = W.detach().abs().amax(dim=0).float().clamp(min=1e-5)
    return (act_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.pow(1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def smooth_block(
    block: nn.Module, layer: int, x: torch.Tensor, rest: tuple[Any, ...], local: list[str], alpha: float
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Fold the smoothing scales into block in place; nothing else to prepare (RTN int8 follows)."""
    amax = _input_absmax(block, layer, x, rest)
    attn = block.attn
    for name in LINEARS:
        if name not in local or (name == "attn.proj" and attn.n_head != attn.n_kv_head):
            continue
        s = smoothing_scale(amax[name], block.get_submodule(name).weight, alpha)
        _fold_input_scale(block, name, s)
    return {}, {}
