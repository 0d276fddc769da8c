"""Sequence log-probs of scored response tokens, and the reference log-probs computed once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from danlu.align.batches import in_order
from danlu.train.precision import autocast


def sequence_logps(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs [N], scored tokens [N]) of rows ids [N, T] under the model: token t is
    scored where mask[t] = 1, predicted from the logits at t - 1."""
    logits = model(ids[:, :-1]).float()
    target = ids[:, 1:]
    picked = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    m = mask[:, 1:].to(picked.dtype)
    return (picked * m).sum(-1), m.sum(-1)


@torch.no_grad()
def precompute(
    model: nn.Module,
    items: Sequence[Any],
    collate: Callable[[Sequence[Any]], dict[str, torch.Tensor]],
    keys: tuple[tuple[str, str], ...],
    batch_size: int,
    device: torch.device,
    dtype: str,
) -> torch.Tensor:
    """[len(items), len(keys)] summed log-probs of each item's rows: keys name the (ids, mask)
    entries of a collated batch; a batch of B items holds its rows of one key as B consecutive
    blocks (paired batches stack the chosen rows, then the rejected rows, under one key)."""
    model.eval()
    out = []
    for idx in in_order(len(items), batch_size):
        batch = collate([items[i] for i in idx])
        cols = []
        for ids_key, mask_key in keys:
            with autocast(device, dtype):
                lp, _ = sequence_logps(model, batch[ids_key].to(device), batch[mask_key].to(device))
            cols.append(lp.float().view(-1, len(idx)).T)
        out.append(torch.cat(cols, dim=1).cpu())
    return torch.cat(out)
