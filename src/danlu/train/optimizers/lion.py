"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

    c = beta1 * m + (1 - beta1) * g          interpolate momentum and gradient
    p = p - lr * (sign(c) + wd * p)          every coordinate moves by exactly lr (decoupled decay)
    m = beta2 * m + (1 - beta2) * g          the momentum tracks the gradient more slowly

The sign makes the update's RMS 1, larger than AdamW's, so Lion wants a 3-10x smaller lr and a
3-10x larger weight decay than AdamW (the paper's advice). One state tensor per parameter, kept in
fp32 even for bf16 parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from danlu.train.optimizers._base import StatefulOptimizer, check_beta, check_lr, run_closure


class Lion(StatefulOptimizer):
    """Lion with decoupled weight decay; betas default to the paper's (0.9, 0.99)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ):
        check_lr(lr)
        check_beta(betas[0], "beta1")
        check_beta(betas[1], "beta2")
        check_lr(weight_decay, "weight_decay")
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = run_closure(closure)
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in self.params_with_grad(group):
                g = p.grad.float()
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                m = state["exp_avg"]
                update = torch.lerp(g, m, beta1).sign_()  # beta1*m + (1-beta1)*g
                p32 = p.float()
                p32.mul_(1.0 - lr * wd).add_(update, alpha=-lr)
                if p32 is not p:
                    p.copy_(p32)
                m.lerp_(g, 1.0 - beta2)
        return loss
