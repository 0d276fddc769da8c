"""NF4 with double quantization (QLoRA's frozen base, issue 21 part 5).

Pinned: the 16 levels are the published table, rebuilt here from its definition (normal quantiles
with offset 0.9677, an exact zero, scaled to [-1, 1], as bitsandbytes' create_normal_map); storage is
4.127 bits per weight; each value dequantizes to within half a level gap of its block's absmax;
an NF4Linear's forward and input gradient equal a Linear holding the dequantized weight.
"""

from __future__ import annotations

import itertools

import torch

from danlu.finetune.nf4 import NF4_LEVELS, NF4Linear, dequantize_nf4, quantize_nf4, storage_bits


def test_levels_are_the_published_normal_float_table():
    from scipy.stats import norm

    offset = 0.9677083
    pos = norm.ppf(torch.linspace(offset, 0.5, 9).numpy()[:-1]).tolist()
    neg = (-norm.ppf(torch.linspace(offset, 0.5, 8).numpy()[:-1])).tolist()
    values = sorted([*pos, 0.0, *neg])
    top = max(abs(v) for v in values)
    assert torch.allclose(torch.tensor([v / top for v in values]), torch.tensor(NF4_LEVELS), atol=1e-6)


def test_storage_is_about_4_13_bits_and_the_error_is_within_half_a_gap():
    w = torch.randn(512, 512, generator=torch.Generator().manual_seed(0)) * 0.02
    q = quantize_nf4(w)
    bits = storage_bits(q, w.numel())
    assert abs(bits - (4 + 8 / 64 + 32 / (64 * 256) + 32 / w.numel())) < 1e-9 and round(bits, 2) == 4.13
    back = dequantize_nf4(q, tuple(w.shape))
    absmax = w.view(-1, 64).abs().amax(1, keepdim=True)
    gap = max(b - a for a, b in itertools.pairwise(NF4_LEVELS))
    err = (back.view(-1, 64) - w.view(-1, 64)).abs()
    assert (err <= absmax * (gap / 2 + 0.01)).all()  # 0.01: the 8-bit absmax's own rounding


def test_nf4_linear_computes_as_its_dequantized_weight():
    lin = torch.nn.Linear(64, 48, bias=False)
    q = NF4Linear(lin)
    ref = torch.nn.Linear(64, 48, bias=False)
    with torch.no_grad():
        ref.weight.copy_(q.dequantize())
    x = torch.randn(3, 64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    assert torch.allclose(q(x), ref(x2), atol=1e-6)
    q(x).sum().backward()
    ref(x2).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-6)
    assert not list(q.parameters())
