"""Int8Linear's `dynamic` kernel: int8 weights times int8 activations quantized on the fly, on torch's
fbgemm int8 GEMM (`quantized::linear_dynamic`, the kernel of `torch.ao.quantization.quantize_dynamic`).

danlu's own int8 codes and per-channel scales (RTN, GPTQ, ... made them) become a per-channel quantized
tensor, packed once by `quantized::linear_prepack`; only the product is torch's. The kernel quantizes its
whole input with one asymmetric uint8 grid (min/max of the tensor). To keep that grid per token, as
SmoothQuant's W8A8 does, rows are first divided by their own absmax and the outputs multiplied back
(the product is linear in each row, so only the rounding changes); a single row needs no division: its
grid is the same up to float rounding.

Without VNNI, fbgemm sums pairs of uint8 x int8 products in saturating int16; a probe at first use
finds whether this CPU saturates, and then the activations take 7 bits (`reduce_range`), as
`quantize_dynamic` always does. `reference` computes the same product in fp32 from the dequantized
weights: the int8 products are exact, only the summation order differs.
"""

from __future__ import annotations

import warnings

import torch

_TINY = 1e-12
_reduce_range: bool | None = None
_available: bool | None = None


def available() -> bool:
    """Whether torch here has the x86 int8 kernels (fbgemm); asked of torch once (a list it builds)."""
    global _available
    if _available is None:
        _available = "fbgemm" in torch.backends.quantized.supported_engines
    return _available


def pack(codes: torch.Tensor, scale: torch.Tensor) -> torch.ScriptObject:
    """fbgemm's packed weight of int8 codes [out, in] and fp32 scales [out] (zero points 0)."""
    zeros = torch.zeros(codes.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # torch marks quantized tensors deprecated; this one lives only here
        warnings.simplefilter("ignore")
        q = torch._make_per_channel_quantized_tensor(codes.cpu(), scale.cpu().double(), zeros, 0)
        return torch.ops.quantized.linear_prepack(q, None)


def unpack(packed: torch.ScriptObject) -> torch.Tensor:
    """The int8 codes [out, in] held by a packed weight (a copy)."""
    weight, _ = torch.ops.quantized.linear_unpack(packed)
    return weight.int_repr()


def reduce_range() -> bool:
    """Whether activations must take 7 bits on this CPU: found once, by a product that saturates int16
    pair sums when the kernel has them (every activation code 255, every weight code 127)."""
    global _reduce_range
    if not available():
        return False
    if _reduce_range is None:
        k = 64
        packed = pack(torch.full((16, k), 127, dtype=torch.int8), torch.ones(16))
        y = torch.ops.quantized.linear_dynamic(torch.ones(1, k), packed, False)
        exact = k * 127.0  # x = 1 quantizes to code 255 of step 1/255
        _reduce_range = not bool(torch.allclose(y, torch.full_like(y, exact), rtol=1e-4))
    return _reduce_range


def _row_scale(x: torch.Tensor) -> torch.Tensor:
    return x.abs().amax(dim=-1, keepdim=True).clamp_(min=_TINY)


def matmul(x: torch.Tensor, packed: torch.ScriptObject) -> torch.Tensor:
    """x [rows, in] (fp32) times the packed weight, activations int8 per row; fp32 [rows, out]."""
    rr = reduce_range()
    if x.shape[0] == 1:
        return torch.ops.quantized.linear_dynamic(x, packed, rr)
    s = _row_scale(x)
    return torch.ops.quantized.linear_dynamic(x / s, packed, rr).mul_(s)


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """x [rows, in] as the kernel sees it: each row over its absmax, on the kernel's uint8 grid of the
    whole (divided) tensor, and back."""
    s = _row_scale(x)
    xn = x / s
    scale, zero = torch._choose_qparams_per_tensor(xn, reduce_range())
    # the kernel clamps to uint8 even with 7-bit qparams: a row's absmax (exactly 1 here) lands on
    # 127.5 and rounds to code 128, a value only the 8-bit clamp keeps
    codes = torch.round(xn / scale + zero).clamp_(0, 255)
    return (codes - zero) * scale * s


def reference(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The kernel's product in fp32: activation-quantized x [rows, in] times the dequantized weight."""
    return quantize_activations(x.float()) @ (codes.float() * scale[:, None]).T
