"""Mixture-of-experts feed-forward: a router sends each token to its top-k of n_experts MLPs.

- router: a Linear to n_experts logits (computed in fp32), softmax probabilities, top-k experts per token.
  With k > 1 the k weights are renormalized to sum to 1 (Mixtral); with k = 1 the raw probability is
  kept (Switch), since a renormalized weight would be exactly 1 and the router would get no gradient.
- capacity (Switch/GShard): with capacity_factor c > 0 an expert takes at most ceil(c * N * k / E)
  of a batch's N tokens; first choices claim slots before second choices, earlier tokens before later
  ones, and a token over capacity skips that expert (its residual stream carries it on).
- losses, returned by `forward` beside its output (None without gradients), for the model to combine
  and return to the caller, who adds them to the training loss:
  load balancing (Switch, eq. 4): E * sum_e f_e * P_e, with f_e the fraction of routed assignments that
  chose e and P_e the mean router probability of e; it is 1 for a perfectly uniform router.
  router z-loss (ST-MoE, eq. 5): mean over tokens of logsumexp(router logits)^2.
- `load` counts the tokens each expert processed since the last `reset_load()`, for load histograms.
Experts are ordinary `MLP` modules, so their Linears can be swapped (LoRA, quantization) like the dense one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from danlu.model.config import ModelConfig

# (load-balancing loss, router z-loss) of one MoE call
MoELosses = tuple[torch.Tensor, torch.Tensor]


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig, make_expert: type[nn.Module]):
        super().__init__()
        self.n_experts, self.top_k = cfg.n_experts, cfg.moe_top_k
        self.capacity_factor = cfg.moe_capacity_factor
        self.router = nn.Linear(cfg.n_embd, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(make_expert(cfg) for _ in range(cfg.n_experts))
        self.register_buffer("load", torch.zeros(cfg.n_experts, dtype=torch.long), persistent=False)

    def reset_load(self) -> None:
        self.load.zero_()

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, MoELosses | None]:
        """(chosen experts [N, k], their weights [N, k], kept [N, k]: within capacity, the router
        losses or None without gradients) for tokens x [N, d]."""
        logits = self.router(x).float()
        probs = logits.softmax(dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        assigned = F.one_hot(chosen, self.n_experts)  # [N, k, E]
        losses = None
        if torch.is_grad_enabled():
            fraction = assigned.sum(dim=(0, 1)).float() / assigned[..., 0].numel()
            balance = self.n_experts * (fraction * probs.mean(dim=0)).sum()
            losses = (balance, torch.logsumexp(logits, dim=-1).square().mean())
        kept = torch.ones_like(chosen, dtype=torch.bool)
        if self.capacity_factor > 0:
            capacity = math.ceil(self.capacity_factor * x.size(0) * self.top_k / self.n_experts)
            by_rank = assigned.transpose(0, 1)  # [k, N, E]: all first choices, then all second choices
            slot = by_rank.flatten(0, 1).cumsum(dim=0).view_as(by_rank) - 1
            kept = ((slot < capacity) & by_rank.bool()).any(dim=-1).transpose(0, 1)
        return chosen, weights, kept, losses

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, MoELosses | None]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        chosen, weights, kept, losses = self.route(x)
        token = torch.arange(x.size(0), device=x.device).repeat_interleave(self.top_k)
        chosen, weights, kept = chosen.flatten(), weights.flatten().to(x.dtype), kept.flatten()
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            picks = ((chosen == e) & kept).nonzero().squeeze(1)
            if picks.numel() == 0:
                continue
            rows = token[picks]
            out.index_add_(0, rows, expert(x[rows]) * weights[picks, None])
            self.load[e] += picks.numel()
        return out.view(shape), losses
