"""Learning-rate schedule: linear warmup to the peak, then cosine decay to peak * min_lr_ratio.

Steps are 0-based optimizer steps. Warmup starts at peak/warmup_steps (not 0) so the first step
already moves the weights; the cosine reaches its floor at step == max_steps.
"""

from __future__ import annotations

import math

from danlu.config import TrainConfig
from danlu.errors import ConfigError


def lr_at(step: int, cfg: TrainConfig, peak: float | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based); `peak` overrides cfg.lr."""
    peak = cfg.lr if peak is None else peak
    if peak is None:
        raise ConfigError("train.lr is None here; resolve it (danlu.model.presets.suggested_lr) first")
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    floor = peak * cfg.min_lr_ratio
    span = cfg.max_steps - cfg.warmup_steps
    progress = 1.0 if span <= 0 else min(1.0, (step - cfg.warmup_steps) / span)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
