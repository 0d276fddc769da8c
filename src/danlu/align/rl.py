"""Policy-gradient pieces as pure functions: GRPO's group-relative advantages and clipped loss, GAE.

    group_advantages   (r - mean of its group) / (std of its group + 1e-4), the group's G samples of
                       one prompt consecutive; scale "batch" divides by the whole batch's std, "none"
                       (Dr. GRPO, Liu et al. 2025) by nothing. Std is Bessel-corrected, as TRL's.
    grpo_loss          the PPO-clipped surrogate per token, -min(w A, clip(w, 1 - eps_low, 1 + eps_high) A)
                       with w = exp(logp - logp_old), plus beta times the k3 KL estimate to the reference
                       exp(ref - logp) - (ref - logp) - 1 (times w, the samples being the old
                       policy's, unless kl_importance_weight is off); reduced as "grpo" (each completion's token
                       mean, then the mean over completions), "bnpo" (mean over all tokens) or
                       "dr_grpo" (sum over tokens / (completions x max completion length): no length bias)
    gae                generalized advantage estimation (Schulman et al. 2016) over one trajectory of
                       per-step rewards and values, with the value after the last step bootstrapped

These equal TRL's GRPOTrainer on the same inputs (tests) and GAE's closed form.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """Advantages [N] of rewards [N] in groups of group_size consecutive completions."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.view(-1, group_size)
    adv = (groups - groups.mean(dim=1, keepdim=True)).view(-1)
    if scale == "none":
        return adv
    if scale == "group":
        std = groups.std(dim=1, keepdim=True).expand_as(groups).reshape(-1)
    elif scale == "batch":
        std = rewards.std().expand_as(rewards)
    else:
        raise ValueError(f"scale must be group, batch or none, got {scale!r}")
    return adv / (std + 1e-4)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    norm: str = "grpo",
    max_completion_length: int | None = None,
    kl_importance_weight: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, metrics {kl, clip_ratio}) of per-token log-probs [N, T] under the policy, the sampling
    policy and (beta > 0) the reference, advantages [N], completion mask [N, T]."""
    m = mask.to(logps.dtype)
    adv = advantages.unsqueeze(1)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    metrics: dict[str, float] = {}
    if beta != 0.0:
        assert ref_logps is not None, "beta > 0 needs the reference log-probs"
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        if kl_importance_weight:  # samples come from the old policy: weight the estimate by w (TRL's default)
            kl = kl * ratio
        per_token = per_token + beta * kl
        metrics["kl"] = float((kl.detach() * m).sum() / m.sum().clamp(min=1))
    was_clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    metrics["clip_ratio"] = float((was_clipped.to(m.dtype) * m).sum() / m.sum().clamp(min=1))
    if norm == "grpo":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    elif norm == "bnpo":
        loss = (per_token * m).sum() / m.sum().clamp(min=1)
    elif norm == "dr_grpo":
        length = max_completion_length or logps.shape[1]
        loss = (per_token * m).sum() / (logps.shape[0] * length)
    else:
        raise ValueError(f"norm must be grpo, bnpo or dr_grpo, got {norm!r}")
    return loss, metrics


def gae(
    rewards: torch.Tensor, values: torch.Tensor, last_value: float, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) [T] of one trajectory: delta_t = r_t + gamma V_{t+1} - V_t and
    A_t = delta_t + gamma lam A_{t+1}; returns = advantages + values (the value targets)."""
    T = rewards.numel()
    adv = torch.zeros_like(rewards)
    running = torch.zeros((), dtype=rewards.dtype)
    for t in reversed(range(T)):
        next_value = values[t + 1] if t + 1 < T else torch.tensor(last_value, dtype=values.dtype)
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv, adv + values
