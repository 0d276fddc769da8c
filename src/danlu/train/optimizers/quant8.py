"""Block-wise 8-bit quantization with the dynamic tree map (Dettmers et al. 2022, section 2).

A block of `block_size` values is divided by its absmax, so it lies in [-1, 1], and each value is
replaced by the index (one byte) of the nearest entry of a fixed 256-entry map. The dynamic tree map
spends its codes like a float does: a code's bits read as [sign] [e zeros] [1] [fraction bits], so
a value is 10^-e * f with f on a linear grid in (0.1, 1], and fewer fraction bits remain the larger
e is. Small magnitudes (down to 1e-7 of the block's absmax) thus keep their relative precision,
which a linear map would round to zero; that matters for Adam's second moment.

Signed map (first moment): 7 bits after the sign, e = 0..6, 2^(6-e) midpoints each: 127 magnitudes
per sign, plus 0 and exactly +-1.0 (so each block's absmax is stored without error); to fit 256
codes the smallest negative magnitude (-5.5e-7) is left out. Unsigned map (second moment): no sign
bit, e = 0..6, 2^(7-e) midpoints each: 254 values, plus 0 and 1.0.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


def _tree_magnitudes(value_bits: int) -> list[float]:
    """Midpoints of 2^(value_bits-1-e) linear bins on [0.1, 1], scaled by 10^-e, for e = 0..6.

    e zeros and the indicator bit use e + 1 of the value bits; the rest are the fraction.
    """
    out = []
    for e in range(7):
        n = 2 ** (value_bits - 1 - e)
        out += [10.0**-e * (0.1 + 0.9 * (k + 0.5) / n) for k in range(n)]
    return out


@functools.cache
def dynamic_map(signed: bool) -> torch.Tensor:
    """The 256 sorted fp32 values a code can stand for (signed: [-1, 1]; unsigned: [0, 1])."""
    mags = _tree_magnitudes(7 if signed else 8)  # the bits left after the sign bit
    values = [0.0, 1.0, *mags]
    if signed:  # -1.0 takes the code of the smallest negative magnitude, so a block's absmax is exact
        values += [-1.0, *(-m for m in mags[:-1])]
    table = torch.tensor(sorted(values), dtype=torch.float32)
    assert table.numel() == 256 and table.unique().numel() == 256
    return table


@functools.cache
def _midpoints(signed: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    table = dynamic_map(signed).to(device)
    return table, (table[:-1] + table[1:]) / 2


@dataclass
class Quantized:
    """A tensor as uint8 codes (flat, unpadded) and one fp32 absmax per block."""

    codes: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    signed: bool
    block_size: int


def quantize(x: torch.Tensor, signed: bool, block_size: int = 2048, keep_nonzero: bool = False) -> Quantized:
    """Nearest-code block-wise quantization of x (any shape).

    keep_nonzero: a positive value that would round to 0 takes the smallest positive code instead.
    Adam divides by the root of its second moment, so a moment rounded to 0 under a first moment
    that is not would turn a tiny gradient into a step of lr * m / eps, and training diverges.
    """
    flat = x.detach().float().reshape(-1)
    n = flat.numel()
    blocks = -(-n // block_size)
    padded = torch.nn.functional.pad(flat, (0, blocks * block_size - n)).view(blocks, block_size)
    absmax = padded.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # an all-zero block codes to 0
    _, mids = _midpoints(signed, x.device)
    # the i-th midpoint separates codes i and i+1, so the count of midpoints below v is v's nearest code
    normed = (padded / scale[:, None]).contiguous()
    codes = torch.searchsorted(mids, normed)
    if keep_nonzero:
        zero_code = int(signed) * 128 - int(signed)  # signed: 127 negative codes below zero
        codes = torch.where((normed > 0) & (codes == zero_code), zero_code + 1, codes)
    return Quantized(codes.view(-1)[:n].to(torch.uint8), absmax, x.shape, signed, block_size)


def dequantize(q: Quantized) -> torch.Tensor:
    """The fp32 tensor that q's codes stand for."""
    table, _ = _midpoints(q.signed, q.codes.device)
    values = table[q.codes.long()]
    n = values.numel()
    blocks = q.absmax.numel()
    padded = torch.nn.functional.pad(values, (0, blocks * q.block_size - n)).view(blocks, q.block_size)
    return (padded * q.absmax[:, None]).view(-1)[:n].view(q.shape)
