"""GRPO (Shao et al. 2024): group_size completions per prompt, advantages relative to the group, no critic.

experience   one rollout's tensors: the sampling policy's (only when a rollout trains more than one
             step; else the policy's own, detached, as TRL does) and (beta > 0) the reference's per-token
             log-probs, and each completion's advantage from its verifiable reward
             (danlu.align.arith: correct answer plus format_weight for a bare number), by
             danlu.align.rl.group_advantages
grpo_step    danlu.align.rl.grpo_loss on a minibatch, returned summed over its units (completions,
             or tokens for bnpo) so the Trainer's division gives the configured reduction;
             norm=dr_grpo is Dr. GRPO's length-unbiased sum over completions x max_new_tokens
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from danlu.align import arith
from danlu.align.rl import group_advantages, grpo_loss
from danlu.align.rl_config import RLConfig
from danlu.align.rollout import Sampled, pack, token_logps


def units(rl: RLConfig, mask: torch.Tensor) -> int:
    """What the loss is averaged over: completion tokens (bnpo) or completions."""
    return int(mask[:, 1:].sum()) if rl.norm == "bnpo" else mask.shape[0]


@torch.no_grad()
def experience(
    model: nn.Module,
    reference: Callable[[torch.Tensor], torch.Tensor] | None,
    sampled: Sampled,
    answers: Sequence[str],
    rl: RLConfig,
    pad_id: int,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One rollout's tensors (answers: one per completion) and its statistics."""
    ids, full_mask = pack(sampled.prompts, sampled.completions, pad_id)
    device = next(model.parameters()).device
    ids, full_mask = ids.to(device), full_mask.to(device)
    scored = arith.rewards(sampled.texts, answers, rl.format_weight)
    rewards = torch.tensor(scored["reward"], dtype=torch.float32, device=device)
    adv = group_advantages(rewards, rl.group_size, rl.scale)
    tensors = {"ids": ids, "mask": full_mask, "advantages": adv}
    if rl.epochs * rl.minibatches > 1:  # one update per rollout: the sampling policy is the policy
        tensors["old_logps"] = token_logps(model, ids)
    if reference is not None and rl.kl_coef > 0:
        tensors["ref_logps"] = reference(ids)
    groups = rewards.view(-1, rl.group_size)
    n = len(sampled.texts)
    stats = {
        "reward": float(rewards.mean()),
        "reward_std": float(groups.std(dim=1).mean()) if rl.group_size > 1 else 0.0,
        "correct": sum(scored["correct"]) / n,
        "format": sum(scored["format"]) / n,
        "groups_all_same": float((groups.max(1).values == groups.min(1).values).float().mean()),
        "completion_tokens": float(full_mask[:, 1:].sum(-1).float().mean()),
        "stopped": sum(sampled.stopped) / n,
    }
    return tensors, stats


def grpo_step(rl: RLConfig) -> Callable[[nn.Module, dict[str, Any]], tuple[torch.Tensor, int, dict]]:
    """(summed loss, units, metrics) of one minibatch."""

    def loss(model: nn.Module, b: dict[str, Any]) -> tuple[torch.Tensor, int, dict]:
        ids, mask = b["ids"], b["mask"][:, 1:]
        logps = token_logps(model, ids)
        ref = b.get("ref_logps")
        old = b["old_logps"] if "old_logps" in b else logps.detach()  # TRL's shortcut for one update
        mean_loss, metrics = grpo_loss(
            logps, old, b["advantages"], mask, ref, rl.kl_coef if ref is not None else 0.0,
            rl.clip, rl.upper_clip, rl.norm, rl.max_new_tokens,
        )  # fmt: skip
        n = units(rl, b["mask"])
        return mean_loss * n, n, metrics

    return loss
