"""Adafactor (Shazeer & Stern 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost").

For a matrix gradient G (n x m), the second moment V is not stored: only its row sums R (n) and
column sums C (m) are, and V is rebuilt as the rank-1 matrix R C^T / sum(R), which is optimal in the
I-divergence sense (paper, section 3). Tensors with more than 2 dims factor their last two; vectors
keep a full second moment. Per step t:

    beta2_t = 1 - t^decay_rate                               (decay_rate -0.8: beta2 grows to 1)
    R = beta2_t R + (1 - beta2_t) mean_cols(G^2 + eps1)      (row means, same ratios as sums)
    C = beta2_t C + (1 - beta2_t) mean_rows(G^2 + eps1)
    U = G / sqrt(R C^T / mean(R))
    U = U / max(1, RMS(U) / d)                               update clipping, d = clip_threshold
    alpha_t = max(eps2, RMS(p)) * rho_t   if scale_parameter, else rho_t
    rho_t = min(1e-2, 1/sqrt(t))   (relative_step; warmup_init: min(1e-6 t, 1/sqrt(t)))   or lr
    m = beta1 m + (1 - beta1) alpha_t U                       only when beta1 is set
    p = p - alpha_t wd p - (m or alpha_t U)

The first moment averages the scaled step alpha_t U (as fairseq and transformers do), not U itself:
with a relative step the two differ, and this choice keeps trajectories identical to those
implementations. With relative_step the group's "lr" is ignored: the step size is the schedule rho_t.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from danlu.train.optimizers._base import StatefulOptimizer, check_beta, check_lr, run_closure


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.norm(2) / math.sqrt(x.numel())


class Adafactor(StatefulOptimizer):
    """Adafactor with the paper's defaults; pass lr (and relative_step=False) for a fixed-lr mode."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | None = None,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        decay_rate: float = -0.8,
        beta1: float | None = None,
        weight_decay: float = 0.0,
        scale_parameter: bool = True,
        relative_step: bool | None = None,
        warmup_init: bool = False,
    ):
        if relative_step is None:
            relative_step = lr is None
        if lr is None and not relative_step:
            raise ValueError("Adafactor needs lr when relative_step=False")
        if warmup_init and not relative_step:
            raise ValueError("warmup_init=True needs relative_step=True")
        check_lr(lr)
        check_lr(weight_decay, "weight_decay")
        if beta1 is not None:
            check_beta(beta1, "beta1")
        if not decay_rate < 0.0:
            raise ValueError(f"decay_rate must be < 0 (beta2_t = 1 - t^decay_rate), got {decay_rate}")
        if not clip_threshold > 0.0:
            raise ValueError(f"clip_threshold must be > 0, got {clip_threshold}")
        defaults = {
            "lr": lr,
            "eps": eps,
            "clip_threshold": clip_threshold,
            "decay_rate": decay_rate,
            "beta1": beta1,
            "weight_decay": weight_decay,
            "scale_parameter": scale_parameter,
            "relative_step": relative_step,
            "warmup_init": warmup_init,
        }
        super().__init__(params, defaults)

    @staticmethod
    def step_size(group: dict[str, Any], step: int, param_rms: float | torch.Tensor) -> Any:
        """alpha_t: the relative (rho_t) or fixed lr, scaled by the parameter's RMS if asked."""
        if group["relative_step"]:
            ceiling = 1e-6 * step if group["warmup_init"] else 1e-2
            rho = min(ceiling, 1.0 / math.sqrt(step))
        else:
            rho = group["lr"]
        if group["scale_parameter"]:
            return torch.clamp(torch.as_tensor(param_rms), min=group["eps"][1]) * rho
        return rho

    def _init_state(self, state: dict[str, Any], g: torch.Tensor, beta1: float | None) -> None:
        state["step"] = 0
        if beta1 is not None:
            state["exp_avg"] = torch.zeros_like(g)
        if g.dim() >= 2:
            state["exp_avg_sq_row"] = g.new_zeros(g.shape[:-1])
            state["exp_avg_sq_col"] = g.new_zeros(g.shape[:-2] + g.shape[-1:])
        else:
            state["exp_avg_sq"] = torch.zeros_like(g)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = run_closure(closure)
        for group in self.param_groups:
            eps1 = group["eps"][0]
            for p in self.params_with_grad(group):
                g = p.grad.float()
                state = self.state[p]
                if not state:
                    self._init_state(state, g, group["beta1"])
                state["step"] += 1
                t = state["step"]
                p32 = p.float()
                alpha = self.step_size(group, t, _rms(p32))
                beta2t = 1.0 - t ** group["decay_rate"]

                g2 = g.square().add_(eps1)
                if g.dim() >= 2:
                    row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
                    row.lerp_(g2.mean(dim=-1), 1.0 - beta2t)
                    col.lerp_(g2.mean(dim=-2), 1.0 - beta2t)
                    # rsqrt(R C^T / mean(R)) split into a row factor and a column factor
                    r = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
                    c = col.unsqueeze(-2).rsqrt()
                    update = g * r * c
                else:
                    v = state["exp_avg_sq"]
                    v.lerp_(g2, 1.0 - beta2t)
                    update = g * v.rsqrt()

                update.div_((_rms(update) / group["clip_threshold"]).clamp_(min=1.0))
                update.mul_(alpha)
                if group["beta1"] is not None:
                    m = state["exp_avg"]
                    m.lerp_(update, 1.0 - group["beta1"])
                    update = m
                if group["weight_decay"] != 0.0:
                    p32.mul_(1.0 - group["weight_decay"] * alpha)
                p32.sub_(update)
                if p32 is not p:
                    p.copy_(p32)
        return loss
