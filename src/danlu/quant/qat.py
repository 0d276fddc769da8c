"""Quantization-aware training: Linears that train through fake quantization.

`apply_qat(model, cfg)` turns every targeted Linear (every Linear off `cfg.skip`) into a
`FakeQuantLinear`: the same module with the same `weight` and `bias` parameters (so checkpoints, model
dirs and optimizers see the plain model's names and shapes), whose forward uses

    int     the weight rounded to the grid of `danlu quantize --method rtn` with the same bits, group
            size and symmetry (danlu.quant.quantizers, the same arithmetic, so the quantized model dir
            holds exactly the weights training saw); with act_bits 8, the input rounded to 8 bits per
            token (absmax)
    bitnet  BitNet b1.58 (danlu.quant.bitnet): ternary weights with an absmean scale, 8-bit inputs

Gradients pass straight through the rounding (STE): `fake_quant` passes them where the value lies
inside the grid's range and stops them where the grid clips it. The grids here are computed from the
values they round (absmax, min/max), so every value is inside and the gradient is the identity.

A model dir saved from such a model records the settings in config.json ("qat"), and
danlu.model_dir.load_model applies them again, so the loaded model is the trained one and finetuning
it continues to train through the same quantization.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from danlu.errors import CheckpointError, ConfigError
from danlu.quant import bitnet
from danlu.quant.apply import spec_of, targets
from danlu.quant.config import QATConfig, QuantConfig
from danlu.quant.quantizers import QuantSpec, expand, grid


class _FakeQuant(torch.autograd.Function):
    """Round x onto the grid (scale, offset, codes 0..levels-1); the gradient passes where x is
    inside the grid's range and is zero where the grid clips it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, levels: int) -> Any:
        u = (x.float() - offset) / scale
        ctx.save_for_backward((u >= -0.5) & (u <= levels - 0.5))
        return (u.round().clamp(0, levels - 1) * scale + offset).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None, None


def fake_quant(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, levels: int) -> torch.Tensor:
    """x rounded to the nearest of `levels` codes u * scale + offset (clipped to the ends), with the
    straight-through gradient inside the range; scale and offset broadcast against x."""
    return _FakeQuant.apply(x, scale, offset, levels)


def fake_quant_weight(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """w as RTN on spec's grid stores it (quantizers.quantize then dequantize), differentiable."""
    scale, offset = grid(w, spec)
    cols = w.shape[1]
    return fake_quant(w, expand(scale, cols, spec), expand(offset, cols, spec), spec.levels)


def fake_quant_tokens(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """x rounded symmetrically per token (last dim) to `bits` bits with an absmax scale, differentiable."""
    half = 2 ** (bits - 1) - 1
    scale = x.detach().float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / half
    return fake_quant(x, scale, -(half + 1) * scale, 2**bits)


def weight_spec(cfg: QATConfig) -> QuantSpec:
    """The grid `danlu quantize` uses for cfg's bits, group size and symmetry."""
    return spec_of(cfg.deployment())


class FakeQuantLinear(nn.Linear):
    """A Linear whose forward sees its weight (and input) fake-quantized; its parameters are the
    replaced Linear's own."""

    def __init__(self, linear: nn.Linear, cfg: QATConfig):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.qat = cfg
        self.spec = None if cfg.method == "bitnet" else weight_spec(cfg)

    def quantized_weight(self) -> torch.Tensor:
        if self.spec is None:
            return bitnet.ternary(self.weight)
        return fake_quant_weight(self.weight, self.spec)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.qat.method == "bitnet":
            return bitnet.int8_tokens(x)
        return fake_quant_tokens(x, self.qat.act_bits) if self.qat.act_bits else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        what = "bitnet" if self.spec is None else f"int{self.spec.bits} {self.spec.granularity}"
        return f"{super().extra_repr()}, qat={what}, act_bits={self.qat.act_bits or 0}"


def qat_targets(model: nn.Module, cfg: QATConfig) -> list[str]:
    """The Linears that train quantized: the ones `danlu quantize` with cfg.deployment() quantizes."""
    return targets(model, cfg.deployment())


def apply_qat(model: nn.Module, cfg: QATConfig) -> nn.Module:
    """Replace the targeted Linears of model (in place, on any device, the meta device included) by
    FakeQuantLinears sharing their parameters; returns model."""
    if any(isinstance(m, FakeQuantLinear) for m in model.modules()):
        raise ConfigError(
            "the model already trains through fake quantization (its model dir has a qat entry)"
        )
    for name in qat_targets(model, cfg):
        parent, _, attr = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, attr, FakeQuantLinear(getattr(holder, attr), cfg))
    return model


def qat_metadata(model: nn.Module) -> dict[str, Any]:
    """{"qat": settings} for config.json when the model trains through fake quantization, else {}."""
    for m in model.modules():
        if isinstance(m, FakeQuantLinear):
            return {"qat": dataclasses.asdict(m.qat) | {"skip": list(m.qat.skip)}}
    return {}


def qat_config(entry: Any, where: str) -> QATConfig:
    """The QATConfig of a model dir's "qat" entry."""
    from danlu.config import from_dict

    try:
        if not isinstance(entry, dict):
            raise ConfigError("not a mapping of settings")
        return from_dict(QATConfig, entry, prefix="qat.")
    except ConfigError as e:
        raise CheckpointError(f"{where}: config.json's qat entry is invalid ({e})") from None


def deployed_matches(qat: QATConfig, quant: QuantConfig) -> str | None:
    """Why quantizing a model trained with qat by quant would not give the trained model (None: it would)."""
    want = qat.deployment()
    if quant.method != want.method:
        return f"it trained for {want.method}, not {quant.method}"
    if quant.method == "rtn" and weight_spec(qat) != spec_of(quant):
        return f"it trained on the grid {weight_spec(qat)}, not {spec_of(quant)}"
    if tuple(quant.skip) != tuple(qat.skip):
        return f"it kept {list(qat.skip)} in full precision, not {list(quant.skip)}"
    return None
