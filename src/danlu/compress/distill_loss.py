"""Distillation losses as pure functions of tensors (no model, no state).

    loss = T² · KL + α · CE

KL is taken between the teacher's and the student's next-token distributions, both softened by the
temperature T (the T² keeps the gradient scale of the soft term independent of T, as in Hinton et
al. 2015). "forward" is KL(teacher ‖ student), mean-seeking: the student spreads mass over every
token the teacher allows. "reverse" is KL(student ‖ teacher), mode-seeking: the student is punished
for mass where the teacher has little, and may drop some of the teacher's modes (MiniLLM).
CE is the ordinary next-token cross-entropy on the labels at temperature 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from danlu.train.losses import IGNORE_INDEX

KL_KINDS = ("forward", "reverse")


def token_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    kind: str = "forward",
) -> torch.Tensor:
    """Per-position KL divergence in nats, shape logits.shape[:-1], at temperature T (no T² factor)."""
    if kind not in KL_KINDS:
        raise ValueError(f"kind must be one of {KL_KINDS}, got {kind!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} != teacher's {tuple(teacher_logits.shape)}"
        )
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if kind == "forward":
        return (t.exp() * (t - s)).sum(-1)
    return (s.exp() * (s - t)).sum(-1)


@dataclass
class DistillTerms:
    loss_sum: torch.Tensor  # T²·KL + α·CE, summed over the target positions
    kl_sum: torch.Tensor  # Σ KL at temperature T (without T²), detached
    ce_sum: torch.Tensor  # Σ CE on the labels, detached
    n_tokens: int


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
    kind: str = "forward",
) -> DistillTerms:
    """The distillation loss summed over the positions whose target is not IGNORE_INDEX.

    logits [..., V], targets [...]. With teacher_logits None only α·CE remains (the sequence-level
    method trains on the teacher's text with the labels alone)."""
    keep = targets != IGNORE_INDEX
    flat = student_logits[keep].float()
    ce = F.cross_entropy(flat, targets[keep], reduction="sum")
    if teacher_logits is None:
        kl = torch.zeros((), device=flat.device)
    else:
        kl = token_kl(flat, teacher_logits[keep], temperature, kind).sum()
    loss = temperature**2 * kl + alpha * ce
    return DistillTerms(loss, kl.detach(), ce.detach(), int(keep.sum()))
