"""Uniform quantizers of weight matrices: the arithmetic every method in danlu.quant shares.

A weight W [rows, cols] is cut along its input dimension (cols) into groups that share one scale:
the whole tensor ("tensor"), one row ("channel": per output channel) or `group_size` columns of a row
("group"; a last, partial group takes the remaining columns). Every grid is stored the same way, as
unsigned codes u in [0, 2^bits - 1] with a float scale and offset per group:

    w_hat = u * scale + offset

- symmetric:  scale = absmax / (2^(bits-1) - 1), offset = -2^(bits-1) * scale, so u - 2^(bits-1) is
  the signed integer and zero is exactly representable
- asymmetric: scale = (max - min) / (2^bits - 1), offset = min (a float zero point, as the int4 CPU
  kernel takes it), so the grid spans exactly [min, max]

Either way rounding to the nearest code errs by at most scale / 2 for every value inside the range,
which holds every value of the group it was computed from (the bound the tests assert).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from danlu.errors import check

GRANULARITIES = ("tensor", "channel", "group")
BITS = (2, 3, 4, 8)


@dataclass(frozen=True)
class QuantSpec:
    """How a weight is quantized."""

    bits: int = 4  # 2, 3, 4 or 8
    symmetric: bool = True  # False: min/max grid with a float zero point
    granularity: str = "group"  # tensor | channel | group
    group_size: int = 128  # columns per group (granularity "group")

    def __post_init__(self) -> None:
        check(self.bits in BITS, "bits", f"must be one of {BITS}, got {self.bits}")
        check(self.granularity in GRANULARITIES, "granularity", f"must be one of {GRANULARITIES}")
        check(self.group_size >= 1, "group_size", f"must be at least 1, got {self.group_size}")

    @property
    def levels(self) -> int:
        return 2**self.bits

    def groups(self, cols: int) -> int:
        """Groups per row of a matrix with `cols` columns (tensor and channel: 1)."""
        return math.ceil(cols / self.group_size) if self.granularity == "group" else 1

    def width(self, cols: int) -> int:
        """Columns per group."""
        return self.group_size if self.granularity == "group" else cols


@dataclass
class QTensor:
    """A quantized matrix: codes [rows, cols] (uint8), scale and offset [rows, groups] (fp32)."""

    codes: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    spec: QuantSpec

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.offset, self.spec)


def _grouped(w: torch.Tensor, width: int, fill: float) -> torch.Tensor:
    """w [rows, cols] as [rows, groups, width], the last group padded with `fill`."""
    extra = (-w.shape[1]) % width
    if extra:
        w = F.pad(w, (0, extra), value=fill)
    return w.view(w.shape[0], -1, width)


def grid(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, offset) [rows, groups] of the grid for w [rows, cols]."""
    w = w.detach().float()
    width = spec.width(w.shape[1])
    if spec.symmetric:
        absmax = _grouped(w.abs(), width, 0.0).amax(dim=-1)
        if spec.granularity == "tensor":
            absmax = absmax.amax().expand_as(absmax)
        scale = absmax.clamp(min=1e-12) / (spec.levels // 2 - 1)
        return scale, -(spec.levels // 2) * scale
    hi = _grouped(w, width, -math.inf).amax(dim=-1)
    lo = _grouped(w, width, math.inf).amin(dim=-1)
    if spec.granularity == "tensor":
        hi, lo = hi.amax().expand_as(hi), lo.amin().expand_as(lo)
    scale = (hi - lo).clamp(min=1e-12) / (spec.levels - 1)
    return scale, lo.clone()


def expand(t: torch.Tensor, cols: int, spec: QuantSpec) -> torch.Tensor:
    """A per-group tensor [rows, groups] repeated over its group's columns: [rows, cols]."""
    return t.repeat_interleave(spec.width(cols), dim=1)[:, :cols]


def encode(w: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int) -> torch.Tensor:
    """Nearest codes of w on the grid (scale, offset) of the same shape (or broadcastable)."""
    return ((w.float() - offset) / scale).round_().clamp_(0, 2**bits - 1).to(torch.uint8)


def quantize(w: torch.Tensor, spec: QuantSpec) -> QTensor:
    """Round to nearest on the grid of spec: w [rows, cols] -> QTensor."""
    if w.dim() != 2:
        raise ValueError(f"quantize takes a matrix, got shape {tuple(w.shape)}")
    scale, offset = grid(w, spec)
    cols = w.shape[1]
    codes = encode(w, expand(scale, cols, spec), expand(offset, cols, spec), spec.bits)
    return QTensor(codes, scale, offset, spec)


def dequantize(
    codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, spec: QuantSpec
) -> torch.Tensor:
    cols = codes.shape[1]
    return codes.float() * expand(scale, cols, spec) + expand(offset, cols, spec)


def fake_quantize(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """quantize then dequantize: w as the quantized model sees it (same dtype)."""
    return quantize(w, spec).dequantize().to(w.dtype)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte along the last dim (first code in the high nibble; odd lengths padded)."""
    if codes.shape[-1] % 2:
        codes = F.pad(codes, (0, 1))
    codes = codes.to(torch.uint8)
    return (codes[..., 0::2] << 4) | (codes[..., 1::2] & 0xF)


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first n codes of each row of pack_int4's output."""
    out = torch.stack([packed >> 4, packed & 0xF], dim=-1).flatten(-2)
    return out[..., :n]


def error_report(w: torch.Tensor, w_hat: torch.Tensor) -> dict[str, float]:
    """MSE, SQNR (dB: 10 log10 of signal power over error power) and max |error| of w_hat against w."""
    w, w_hat = w.detach().double(), w_hat.detach().double()
    err = w - w_hat
    noise = err.square().sum().item()
    signal = w.square().sum().item()
    sqnr = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-300) / noise)
    return {"mse": err.square().mean().item(), "sqnr_db": sqnr, "max_err": err.abs().max().item()}
