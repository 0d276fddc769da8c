"""AdamW with decoupled weight decay on the 2-D weights of Linear layers only.

Norm gains, embeddings and biases are not decayed: shrinking them toward zero only hurts. A tied
lm_head shares its matrix with the embedding, so that shared matrix is counted as an embedding.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from danlu.train.config import TrainConfig

log = logging.getLogger(__name__)


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed) trainable parameters, each listed once, in model order."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linear_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear) and m.weight.dim() == 2}
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() already yields a shared (tied) tensor once
        if not p.requires_grad:
            continue
        if id(p) in linear_ids and id(p) not in embedding_ids:
            decay.append(p)
        else:
            no_decay.append(p)
    return decay, no_decay


def _fast_kwargs(params: list[nn.Parameter]) -> dict[str, bool]:
    """fused=True where torch has a fused AdamW kernel for the device; foreach elsewhere."""
    device = params[0].device.type if params else "cpu"
    fused_ok = device in ("cpu", "cuda", "mps", "xpu") and all(p.is_floating_point() for p in params)
    return {"fused": True} if fused_ok else {"foreach": True}


def optimizer_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Param groups: decayed and not decayed, and, when train.lr_mults sets any multiplier, split
    further by layer group, each with its "lr_mult" (the loop sets lr = schedule lr * lr_mult)."""
    from danlu.train.monitor import layer_group

    decay, no_decay = param_groups(model)
    mults = dataclasses.asdict(cfg.lr_mults)
    if all(v == 1.0 for v in mults.values()):
        return [
            {"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
        ]
    names = {id(p): n for n, p in model.named_parameters()}
    groups: dict[tuple[bool, str], dict[str, Any]] = {}
    for decayed, params in ((True, decay), (False, no_decay)):
        for p in params:
            lg = layer_group(names[id(p)])
            g = groups.setdefault(
                (decayed, lg),
                {"params": [], "weight_decay": cfg.weight_decay if decayed else 0.0, "lr_mult": mults[lg]},
            )
            g["params"].append(p)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float | None = None) -> torch.optim.AdamW:
    """AdamW (weight decay on Linear weights only, lr multipliers per group); lr defaults to cfg.lr."""
    lr = cfg.lr if lr is None else lr
    assert lr is not None, "resolve train.lr before building the optimizer"
    groups = optimizer_groups(model, cfg)
    for g in groups:
        g["lr"] = lr * g["lr_mult"]
    params = [p for g in groups for p in g["params"]]
    log.debug("optimizer: %d groups over %d tensors", len(groups), len(params))
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **_fast_kwargs(params))
