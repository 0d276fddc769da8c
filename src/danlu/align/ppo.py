"""PPO-RLHF (Ziegler et al. 2019, Ouyang et al. 2022): a policy with a value head, a frozen reference and a
reward model.

    PolicyValue      the policy and a scalar value head on its final hidden states (read through a
                     forward hook on the final norm: the model file stays as it is)
    KLController     the KL penalty's coefficient: fixed, or Ziegler et al.'s proportional controller
                     toward a target KL per completion
    experience       one rollout's tensors: per-token log-probs of the sampling policy and the reference,
                     values, the rewards (-kl_coef * (logp - ref) per token, plus the reward model's score
                     at the completion's last token), GAE advantages (whitened) and returns
    ppo_loss         the clipped policy loss, the clipped value loss (times vf_coef) and the entropy
                     bonus (times ent_coef) per completion token, summed (the Trainer divides by tokens)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from danlu.align.rl import gae
from danlu.align.rl_config import RLConfig
from danlu.align.rollout import (
    Sampled,
    explained_variance,
    logps_and_entropy,
    masked_mean,
    pack,
    whiten,
)


class PolicyValue(nn.Module):
    """`forward(ids)` -> (logits [N, T, V], values [N, T]); `policy` alone is a plain language model."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        n_embd = policy.cfg.n_embd  # type: ignore[attr-defined]
        device = policy.embed.weight.device  # type: ignore[union-attr]
        self.value_head = nn.Linear(n_embd, 1, bias=True, device=device)
        with torch.no_grad():  # values start at 0: the first advantages are the rewards' own
            self.value_head.weight.zero_()
            self.value_head.bias.zero_()
        self._hidden: list[torch.Tensor] = []
        policy.norm.register_forward_hook(self._keep)  # type: ignore[union-attr]

    def _keep(self, module: nn.Module, args: Any, out: torch.Tensor) -> None:
        self._hidden[:] = [out]

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.policy(ids)
        hidden = self._hidden.pop()
        return logits, self.value_head(hidden.float()).squeeze(-1)


class KLController:
    """kl_coef, and after each rollout its update toward kl_target (when set): the coefficient is
    multiplied by 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon (Ziegler et al. 2019)."""

    def __init__(self, coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target > 0:
            error = min(max(kl / self.target - 1, -0.2), 0.2)
            self.value *= 1 + error * n / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


def per_row_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) [N, T] of each row's completion tokens (mask), a trajectory ending after
    its last token (value 0); zero elsewhere."""
    adv, ret = torch.zeros_like(rewards), torch.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        idx = mask[i].nonzero().squeeze(1)
        if idx.numel():
            a, r = gae(rewards[i, idx], values[i, idx], 0.0, gamma, lam)
            adv[i, idx], ret[i, idx] = a, r
    return adv, ret


@torch.no_grad()
def experience(
    model: PolicyValue,
    reference: Callable[[torch.Tensor], torch.Tensor],
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sampled: Sampled,
    rl: RLConfig,
    kl_coef: float,
    pad_id: int,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One rollout's training tensors (per target position, [N, T - 1]) and its statistics."""
    ids, full_mask = pack(sampled.prompts, sampled.completions, pad_id)
    device = model.value_head.weight.device
    ids, full_mask = ids.to(device), full_mask.to(device)
    mask = full_mask[:, 1:]
    m = mask.float()
    logits, values = model(ids[:, :-1])
    old, _ = logps_and_entropy(logits, ids)
    ref = reference(ids)
    scores = score(ids, full_mask).float()
    if rl.missing_eos_penalty is not None:
        stopped = torch.tensor(sampled.stopped, device=device)
        scores = torch.where(stopped, scores, torch.full_like(scores, rl.missing_eos_penalty))
    kl = (old - ref) * m
    rewards = -kl_coef * kl
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # each row's last completion position
    rewards[torch.arange(len(last), device=device), last] += scores
    values = values * m
    adv, returns = per_row_gae(rewards, values, mask, rl.gamma, rl.lam)
    if rl.whiten:
        adv = whiten(adv, mask) * m
    kl_sum = kl.sum(-1)
    stats = {
        "reward": float(scores.mean()),
        "reward_std": float(scores.std()) if scores.numel() > 1 else 0.0,
        "kl": float(kl_sum.mean()),
        "kl_coef": kl_coef,
        "non_score_reward": float((-kl_coef * kl_sum).mean()),
        "explained_variance": explained_variance(values, returns, mask),
        "returns_mean": float(masked_mean(returns, mask)),
        "completion_tokens": float(m.sum(-1).mean()),
        "stopped": sum(sampled.stopped) / len(sampled.stopped),
    }
    tensors = {"ids": ids, "mask": full_mask, "old_logps": old, "values": values, "returns": returns,
               "advantages": adv}  # fmt: skip
    return tensors, stats


def ppo_loss(rl: RLConfig) -> Callable[[nn.Module, dict[str, Any]], tuple[torch.Tensor, int, dict]]:
    """(summed loss, completion tokens, metrics) of one minibatch."""

    def loss(model: nn.Module, b: dict[str, Any]) -> tuple[torch.Tensor, int, dict]:
        ids, mask = b["ids"], b["mask"][:, 1:]
        m = mask.float()
        logits, values = model(ids[:, :-1])
        logp, entropy = logps_and_entropy(logits, ids)
        adv, old, old_v, ret = b["advantages"], b["old_logps"], b["values"], b["returns"]
        ratio = torch.exp(logp - old)
        pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - rl.clip, 1 + rl.clip))
        v_clipped = old_v + (values - old_v).clamp(-rl.clip_value, rl.clip_value)
        vf_plain, vf_clip = (values - ret) ** 2, (v_clipped - ret) ** 2
        vf = 0.5 * torch.max(vf_plain, vf_clip)
        per_token = pg + rl.vf_coef * vf - rl.ent_coef * entropy
        n = int(mask.sum())
        metrics = {
            "policy_loss": float(masked_mean(pg.detach(), mask)),
            "value_loss": float(masked_mean(vf.detach(), mask)),
            "clip_fraction": float(masked_mean(((ratio.detach() - 1).abs() > rl.clip).float(), mask)),
            "value_clip_fraction": float(masked_mean((vf_clip > vf_plain).float(), mask)),
            "entropy": float(masked_mean(entropy.detach(), mask)),
            "approx_kl": float(masked_mean(0.5 * (logp.detach() - old) ** 2, mask)),
        }
        return (per_token * m).sum(), n, metrics

    return loss
