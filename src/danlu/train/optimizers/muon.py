"""Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks").

For a 2-D hidden weight W (rows = out features, cols = in features) with gradient G:

    B = mu B + G;   M = G + mu B  (Nesterov) or B
    O = NewtonSchulz5(M)              ~ U V^T of M = U S V^T: every singular value pushed toward 1
    W = W (1 - lr wd) - lr * max(1, rows/cols)^0.5 * O

The quintic Newton-Schulz iteration X <- a X + (b A + c A^2) X with A = X X^T and
(a, b, c) = (3.4445, -4.7750, 2.0315) starts from M / ||M||_F (so every singular value is <= 1)
and runs 5 steps; the coefficients trade exactness for speed, so singular values land in roughly
[0.7, 1.2] rather than at 1. Wide-or-square orientation keeps X X^T the small Gram matrix.

Embeddings, the LM head and non-matrix parameters (norm gains, biases) are not hidden layers:
they get AdamW inside the same optimizer. A param group with use_muon=True holds Muon parameters;
the others (use_muon=False) hold AdamW parameters with their own betas, eps and lr.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from danlu.train.optimizers._base import StatefulOptimizer, check_beta, check_lr, run_closure

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate orthogonalization U V^T of a 2-D matrix by the quintic Newton-Schulz iteration."""
    assert g.dim() == 2, f"Newton-Schulz needs a matrix, got shape {tuple(g.shape)}"
    a, b, c = NS_COEFFS
    x = g.float()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / (x.norm() + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(StatefulOptimizer):
    """Muon for groups flagged use_muon=True, AdamW for the rest (see the module docstring).

    Defaults are the paper's: Muon lr 0.02, momentum 0.95, Nesterov, 5 Newton-Schulz steps; the
    AdamW groups use adamw_lr, adamw_betas and adamw_eps unless a group sets lr, betas or eps.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        adamw_lr: float = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
    ):
        check_lr(lr)
        check_lr(adamw_lr, "adamw_lr")
        check_beta(momentum, "momentum")
        check_beta(adamw_betas[0], "adamw beta1")
        check_beta(adamw_betas[1], "adamw beta2")
        check_lr(weight_decay, "weight_decay")
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be >= 1, got {ns_steps}")
        groups = []
        for group in params:
            if not isinstance(group, dict) or "use_muon" not in group:
                raise ValueError("Muon takes param groups that each say use_muon=True or False")
            group = dict(group)  # the AdamW defaults below must not leak into the caller's dicts
            groups.append(group)
            if group["use_muon"]:
                bad = [tuple(p.shape) for p in group["params"] if p.dim() != 2]
                if bad:
                    raise ValueError(f"use_muon groups take 2-D matrices only, got shapes {bad}")
            else:
                group.setdefault("lr", adamw_lr)
                group.setdefault("betas", adamw_betas)
                group.setdefault("eps", adamw_eps)
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps}
        defaults["weight_decay"] = weight_decay
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = run_closure(closure)
        for group in self.param_groups:
            for p in self.params_with_grad(group):
                update = self._muon(p, group) if group["use_muon"] else self._adamw(p, group)
                p32 = p.float()
                p32.mul_(1.0 - group["lr"] * group["weight_decay"]).sub_(update)
                if p32 is not p:
                    p.copy_(p32)
        return loss

    def _muon(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        g = p.grad.float()
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(g)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(g)
        m = g.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
        rows, cols = p.shape
        scale = group["lr"] * max(1.0, rows / cols) ** 0.5
        return newton_schulz(m, group["ns_steps"]).mul_(scale)

    def _adamw(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        g = p.grad.float()
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(g)
            state["exp_avg_sq"] = torch.zeros_like(g)
        state["step"] += 1
        t = state["step"]
        beta1, beta2 = group["betas"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = (v.sqrt() / math.sqrt(1.0 - beta2**t)).add_(group["eps"])
        return (m / denom).mul_(group["lr"] / (1.0 - beta1**t))
