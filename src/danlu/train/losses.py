"""Language-model losses as pure functions of tensors (no model, no state)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets with this id (padding, masked prompt tokens) carry no loss


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats; logits [B,T,V] (any float dtype), targets [B,T]."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy in nats, shape [B,T]; sum it for evaluation over many batches."""
    flat = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="none")
    return flat.view(targets.shape)


def nats_and_bytes(
    token_losses: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor
) -> tuple[float, int]:
    """Summed loss (nats) and summed UTF-8 bytes of the target tokens that stand for text.

    Special tokens (0 bytes) are left out of both sums, as in nanochat: they encode no text, so
    their loss would make bits per byte depend on how often a tokenizer inserts them.
    """
    nbytes = token_bytes[targets.clamp(min=0)] * (targets != IGNORE_INDEX)  # no loss, no bytes
    text = nbytes > 0
    return float(token_losses[text].double().sum()), int(nbytes.sum())


def bits_per_byte(nats: float, nbytes: int) -> float:
    """Tokenizer-independent loss: nats / (ln 2 * bytes)."""
    return nats / (math.log(2) * nbytes) if nbytes > 0 else float("nan")


def summed_lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy summed over the target tokens (IGNORE_INDEX skipped), plus z_loss times the
    summed squared log-partition log(sum exp logits) of those tokens (PaLM's z-loss, which keeps
    the softmax normalizer near 1). Divide by the token count of the whole optimizer step."""
    flat = logits.reshape(-1, logits.size(-1)).float()
    flat_targets = targets.reshape(-1)
    loss = F.cross_entropy(
        flat, flat_targets, ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing
    )
    if z_loss > 0:
        keep = flat_targets != IGNORE_INDEX
        loss = loss + z_loss * torch.logsumexp(flat[keep], dim=-1).pow(2).sum()
    return loss
