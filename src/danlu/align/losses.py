"""The preference losses as pure functions of summed log-probs (TRL's formulas, pinned by tests).

Inputs are per-pair tensors [B]: the policy's and the reference's summed log-probs of the chosen and
the rejected response (response tokens only), and, where a loss normalizes by length, the response
lengths in tokens. Each function returns a `PreferenceLoss`: the per-pair losses (the stage sums them;
the mean is the reported loss) and the reported rewards, whose margins and accuracy follow.

    dpo     -log sigmoid(beta * ((pc - rc) - (pr - rr)))                        (Rafailov et al. 2023)
    cdpo    DPO with labels flipped with probability eps (label smoothing):
            -(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d)            (Mitchell 2023)
    ipo     ((pc - rc) / |yc| - (pr - rr) / |yr| - 1 / (2 beta))^2, the per-token log-ratios
            (Azar et al. 2023; TRL's length normalization, confirmed with the IPO authors)
    simpo   -log sigmoid(beta * (pc / |yc| - pr / |yr|) - gamma), no reference   (Meng et al. 2024)
    orpo    NLL of the chosen response per token - lambda * log sigmoid(log-odds ratio), on the
            per-token mean log-probs, no reference                                (Hong et al. 2024)
    kto     unpaired: a desirable completion's loss 1 - sigmoid(beta (r - z)), an undesirable one's
            1 - sigmoid(beta (z - r)), r its log-ratio and z the batch's KL estimate: the mean
            log-ratio of mismatched (prompt, completion) pairs, clamped at 0 and not trained through
                                                                                  (Ethayarajh et al. 2024)

Rewards are beta times the log-ratio (DPO, cDPO, IPO, KTO) or beta times the policy log-prob, summed
for ORPO and per token for SimPO (no reference), as TRL reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

PAIRED = ("dpo", "cdpo", "ipo", "simpo", "orpo")


@dataclass
class PreferenceLoss:
    losses: torch.Tensor  # [B] per pair (or per completion, for KTO)
    chosen_rewards: torch.Tensor  # detached
    rejected_rewards: torch.Tensor  # detached

    def metrics(self) -> dict[str, float]:
        """TRL's reported numbers: mean rewards, mean margin, fraction of pairs ranked right."""
        c, r = self.chosen_rewards, self.rejected_rewards
        out = {"loss": float(self.losses.detach().mean())}
        if c.numel():
            out["rewards/chosen"] = float(c.mean())
        if r.numel():
            out["rewards/rejected"] = float(r.mean())
        if c.numel() and r.numel():
            if c.shape == r.shape:  # paired
                out["rewards/margins"] = float((c - r).mean())
                out["rewards/accuracies"] = float((c > r).float().mean())
            else:
                out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
        return out


def dpo(
    pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float = 0.1
) -> PreferenceLoss:
    """Sigmoid DPO on policy (pc, pr) and reference (rc, rr) summed log-probs."""
    return cdpo(pc, pr, rc, rr, beta, 0.0)


def cdpo(
    pc: torch.Tensor,
    pr: torch.Tensor,
    rc: torch.Tensor,
    rr: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> PreferenceLoss:
    """Conservative DPO: the preference label is wrong with probability label_smoothing."""
    chosen, rejected = pc - rc, pr - rr
    d = beta * (chosen - rejected)
    losses = -F.logsigmoid(d) * (1 - label_smoothing) - F.logsigmoid(-d) * label_smoothing
    return PreferenceLoss(losses, beta * chosen.detach(), beta * rejected.detach())


def ipo(
    pc: torch.Tensor,
    pr: torch.Tensor,
    rc: torch.Tensor,
    rr: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    beta: float = 0.1,
) -> PreferenceLoss:
    """IPO on per-token log-ratios; beta is the paper's tau (the target margin is 1 / (2 tau))."""
    chosen, rejected = pc - rc, pr - rr
    delta = chosen / chosen_len.clamp(min=1) - rejected / rejected_len.clamp(min=1)
    losses = (delta - 1 / (2 * beta)) ** 2
    return PreferenceLoss(losses, beta * chosen.detach(), beta * rejected.detach())


def simpo(
    pc: torch.Tensor,
    pr: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """SimPO: reference-free, length-normalized, with a target reward margin gamma."""
    c = pc / chosen_len.clamp(min=1)
    r = pr / rejected_len.clamp(min=1)
    d = beta * (c - r) - gamma
    losses = -F.logsigmoid(d) * (1 - label_smoothing) - F.logsigmoid(-d) * label_smoothing
    return PreferenceLoss(losses, beta * c.detach(), beta * r.detach())


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, branching at -log 2 against cancellation (Maechler 2012)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo(
    pc: torch.Tensor,
    pr: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    beta: float = 0.1,
    nll: torch.Tensor | None = None,
) -> PreferenceLoss:
    """ORPO: an SFT loss on the chosen response plus beta times the odds-ratio loss on the per-token
    mean log-probs. nll is the SFT term (per pair, or the batch's token mean); by default each pair's
    chosen-response NLL per token. (TRL's ORPOTrainer takes it over prompt and response tokens.)"""
    c = pc.float() / chosen_len.clamp(min=1)
    r = pr.float() / rejected_len.clamp(min=1)
    log_odds = (c - r) - (_log1mexp(c) - _log1mexp(r))
    losses = (-c if nll is None else nll) - beta * F.logsigmoid(log_odds)
    return PreferenceLoss(losses, beta * c.detach(), beta * r.detach())


def kto(
    policy: torch.Tensor,
    reference: torch.Tensor,
    desirable: torch.Tensor,
    kl_policy: torch.Tensor,
    kl_reference: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> PreferenceLoss:
    """KTO over a batch of unpaired completions: policy/reference summed log-probs [B], desirable [B]
    bool, and the summed log-probs of the batch's mismatched (prompt, completion) pairs under both
    models for the KL estimate. The losses come desirable first, then undesirable (as TRL orders them)."""
    z = (kl_policy - kl_reference).mean().detach().clamp(min=0)
    ratio = policy - reference
    good, bad = ratio[desirable], ratio[~desirable]
    losses = torch.cat(
        (
            desirable_weight * (1 - torch.sigmoid(beta * (good - z))),
            undesirable_weight * (1 - torch.sigmoid(beta * (z - bad))),
        )
    )
    return PreferenceLoss(losses, beta * good.detach(), beta * bad.detach())


def bradley_terry(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> PreferenceLoss:
    """A reward model's pairwise loss -log sigmoid(r_c - r_r - margin) (Llama 2's optional margin)."""
    d = chosen - rejected if margin is None else chosen - rejected - margin
    return PreferenceLoss(-F.logsigmoid(d), chosen.detach(), rejected.detach())
