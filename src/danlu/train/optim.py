"""AdamW with decoupled weight decay on the 2-D weights of Linear layers only.

Norm gains, embeddings and biases are not decayed: shrinking them toward zero only hurts. A tied
lm_head shares its matrix with the embedding, so that shared matrix is counted as an embedding.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from danlu.config import TrainConfig

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


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float | None = None) -> torch.optim.AdamW:
    """AdamW over two groups (weight decay on Linear weights, none elsewhere); lr defaults to cfg.lr."""
    decay, no_decay = param_groups(model)
    lr = cfg.lr if lr is None else lr
    assert lr is not None, "resolve train.lr before building the optimizer"
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    log.debug("optimizer: %d decayed tensors, %d not decayed", len(decay), len(no_decay))
    return torch.optim.AdamW(
        groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **_fast_kwargs(decay + no_decay)
    )
