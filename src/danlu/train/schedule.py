"""Learning-rate and batch-size schedules, as pure functions of the 0-based optimizer step.

Warmup (the first warmup_steps) rises to the peak: linearly, along a half cosine, or geometrically
from peak/1000. It starts above 0 so the first step already moves the weights. Then the decay:
  cosine    peak -> floor along a half cosine, reaching the floor at max_steps
  linear    peak -> floor in a straight line
  constant  the peak throughout
  inv_sqrt  peak * sqrt(warmup / (step + 1)), never below the floor (the Transformer paper's rule)
  wsd       warmup-stable-decay: the peak until the last decay_fraction of the steps, then linear to
            the floor; the stable phase can be extended and a decay branched off any checkpoint
floor = peak * min_lr_ratio. Batch ramp-up grows the micro-batches per step from 1 to grad_accum.
"""

from __future__ import annotations

import math

from danlu.errors import ConfigError
from danlu.train.config import TrainConfig

_EXP_WARMUP_START = 1e-3  # exponential warmup starts at peak * this


def _warmup(step: int, cfg: TrainConfig, peak: float) -> float:
    p = (step + 1) / cfg.warmup_steps
    if cfg.warmup_shape == "cosine":
        return peak * 0.5 * (1.0 - math.cos(math.pi * p))
    if cfg.warmup_shape == "exponential":
        return peak * _EXP_WARMUP_START ** (1.0 - p)
    return peak * p


def wsd_decay_start(cfg: TrainConfig) -> int:
    return max(cfg.warmup_steps, cfg.max_steps - round(cfg.decay_fraction * cfg.max_steps))


def lr_at(step: int, cfg: TrainConfig, peak: float | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based); `peak` overrides cfg.lr."""
    peak = cfg.lr if peak is None else peak
    if peak is None:
        raise ConfigError("train.lr is None here; resolve it (danlu.model.presets.suggested_lr) first")
    if step < cfg.warmup_steps:
        return _warmup(step, cfg, peak)
    floor = peak * cfg.min_lr_ratio
    kind = cfg.schedule
    if kind == "constant":
        return peak
    if kind == "inv_sqrt":
        return max(floor, peak * math.sqrt(max(cfg.warmup_steps, 1) / (step + 1)))
    start = wsd_decay_start(cfg) if kind == "wsd" else cfg.warmup_steps
    span = cfg.max_steps - start
    progress = 1.0 if span <= 0 else min(1.0, max(0.0, (step - start) / span))
    if kind == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak - (peak - floor) * progress  # linear, and the decay phase of wsd


def grad_accum_at(step: int, cfg: TrainConfig) -> int:
    """Micro-batches for step `step`: 1 at step 0 rising linearly to grad_accum over batch_ramp_steps."""
    if cfg.batch_ramp_steps <= 0 or step >= cfg.batch_ramp_steps:
        return cfg.grad_accum
    return 1 + (cfg.grad_accum - 1) * step // cfg.batch_ramp_steps


def scaled_lr(lr: float, base_batch: int, batch: int, rule: str = "sqrt") -> float:
    """LR for another batch size: the linear rule (SGD, Goyal et al. 2017) or square-root rule (Adam)."""
    if base_batch <= 0 or batch <= 0:
        raise ConfigError(f"batch sizes must be positive, got {base_batch} and {batch}")
    ratio = batch / base_batch
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    raise ConfigError(f"unknown LR scaling rule {rule!r}; use 'linear' or 'sqrt'")
