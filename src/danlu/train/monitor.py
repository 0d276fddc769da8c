"""What the trainer watches besides the loss: gradient norms per layer group, the size of each
update relative to the weights, and alerts when they leave the usual range."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator

import torch
from torch import nn

# Alert thresholds (the usual signs of a run going wrong).
MAX_GRAD_NORM = 100.0
MAX_CLIP_RATE = 0.05


def layer_group(name: str) -> str:
    """embed, attn, mlp, norm or head, from a parameter name of danlu's Transformer."""
    if name.startswith("embed"):
        return "embed"
    if name.startswith("lm_head"):
        return "head"
    if ".attn." in name:
        return "attn"
    if ".mlp." in name:
        return "mlp"
    return "norm"


def _named(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    return ((n, p) for n, p in model.named_parameters() if p.requires_grad)


def _sq(t: torch.Tensor) -> float:
    """The sum of squares of t; of the whole tensor when t is a shard (a DTensor of FSDP/TP), which
    every rank computes together."""
    total = t.float().pow(2).sum()
    full = getattr(total, "full_tensor", None)
    return float(full() if full is not None else total)


@torch.no_grad()
def grad_norms_by_group(model: nn.Module) -> dict[str, float]:
    sq: dict[str, float] = {}
    for name, p in _named(model):
        if p.grad is not None:
            g = layer_group(name)
            sq[g] = sq.get(g, 0.0) + _sq(p.grad)
    return {g: math.sqrt(v) for g, v in sq.items()}


@torch.no_grad()
def clip_grad_norm_by_group(model: nn.Module, max_norm: float) -> dict[str, float]:
    """Scale each layer group's gradients so that group's norm is at most max_norm (a group whose
    gradient explodes cannot shrink every other group's update, as one global clip would).
    Returns the norms before clipping."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in _named(model):
        if p.grad is not None:
            groups.setdefault(layer_group(name), []).append(p)
    return {g: float(torch.nn.utils.clip_grad_norm_(params, max_norm)) for g, params in groups.items()}


class UpdateRatio:
    """||weights after - weights before|| / ||weights before|| per group, over one optimizer step."""

    @torch.no_grad()
    def __init__(self, model: nn.Module):
        self.model = model
        self.before = {n: p.detach().clone() for n, p in _named(model)}

    @torch.no_grad()
    def ratios(self) -> dict[str, float]:
        num: dict[str, float] = {}
        den: dict[str, float] = {}
        for name, p in _named(self.model):
            g, old = layer_group(name), self.before[name]
            num[g] = num.get(g, 0.0) + _sq(p - old)
            den[g] = den.get(g, 0.0) + _sq(old)
        return {g: math.sqrt(num[g] / den[g]) if den[g] > 0 else 0.0 for g in num}


class ClipRate:
    """Fraction of the last `window` steps whose gradient was clipped."""

    def __init__(self, window: int = 100):
        self.flags: deque[bool] = deque(maxlen=window)

    def add(self, clipped: bool) -> None:
        self.flags.append(clipped)

    @property
    def rate(self) -> float:
        return sum(self.flags) / len(self.flags) if self.flags else 0.0

    @property
    def full(self) -> bool:
        return len(self.flags) == self.flags.maxlen


def alerts(grad_norm: float, clip_rate: float) -> dict[str, str]:
    """Warnings (kind -> message) for a step's gradient norm and the clip rate over the last steps."""
    out = {}
    if math.isfinite(grad_norm) and grad_norm > MAX_GRAD_NORM:
        out["grad_norm"] = f"gradient norm {grad_norm:.1f} above {MAX_GRAD_NORM:g}"
    if clip_rate > MAX_CLIP_RATE:
        out["clip_rate"] = (
            f"clip rate {100 * clip_rate:.0f}% over the last 100 steps, above {100 * MAX_CLIP_RATE:g}%"
        )
    return out


class Alerts:
    """Edge-triggered: an alert is reported when its condition starts and when it clears, not at
    every logged step while it lasts."""

    def __init__(self) -> None:
        self.active: set[str] = set()

    def update(self, current: dict[str, str]) -> list[tuple[str, str]]:
        """(event, message) pairs: ("alert", ...) for new conditions, ("alert_cleared", kind) for ended."""
        out = [("alert", msg) for kind, msg in current.items() if kind not in self.active]
        out += [("alert_cleared", kind) for kind in sorted(self.active - current.keys())]
        self.active = set(current)
        return out
