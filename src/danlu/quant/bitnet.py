"""BitNet b1.58: ternary weights with an absmean scale, 8-bit absmax activations per token.

Following "The Era of 1-bit LLMs" (Ma et al., 2024) and its training notes:

    weights      gamma = mean |W| (one scale per matrix);  W_t = RoundClip(W / gamma, -1, 1) in {-1, 0, 1}
    activations  a = max |x| / 127 per token;              x_q = Round(x / a) in [-127, 127]
    product      y = (x_q W_t^T) * a * gamma

Training keeps full-precision latent weights and passes gradients straight through both roundings
(the paper's `w + (quant(w) - w).detach()`): identity everywhere, so weights beyond the clip still move.
The paper also normalizes each BitLinear's input; danlu's blocks already normalize the inputs of their
first projections, and per-token absmax quantization does not depend on the input's scale, so the
layer here adds no norm of its own.

The deployed form is danlu.quant.linear.W8A8Linear: its int8 weights are the ternary codes, its
per-channel scale is gamma in every row, and its activation quantization is the one above, so the
quantized model dir computes exactly what training saw (int32 accumulation on the CPU kernel).
"""

from __future__ import annotations

import torch

from danlu.quant.linear import W8A8Linear

EPS = 1e-5  # the scales' floor (the paper's clamp), so an all-zero row or matrix divides safely


def absmean_scale(w: torch.Tensor) -> torch.Tensor:
    """gamma = mean |W| over the whole matrix (a 0-dim tensor)."""
    return w.detach().float().abs().mean().clamp(min=EPS)


def ternary_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes in {-1, 0, 1} as int8, gamma) of w."""
    gamma = absmean_scale(w)
    return (w.detach().float() / gamma).round_().clamp_(-1, 1).to(torch.int8), gamma


def ternary(w: torch.Tensor) -> torch.Tensor:
    """W as the ternary model sees it, codes * gamma, with the straight-through gradient."""
    codes, gamma = ternary_codes(w)
    return w + (codes.to(w.dtype) * gamma.to(w.dtype) - w).detach()


def int8_tokens(x: torch.Tensor) -> torch.Tensor:
    """x quantized to 8 bits per token (absmax, W8A8Linear's own rounding) and back, with the
    straight-through gradient."""
    codes, a = W8A8Linear.quantize_tokens(x.detach().reshape(-1, x.shape[-1]))
    xq = (codes.float() * a).view(x.shape)
    return x + (xq.to(x.dtype) - x).detach()


def deployed(weight: torch.Tensor, bias: torch.Tensor | None) -> W8A8Linear:
    """The W8A8Linear that computes a trained BitLinear's product: ternary int8 codes, scale gamma."""
    out_f, in_f = weight.shape
    m = W8A8Linear(in_f, out_f, bias is not None, weight.device)
    codes, gamma = ternary_codes(weight)
    m.qweight.copy_(codes)
    m.scale.fill_(float(gamma))
    if bias is not None:
        m.bias.data.copy_(bias)
    return m
