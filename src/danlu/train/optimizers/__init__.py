"""Optimizers beyond AdamW: Lion, Adafactor, 8-bit AdamW and Muon, and one builder over a model.

Each is a torch.optim.Optimizer subclass whose state_dict round trip is exact (state dtypes kept),
so a resumed run continues on the same trajectory. `build_named_optimizer` splits a model's
parameters as danlu.train.optim does (weight decay on Linear weights only) and, for Muon, sends the
hidden Linear weights to Muon and the embeddings, LM head, norms and biases to AdamW.

Groups may carry "lr_mult": the factor between that group's lr and the schedule's lr (Muon's
hidden-matrix lr is ~50x AdamW's). A loop that sets lr per step should honour it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from danlu.errors import ConfigError
from danlu.train.config import OPTIMIZERS, TrainConfig
from danlu.train.optim import build_optimizer, optimizer_groups, param_groups
from danlu.train.optimizers._base import state_bytes
from danlu.train.optimizers.adafactor import Adafactor
from danlu.train.optimizers.adamw8bit import AdamW8bit
from danlu.train.optimizers.lion import Lion
from danlu.train.optimizers.muon import Muon, newton_schulz

__all__ = [
    "OPTIMIZERS",
    "Adafactor",
    "AdamW8bit",
    "Lion",
    "Muon",
    "build_named_optimizer",
    "muon_param_groups",
    "newton_schulz",
    "state_bytes",
]


def muon_param_groups(
    model: nn.Module,
    lr: float,
    muon_lr: float,
    weight_decay: float,
    head_names: tuple[str, ...] = ("lm_head",),
) -> list[dict[str, Any]]:
    """Groups for Muon: hidden Linear weights (Muon), other decayed weights and the rest (AdamW)."""
    decay, no_decay = param_groups(model)
    head_ids = {id(p) for name, m in model.named_modules() if name in head_names for p in m.parameters()}
    hidden = [p for p in decay if id(p) not in head_ids and p.dim() == 2]
    hidden_ids = {id(p) for p in hidden}
    other_decay = [p for p in decay if id(p) not in hidden_ids]
    groups = [
        {
            "params": hidden,
            "use_muon": True,
            "lr": muon_lr,
            "lr_mult": muon_lr / lr,
            "weight_decay": weight_decay,
        },
        {"params": other_decay, "use_muon": False, "lr": lr, "lr_mult": 1.0, "weight_decay": weight_decay},
        {"params": no_decay, "use_muon": False, "lr": lr, "lr_mult": 1.0, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_named_optimizer(
    model: nn.Module, name: str, cfg: TrainConfig, lr: float | None = None, **options: Any
) -> torch.optim.Optimizer:
    """The optimizer `name` (one of OPTIMIZERS) over model; options go to its constructor.

    lr defaults to cfg.lr and is the AdamW-side lr; for Muon, options may set muon_lr (default 0.02).
    Adafactor runs in its fixed-lr mode (relative_step=False) so that the loop's schedule drives it.
    """
    if name not in OPTIMIZERS:
        raise ConfigError(
            f"train.optimizer: unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    lr = cfg.lr if lr is None else lr
    if lr is None:
        raise ConfigError("train.lr is None here; resolve it (danlu.model.presets.suggested_lr) first")
    if name == "adamw":
        if options:
            raise ConfigError(f"optimizer options {sorted(options)} are not used by adamw; remove them")
        return build_optimizer(model, cfg, lr)
    if name == "muon":
        muon_lr = options.pop("muon_lr", 0.02)
        groups = muon_param_groups(model, lr, muon_lr, cfg.weight_decay)
        options = {"adamw_betas": (cfg.beta1, cfg.beta2), "adamw_eps": cfg.eps, **options}
        return _construct(Muon, groups, lr=muon_lr, adamw_lr=lr, **options)
    groups = optimizer_groups(model, cfg)
    for g in groups:
        g["lr"] = lr * g["lr_mult"]
    if name == "lion":
        return _construct(Lion, groups, lr=lr, **options)
    if name == "adafactor":
        options = {"relative_step": False, "scale_parameter": False, **options}
        return _construct(Adafactor, groups, lr=lr, **options)
    options = {"betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps, **options}
    return _construct(AdamW8bit, groups, lr=lr, **options)


def _construct(
    cls: type[torch.optim.Optimizer], groups: list[dict[str, Any]], **kwargs: Any
) -> torch.optim.Optimizer:
    try:
        return cls(groups, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cls.__name__}: bad optimizer setting: {exc}") from exc
