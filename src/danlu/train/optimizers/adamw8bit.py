"""AdamW whose two moments are stored as 8-bit block-wise codes (Dettmers et al. 2022).

Each step dequantizes exp_avg (signed dynamic tree map) and exp_avg_sq (unsigned map) to fp32,
does the ordinary AdamW update (decoupled weight decay, bias correction) in fp32 and requantizes.
The state is 2 bytes per parameter plus 4 bytes per block of `block_size` (default 2048) instead of
AdamW's 8 bytes: about 4x smaller. Tensors with fewer than `min_8bit_size` elements (norm gains,
biases) keep fp32 moments, as in the paper: they cost little and are the most sensitive.

One departure from plain nearest-code rounding: a positive second moment never rounds to 0 (it
takes the smallest code, 3.25e-7 of its block's absmax). Without this, an element whose gradient is
~1e-4 of its block's largest gets v = 0 but m != 0 and steps by lr * m / eps: training diverges.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from danlu.train.optimizers._base import StatefulOptimizer, check_beta, check_lr, run_closure
from danlu.train.optimizers.quant8 import Quantized, dequantize, quantize

_Q_KEYS = ("codes", "absmax")


class AdamW8bit(StatefulOptimizer):
    """AdamW with block-wise dynamic-tree 8-bit moments; same hyper-parameters as torch's AdamW."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        block_size: int = 2048,
        min_8bit_size: int = 4096,
    ):
        check_lr(lr)
        check_beta(betas[0], "beta1")
        check_beta(betas[1], "beta2")
        check_lr(weight_decay, "weight_decay")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if block_size < 1 or min_8bit_size < 0:
            raise ValueError(
                f"need block_size >= 1 and min_8bit_size >= 0, got {block_size}, {min_8bit_size}"
            )
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "block_size": block_size,
            "min_8bit_size": min_8bit_size,
        }
        super().__init__(params, defaults)

    def _load_moment(
        self, state: dict[str, Any], name: str, p: torch.Tensor, signed: bool, bs: int
    ) -> torch.Tensor:
        if name in state:
            return state[name]
        codes, absmax = (state[f"{name}_{k}"] for k in _Q_KEYS)
        return dequantize(Quantized(codes, absmax, p.shape, signed, bs))

    def _store_moment(self, state: dict[str, Any], name: str, x: torch.Tensor, signed: bool, bs: int) -> None:
        if name in state:
            return  # fp32 moment, already updated in place
        q = quantize(x, signed, bs, keep_nonzero=not signed)
        state[f"{name}_codes"], state[f"{name}_absmax"] = q.codes, q.absmax

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = run_closure(closure)
        for group in self.param_groups:
            lr, wd, eps, bs = group["lr"], group["weight_decay"], group["eps"], group["block_size"]
            beta1, beta2 = group["betas"]
            for p in self.params_with_grad(group):
                g = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    zeros = torch.zeros_like(p, dtype=torch.float32)
                    for name, signed in (("exp_avg", True), ("exp_avg_sq", False)):
                        if p.numel() >= group["min_8bit_size"]:
                            self._store_moment(state, name, zeros, signed, bs)
                        else:
                            state[name] = zeros.clone()
                state["step"] += 1
                t = state["step"]
                m = self._load_moment(state, "exp_avg", p, True, bs)
                v = self._load_moment(state, "exp_avg_sq", p, False, bs)
                m.lerp_(g, 1.0 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                p32 = p.float()
                p32.mul_(1.0 - lr * wd)
                denom = (v.sqrt() / math.sqrt(1.0 - beta2**t)).add_(eps)
                p32.addcdiv_(m, denom, value=-lr / (1.0 - beta1**t))
                if p32 is not p:
                    p.copy_(p32)
                self._store_moment(state, "exp_avg", m, True, bs)
                self._store_moment(state, "exp_avg_sq", v, False, bs)
        return loss
