"""LoRA (Hu et al. 2021) and DoRA (Liu et al. 2024) layers that wrap the model's Linears from outside.

`apply_lora(model, ...)` replaces the targeted Linears of every block with a `LoRALinear` holding the
frozen base Linear (`.base`) and named adapters. The model's fused Linears hold several HF/PEFT
modules: `attn.qkv` is q_proj, k_proj, v_proj (rows stacked in that order) and `mlp.gate_up` is
gate_proj, up_proj. An adapter keeps one (A, B) pair per targeted part, so it is exactly PEFT's
per-module LoRA: the update of a part's rows is B_part A_part x * scale and the other rows get none.
It is computed as two matmuls, x A_cat^T then a block-diagonal B.

    scale = alpha / r  (alpha / sqrt(r) with rslora); A ~ kaiming_uniform(a=sqrt(5)) as in PEFT, B = 0
    DoRA: W' = m * (W + scale B A) / ||W + scale B A||_row, m initialised to ||W||_row, the norm
          detached as in the paper (section 4.3) and PEFT

`merge_adapters` folds the active adapter into the base weights (and `unmerge_adapters` takes it out
again), `set_adapter` switches between named adapters, and `adapters_disabled` turns the model back
into its base for the duration of a block (a reference model without a second copy).

This module imports only torch: danlu.model_dir uses it to load `adapters/<name>/`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# danlu module suffix -> the HF/PEFT parts it fuses
FUSED_PARTS = {
    "attn.qkv": ("q_proj", "k_proj", "v_proj"),
    "attn.proj": ("o_proj",),
    "mlp.gate_up": ("gate_proj", "up_proj"),
    "mlp.down": ("down_proj",),
}
ALL_TARGETS = tuple(p for parts in FUSED_PARTS.values() for p in parts)


@dataclass(frozen=True)
class AdapterSpec:
    """What an adapter is, as saved in adapter_config.json (with PEFT's own keys beside it)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ALL_TARGETS
    rslora: bool = False
    dora: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)


def part_rows(model: nn.Module) -> dict[str, dict[str, int]]:
    """Rows of each part of each fused Linear: {"attn.qkv": {"q_proj": nq*hd, ...}, ...}."""
    cfg = model.cfg  # type: ignore[attr-defined]
    hd = cfg.n_embd // cfg.n_head
    nkv = cfg.n_kv_head or cfg.n_head
    ffn = model.blocks[0].mlp.down.in_features if hasattr(model.blocks[0].mlp, "down") else 0  # type: ignore[index]
    return {
        "attn.qkv": {"q_proj": cfg.n_head * hd, "k_proj": nkv * hd, "v_proj": nkv * hd},
        "attn.proj": {"o_proj": cfg.n_embd},
        "mlp.gate_up": {"gate_proj": ffn, "up_proj": ffn},
        "mlp.down": {"down_proj": cfg.n_embd},
    }


class Adapter(nn.Module):
    """One named adapter of a LoRALinear: an (A, B) pair per targeted part, DoRA magnitudes if any."""

    def __init__(self, spec: AdapterSpec, in_features: int, parts: dict[str, int], device: torch.device):
        super().__init__()
        self.spec = spec
        self.parts = parts  # every part of the layer -> its rows (targeted or not), in row order
        self.targeted = [p for p in parts if p in spec.targets]
        self.lora_A = nn.ParameterDict(
            {p: nn.Parameter(torch.empty(spec.r, in_features, device=device)) for p in self.targeted}
        )
        self.lora_B = nn.ParameterDict(
            {p: nn.Parameter(torch.empty(parts[p], spec.r, device=device)) for p in self.targeted}
        )
        if spec.dora:
            self.magnitude = nn.ParameterDict(
                {p: nn.Parameter(torch.empty(parts[p], device=device)) for p in self.targeted}
            )
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()

    @torch.no_grad()
    def reset(self, base_weight: torch.Tensor, gen: torch.Generator | None = None) -> None:
        for p in self.targeted:
            a = self.lora_A[p]
            # kaiming_uniform_(a=sqrt(5)): bound = 1/sqrt(fan_in), as nn.Linear and PEFT initialise A
            bound = 1.0 / math.sqrt(a.shape[1])
            a.copy_(torch.rand(a.shape, generator=gen, dtype=torch.float32).mul_(2 * bound).sub_(bound).to(a))
            self.lora_B[p].zero_()
        if self.spec.dora:
            for p, w in self.part_weights(base_weight).items():
                self.magnitude[p].copy_(w.norm(dim=1))

    def part_weights(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """The base weight's rows of each targeted part (views)."""
        out, start = {}, 0
        for p, rows in self.parts.items():
            if p in self.targeted:
                out[p] = weight[start : start + rows]
            start += rows
        return out

    def delta(self, part: str) -> torch.Tensor:
        """scale * B A of one part: the update its rows get when merged (LoRA)."""
        return (self.lora_B[part] @ self.lora_A[part]) * self.spec.scale

    def _b_blocks(self) -> torch.Tensor:
        """B of all parts as one block-diagonal [out, k*r] matrix (zero rows for untargeted parts)."""
        ref = next(iter(self.lora_B.values()))
        blocks = [
            self.lora_B[p] if p in self.targeted else ref.new_zeros(rows, 0) for p, rows in self.parts.items()
        ]
        return torch.block_diag(*blocks)

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        """scale * A_cat dropout(x): every part's r-wide input projection in one matmul, scaled while
        it is r wide (cheaper than scaling the layer's full output)."""
        a = (
            torch.cat([self.lora_A[p] for p in self.targeted])
            if len(self.targeted) > 1
            else self.lora_A[self.targeted[0]]
        )
        return F.linear(self.dropout(x), a) * self.spec.scale

    def lora_out(self, x: torch.Tensor) -> torch.Tensor:
        """scale * B A dropout(x) over all the layer's output rows."""
        b = self._b_blocks() if len(self.parts) > 1 else self.lora_B[self.targeted[0]]
        return F.linear(self._hidden(x), b)

    def add_lora_(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """y + scale * B A dropout(x), added into each targeted part's slice of y in place: one r-wide
        matmul per part instead of a block-diagonal B of mostly zeros, and no full-size temporary.
        y must be a fresh output that autograd does not keep (a Linear's output is not saved)."""
        h = self._hidden(x)
        if len(self.parts) == 1:
            return y.add_(F.linear(h, self.lora_B[self.targeted[0]]))
        r, j, start = self.spec.r, 0, 0
        for p, rows in self.parts.items():
            if p in self.targeted:
                y[..., start : start + rows].add_(F.linear(h[..., j * r : (j + 1) * r], self.lora_B[p]))
                j += 1
            start += rows
        return y

    def dora_factor(self, weight: torch.Tensor) -> torch.Tensor:
        """m / ||W + scale B A||_row over all rows (1 on untargeted parts), the norm detached."""
        factors, start = [], 0
        for p, rows in self.parts.items():
            if p in self.targeted:
                w = weight[start : start + rows] + self.delta(p)
                factors.append(self.magnitude[p] / w.norm(dim=1).detach())
            else:
                factors.append(weight.new_ones(rows))
            start += rows
        return torch.cat(factors)


class LoRALinear(nn.Module):
    """A frozen base Linear (or NF4 Linear) plus named adapters, one active at a time."""

    def __init__(self, base: nn.Module, parts: dict[str, int]):
        super().__init__()
        self.base = base
        self.parts = parts
        self.adapters = nn.ModuleDict()
        self.active: str | None = None
        self.merged: str | None = None  # the adapter folded into the base weight, if any
        self.disabled = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def base_weight(self) -> torch.Tensor:
        """The base weight (dequantized, for an NF4 base)."""
        deq = getattr(self.base, "dequantize", None)
        return deq() if callable(deq) else self.base.weight

    def add(self, name: str, spec: AdapterSpec, gen: torch.Generator | None, init: bool) -> None:
        device = next(self.base.buffers(), None) if not isinstance(self.base, nn.Linear) else None
        device = self.base.weight.device if device is None else device.device
        self.adapters[name] = Adapter(spec, self.in_features, self.parts, device)
        if init and device.type != "meta":
            self.adapters[name].reset(self.base_weight(), gen)
        self.active = self.active or name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.disabled or self.active is None or self.merged == self.active:
            return y
        ad: Adapter = self.adapters[self.active]  # type: ignore[assignment]
        if not ad.spec.dora:
            return ad.add_lora_(y, x)
        bias = getattr(self.base, "bias", None)
        plain = y if bias is None else y - bias
        factor = ad.dora_factor(self.base_weight())
        # m/||W'|| * (W x + scale B A dropout(x)); PEFT's form, exact when dropout is 0
        out = plain * factor + ad.lora_out(x) * factor
        return out if bias is None else out + bias

    @torch.no_grad()
    def merge(self) -> None:
        if self.active is None or self.merged is not None:
            return
        ad: Adapter = self.adapters[self.active]  # type: ignore[assignment]
        if not isinstance(self.base, nn.Linear):
            raise ValueError("a quantized base cannot be merged in place; dequantize it first")
        w = self.base.weight
        factor = ad.dora_factor(w) if ad.spec.dora else None
        for p, rows in ad.part_weights(w).items():
            rows += ad.delta(p)
        if factor is not None:
            w.mul_(factor[:, None])
            self._dora_factor = factor
        self.merged = self.active

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged is None:
            return
        ad: Adapter = self.adapters[self.merged]  # type: ignore[assignment]
        w = self.base.weight
        if ad.spec.dora:  # W = W' / factor - dW, with the factor saved at merge time
            w.div_(self._dora_factor[:, None])
        for p, rows in ad.part_weights(w).items():
            rows -= ad.delta(p)
        self.merged = None


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            yield name, m


def apply_lora(
    model: nn.Module, spec: AdapterSpec, name: str = "default", seed: int = 0, init: bool = True
) -> nn.Module:
    """Add adapter `name` to the targeted Linears of every block (wrapping them on first use); on the
    meta device the adapter is left uninitialised, for weights loaded next. Returns the model."""
    rows = part_rows(model)
    gen = torch.Generator().manual_seed(seed)
    for block_name, block in model.named_modules():
        if not block_name.startswith("blocks.") or block_name.count(".") != 1:
            continue
        for suffix, parts in FUSED_PARTS.items():
            if not any(p in spec.targets for p in parts):
                continue
            parent_name, attr = suffix.split(".")
            parent = getattr(block, parent_name)
            layer = getattr(parent, attr, None)
            if layer is None:
                continue  # a non-gated MLP has no gate_up
            if not isinstance(layer, LoRALinear):
                layer = LoRALinear(layer, rows[suffix])
                setattr(parent, attr, layer)
            layer.add(name, spec, gen, init)
    return model


def set_adapter(model: nn.Module, name: str) -> None:
    """Make `name` the active adapter (unmerging a merged one first); layers without it compute as
    their base."""
    layers = [layer for _, layer in lora_layers(model)]
    if not any(name in layer.adapters for layer in layers):
        names = sorted({n for layer in layers for n in layer.adapters})
        raise KeyError(f"no adapter named {name!r}; the model has {', '.join(names) or 'none'}")
    for layer in layers:
        layer.unmerge()
        layer.active = name if name in layer.adapters else None


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes as its base (e.g. a DPO reference model)."""
    layers = [layer for _, layer in lora_layers(model)]
    if any(layer.merged for layer in layers):
        raise ValueError("unmerge the adapters before disabling them")
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.disabled = False


def merge_adapters(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.unmerge()


def unwrap(model: nn.Module, merge: bool = True) -> nn.Module:
    """Put the base Linears back, first merging the active adapters (merge) or dropping them: the
    plain model, whose state dict is a base model's."""
    if merge:
        merge_adapters(model)
    else:
        unmerge_adapters(model)
    for name, layer in list(lora_layers(model)):
        parent, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), attr, layer.base)
    return model


def spec_to_json(spec: AdapterSpec) -> dict[str, Any]:
    return {"r": spec.r, "alpha": spec.alpha, "dropout": spec.dropout, "targets": list(spec.targets),
            "rslora": spec.rslora, "dora": spec.dora}  # fmt: skip


def spec_from_json(data: dict[str, Any]) -> AdapterSpec:
    try:
        spec = AdapterSpec(
            r=int(data["r"]), alpha=float(data["alpha"]), dropout=float(data.get("dropout", 0.0)),
            targets=tuple(data["targets"]), rslora=bool(data.get("rslora", False)), dora=bool(data.get("dora", False)),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"adapter config is incomplete or malformed ({e})") from None
    unknown = [t for t in spec.targets if t not in ALL_TARGETS]
    if unknown or spec.r < 1:
        raise ValueError(f"adapter config has unknown targets {unknown} or rank {spec.r}")
    return spec


def attach_adapter(
    model: nn.Module, name: str, config: dict[str, Any], state: dict[str, torch.Tensor]
) -> None:
    """Add a saved adapter (spec_to_json config, adapter_state tensors) to a loaded model and make it
    active; ValueError when it does not fit the model."""
    apply_lora(model, spec_from_json(config), name, init=False)
    load_adapter_state(model, name, state)
    set_adapter(model, name)


def adapter_state(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The tensors of adapter `name`, keyed by the layer's name: "blocks.0.attn.qkv.lora_A.q_proj"."""
    out = {}
    for layer_name, layer in lora_layers(model):
        if name in layer.adapters:
            for key, t in layer.adapters[name].state_dict().items():
                out[f"{layer_name}.{key}"] = t.detach().clone().contiguous()
    return out


def load_adapter_state(model: nn.Module, name: str, state: dict[str, torch.Tensor]) -> None:
    """Fill adapter `name` from adapter_state's layout; every tensor must be there with its shape."""
    expected = adapter_state_shapes(model, name)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"adapter tensors do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for layer_name, layer in lora_layers(model):
        ad = layer.adapters[name]
        sub = {k[len(layer_name) + 1 :]: v for k, v in state.items() if k.rsplit(".", 2)[0] == layer_name}
        for k, v in sub.items():
            if tuple(v.shape) != tuple(expected[f"{layer_name}.{k}"]):
                raise ValueError(f"adapter tensor {layer_name}.{k} has shape {tuple(v.shape)}")
        ad.load_state_dict(sub, strict=True, assign=ad.lora_A[ad.targeted[0]].device.type == "meta")


def adapter_state_shapes(model: nn.Module, name: str) -> dict[str, tuple[int, ...]]:
    return {
        f"{ln}.{k}": tuple(t.shape)
        for ln, layer in lora_layers(model)
        if name in layer.adapters
        for k, t in layer.adapters[name].state_dict().items()
    }
