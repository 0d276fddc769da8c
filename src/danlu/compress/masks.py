"""Pruning masks over a model's Linear weights, their sparsity reports, and keeping them in force.

A mask is a bool tensor shaped like its weight, True where the weight is kept.

- magnitude, per layer: each weight matrix loses its `sparsity` fraction of smallest |w|.
- magnitude, global: one threshold over all the pruned matrices together, so layers with many small
  weights lose more than others (Han et al. 2015).
- n:m semi-structured (2:4 by default): in every group of m consecutive weights along a row (the
  input dimension, the layout sparse tensor cores accelerate) the n largest |w| are kept, so exactly
  half are zero for 2:4.

`MaskKeeper` keeps pruned weights at zero while a model trains: their gradients are masked (hooks on
the parameters) and, after every optimizer step, the weights are multiplied by their masks again, so
momentum, weight decay or any optimizer cannot revive them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

METHODS = ("magnitude", "2:4")
SCOPES = ("layer", "global")
# the embedding and (tied) output head hold most of a small model's weights and all of its vocabulary:
# pruned they cost far more accuracy than the blocks' matrices, so they are kept by default
DEFAULT_SKIP = ("embed", "lm_head")


def prunable_linears(model: nn.Module, skip: Iterable[str] = DEFAULT_SKIP) -> dict[str, nn.Linear]:
    """The model's Linear layers by name, those matching a skip pattern (fnmatch) left out."""
    patterns = tuple(skip)
    return {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and not any(fnmatch.fnmatch(name, p) for p in patterns)
    }


def _keep_largest(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Mask of `scores`' shape that drops exactly n_prune of the smallest entries (ties by position)."""
    flat = scores.flatten()
    mask = torch.ones_like(flat, dtype=torch.bool)
    if n_prune > 0:
        mask[torch.argsort(flat, stable=True)[:n_prune]] = False
    return mask.view(scores.shape)


def magnitude_masks(
    weights: dict[str, torch.Tensor], sparsity: float, scope: str = "layer"
) -> dict[str, torch.Tensor]:
    """Unstructured masks that zero the `sparsity` fraction of smallest |w|, per matrix or globally."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if scope == "layer":
        return {
            name: _keep_largest(w.detach().abs(), round(sparsity * w.numel())) for name, w in weights.items()
        }
    names = list(weights)
    flat = torch.cat([weights[n].detach().abs().flatten().float() for n in names])
    keep = _keep_largest(flat, round(sparsity * flat.numel()))
    out, start = {}, 0
    for n in names:
        w = weights[n]
        out[n] = keep[start : start + w.numel()].view(w.shape)
        start += w.numel()
    return out


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """n:m mask: the n largest |w| of every m consecutive weights along each row are kept."""
    if not 0 < n < m:
        raise ValueError(f"need 0 < n < m, got {n}:{m}")
    if weight.shape[-1] % m:
        raise ValueError(f"rows of {weight.shape[-1]} weights do not split into groups of {m}")
    groups = weight.detach().abs().reshape(-1, m)
    top = groups.topk(n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return mask.view(weight.shape)


def compute_masks(
    model: nn.Module,
    method: str,
    sparsity: float = 0.5,
    scope: str = "layer",
    skip: Iterable[str] = DEFAULT_SKIP,
    n: int = 2,
    m: int = 4,
) -> dict[str, torch.Tensor]:
    """Masks of the prunable Linears' weights, by module name."""
    layers = prunable_linears(model, skip)
    if not layers:
        raise ValueError("no Linear layer to prune (every one matches a skip pattern)")
    weights = {name: mod.weight for name, mod in layers.items()}
    if method == "magnitude":
        return magnitude_masks(weights, sparsity, scope)
    if method == "2:4":
        return {name: nm_mask(w, n, m) for name, w in weights.items()}
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        weight = modules[name].weight
        weight.mul_(mask.to(weight.device, weight.dtype))


def sparsity_report(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Zeros per pruned layer (measured on the weights, not the masks), their total, and the share of
    all the model's parameters that are zero."""
    modules = dict(model.named_modules())
    layers = {}
    zeros = total = 0
    for name in masks:
        w = modules[name].weight.detach()
        z = int((w == 0).sum())
        layers[name] = {"params": w.numel(), "zeros": z, "sparsity": z / w.numel()}
        zeros, total = zeros + z, total + w.numel()
    all_params = sum(p.numel() for p in model.parameters())
    all_zeros = sum(int((p.detach() == 0).sum()) for p in model.parameters())
    return {
        "layers": layers,
        "pruned_params": total,
        "pruned_zeros": zeros,
        "sparsity": zeros / max(total, 1),
        "model_params": all_params,
        "model_sparsity": all_zeros / max(all_params, 1),
    }


def holds_nm(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether every group of m consecutive weights along a row has at most n non-zeros."""
    return bool(((weight.detach().reshape(-1, m) != 0).sum(-1) <= n).all())


class MaskKeeper:
    """Keeps a model's pruned weights at zero through training: masked gradients, and re-masked
    weights after each step of the optimizers it is attached to. `remove()` undoes the hooks."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        self.model = model
        modules = dict(model.named_modules())
        self.pairs = [(modules[name].weight, mask) for name, mask in masks.items()]
        self.pairs = [(w, mask.to(w.device, w.dtype)) for w, mask in self.pairs]
        self._handles = [w.register_hook(lambda g, mask=mask: g * mask) for w, mask in self.pairs]

    def attach(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        self._handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: self.remask()))
        return optimizer

    @torch.no_grad()
    def remask(self) -> None:
        for w, mask in self.pairs:
            w.mul_(mask)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
