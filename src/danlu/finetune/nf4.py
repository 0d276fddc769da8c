"""NF4 with double quantization (Dettmers et al. 2023, QLoRA): the frozen base of QLoRA.

A weight is cut into blocks of `block` values (64); each block is divided by its absmax and every
value replaced by the nearest of the 16 NormalFloat4 levels (the quantiles of N(0, 1) scaled to
[-1, 1], with an exact zero: the published table, bitsandbytes' `NF4`), two 4-bit codes per byte.
Double quantization stores the per-block absmax constants themselves in 8 bits: their mean is
subtracted and they are quantized symmetrically in blocks of `absmax_block` (256) with one fp32
scale each. Storage per weight: 4 + 8/64 + 32/(64*256) bits = 4.127 bits (plus one fp32 offset).

`NF4Linear` holds a Linear's weight that way (buffers, not parameters: it never trains) and
dequantizes it for each matmul; its backward dequantizes again instead of keeping the weight.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)  # fmt: skip


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    extra = (-x.numel()) % multiple
    return F.pad(x, (0, extra)) if extra else x


def quantize_nf4(w: torch.Tensor, block: int = 64, absmax_block: int = 256) -> dict[str, torch.Tensor]:
    """The NF4 + double-quantized storage of w: packed codes, int8 absmax, absmax scales and offset."""
    flat = _pad_to(w.detach().float().flatten(), block).view(-1, block)
    absmax = flat.abs().amax(dim=1).clamp(min=1e-12)
    levels = torch.tensor(NF4_LEVELS, device=w.device)
    codes = ((flat / absmax[:, None])[..., None] - levels).abs().argmin(dim=-1).to(torch.uint8).flatten()
    codes = _pad_to(codes, 2)
    packed = (codes[0::2] << 4) | codes[1::2]
    offset = absmax.mean()
    centred = _pad_to(absmax - offset, absmax_block).view(-1, absmax_block)
    scale = centred.abs().amax(dim=1).clamp(min=1e-12) / 127
    q_absmax = (centred / scale[:, None]).round().clamp(-127, 127).to(torch.int8).flatten()
    return {"packed": packed, "absmax": q_absmax, "absmax_scale": scale, "absmax_offset": offset.reshape(1)}


def dequantize_nf4(
    q: dict[str, torch.Tensor], shape: tuple[int, ...], block: int = 64, absmax_block: int = 256,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:  # fmt: skip
    n = 1
    for s in shape:
        n *= s
    packed = q["packed"]
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).flatten().long()
    n_blocks = -(-n // block)
    scales = q["absmax_scale"].repeat_interleave(absmax_block)
    absmax = (q["absmax"].float() * scales)[:n_blocks] + q["absmax_offset"]
    levels = torch.tensor(NF4_LEVELS, device=packed.device)
    values = levels[codes[: n_blocks * block]].view(n_blocks, block) * absmax[:, None]
    return values.flatten()[:n].view(shape).to(dtype)


def storage_bits(q: dict[str, torch.Tensor], numel: int) -> float:
    """Bits per weight of the stored tensors."""
    return 8 * sum(t.numel() * t.element_size() for t in q.values()) / numel


class _NF4Matmul(torch.autograd.Function):
    """x W^T with W dequantized in forward and again in backward (never saved)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: NF4Linear) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantize(x.dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad @ ctx.layer.dequantize(grad.dtype), None


class NF4Linear(nn.Module):
    """A frozen Linear (no bias) whose weight is stored in NF4 with double quantization."""

    def __init__(self, linear: nn.Linear, block: int = 64, absmax_block: int = 256):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("NF4Linear takes bias-free Linears (danlu's Llama layers have none)")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.block, self.absmax_block = block, absmax_block
        for k, v in quantize_nf4(linear.weight, block, absmax_block).items():
            self.register_buffer(k, v)

    def storage(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in ("packed", "absmax", "absmax_scale", "absmax_offset")}

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        shape = (self.out_features, self.in_features)
        return dequantize_nf4(self.storage(), shape, self.block, self.absmax_block, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NF4Matmul.apply(x, self)


def quantize_linears(
    model: nn.Module, names: tuple[str, ...], block: int = 64, absmax_block: int = 256
) -> int:
    """Replace the blocks' Linears whose names end with one of `names` by NF4Linears; returns how many."""
    n = 0
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and name.startswith("blocks.") and name.endswith(names):
            parent, attr = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), attr, NF4Linear(m, block, absmax_block))
            n += 1
    return n


@torch.no_grad()
def dequantize_linears(model: nn.Module) -> None:
    """Put plain Linears holding the dequantized weights back in place of every NF4Linear."""
    for name, m in list(model.named_modules()):
        if isinstance(m, NF4Linear):
            lin = nn.Linear(m.in_features, m.out_features, bias=False, device=m.packed.device)
            lin.weight.copy_(m.dequantize())
            parent, attr = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), attr, lin)
