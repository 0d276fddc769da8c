"""Position information: RoPE frequencies (with context-extension scaling), ALiBi slopes, and the
fixed sinusoidal table.

RoPE scaling stretches a model trained on `original` positions to `factor` times more:
  linear  position interpolation (Chen et al. 2023): every frequency divided by the factor
  ntk     NTK-aware (bloc97 2023): the base raised to base * factor^(d / (d - 2)), which keeps the high
          frequencies (local order) and interpolates the low ones
  yarn    YaRN (Peng et al. 2023): per dimension, interpolate the frequencies that rotate fewer than
          beta_slow times over the original context, keep those that rotate more than beta_fast times,
          ramp linearly between; attention logits scaled through cos/sin by 0.1 ln(factor) + 1
"""

from __future__ import annotations

import math

import torch

from danlu.model.config import ModelConfig

YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0


def _base_inv_freq(dim: int, base: float, device: torch.device | None = None) -> torch.Tensor:
    # fp32 powers of an int64 arange, as HF computes them, so logits match transformers exactly
    return 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=torch.int64).float() / dim))


def _yarn_correction_dim(rotations: float, dim: int, base: float, original: int) -> float:
    """The dimension whose frequency turns `rotations` times over `original` positions."""
    return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))


def rope_frequencies(cfg: ModelConfig, device: torch.device | None = None) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [head_dim / 2], factor on cos and sin) for the config's RoPE scaling."""
    dim = cfg.n_embd // cfg.n_head
    base, factor = cfg.rope_theta, cfg.rope_factor
    if cfg.rope_scaling == "none" or factor == 1.0:
        return _base_inv_freq(dim, base, device), 1.0
    if cfg.rope_scaling == "linear":
        return _base_inv_freq(dim, base, device) / factor, 1.0
    if cfg.rope_scaling == "ntk":
        return _base_inv_freq(dim, base * factor ** (dim / (dim - 2)), device), 1.0
    original = cfg.rope_original_max_len or int(cfg.max_seq_len / factor)
    low = max(math.floor(_yarn_correction_dim(YARN_BETA_FAST, dim, base, original)), 0)
    high = min(math.ceil(_yarn_correction_dim(YARN_BETA_SLOW, dim, base, original)), dim - 1)
    if low == high:
        high += 0.001  # a ramp needs two distinct ends
    ramp = ((torch.arange(dim // 2, device=device, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1.0 - ramp  # 1: keep the frequency, 0: interpolate it
    inv = _base_inv_freq(dim, base, device)
    inv_freq = (inv / factor) * (1 - extrapolate) + inv * extrapolate
    return inv_freq, 0.1 * math.log(factor) + 1.0


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Per-head ALiBi slopes (Press et al. 2022): the geometric sequence 2^(-8 i / n) for a power of
    two n; otherwise those of the nearest lower power of two, then every other one of the next."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_head))
    slopes = power_of_two(closest)
    if closest < n_head:
        slopes += power_of_two(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """The fixed position encodings of "Attention Is All You Need": sin on even, cos on odd features."""
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return table
