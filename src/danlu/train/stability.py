"""Guards for long runs: dynamic loss scaling for fp16, and a loss-spike detector.

LossScaler: fp16 gradients underflow unless the loss is scaled up; too large a scale overflows to
inf. The scale is lowered (x backoff) on any non-finite gradient, whose step is skipped, and raised
(x growth) after growth_interval clean steps (Micikevicius et al. 2018, "Mixed Precision Training").

SpikeDetector: after a few steps of history, a loss above the expected loss + k * sigma is a spike
(the trainer halves the LR for a while) and above expected + k_severe * sigma, or non-finite, a severe
spike (the trainer rolls back to the last checkpoint and skips the batches that caused it). Spikes do
not update the statistics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


class LossScaler:
    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth: float = 2.0,
        backoff: float = 0.5,
        growth_interval: int = 1000,
    ):
        self.scale, self.growth, self.backoff, self.growth_interval = (
            init_scale,
            growth,
            backoff,
            growth_interval,
        )
        self.clean_steps = 0

    def unscale_(self, params: Iterable[torch.nn.Parameter]) -> bool:
        """Divide the gradients by the scale in place; True if any gradient is inf or nan."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return False
        found_inf = False
        inv = 1.0 / self.scale
        for g in grads:
            if not torch.isfinite(g).all():
                found_inf = True
            g.mul_(inv)
        return found_inf

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self.scale = max(self.scale * self.backoff, 1.0)
            self.clean_steps = 0
            return
        self.clean_steps += 1
        if self.clean_steps >= self.growth_interval:
            self.scale *= self.growth
            self.clean_steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "clean_steps": self.clean_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.clean_steps = float(state["scale"]), int(state["clean_steps"])


class SpikeDetector:
    """The expected loss is a fast exponential moving average; the noise sigma comes from successive
    differences (E[(l_t - l_t-1)^2] = 2 sigma^2 for independent batches), which a falling trend barely
    inflates, unlike the variance around the average."""

    def __init__(
        self,
        k: float = 6.0,
        k_severe: float = 12.0,
        alpha: float = 0.1,
        noise_alpha: float = 0.02,
        min_history: int = 20,
    ):
        # the noise estimate averages over ~1/noise_alpha steps: a short window underestimates it by
        # chance often enough to raise false alarms on ordinary batch-to-batch variation
        self.k, self.k_severe, self.alpha, self.noise_alpha = k, k_severe, alpha, noise_alpha
        self.min_history = min_history
        self.mean = 0.0
        self.diff_sq = 0.0
        self.last = 0.0
        self.count = 0

    @property
    def sigma(self) -> float:
        return math.sqrt(max(self.diff_sq / 2, 1e-12))

    def threshold(self, k: float) -> float:
        return self.mean + k * self.sigma

    def check(self, loss: float) -> str:
        """'ok', 'spike' or 'severe' for this loss; only 'ok' losses update the statistics."""
        if not math.isfinite(loss):
            return "severe"
        if self.count >= self.min_history:
            if loss > self.threshold(self.k_severe):
                return "severe"
            if loss > self.threshold(self.k):
                return "spike"
        if self.count == 0:
            self.mean = loss
        else:
            self.mean += self.alpha * (loss - self.mean)
            d2 = (loss - self.last) ** 2
            self.diff_sq = d2 if self.count == 1 else self.diff_sq + self.noise_alpha * (d2 - self.diff_sq)
        self.last = loss
        self.count += 1
        return "ok"

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "diff_sq": self.diff_sq, "last": self.last, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.diff_sq = float(state["mean"]), float(state["diff_sq"])
        self.last, self.count = float(state["last"]), int(state["count"])
