"""Loss-based domain reweighting, DoReMi-style (Xie et al. 2023, Algorithm 1), into a `data.mix`.

A small reference model is trained on the default mix, and a proxy model of the same size is trained
while domain weights alpha move towards the domains where the proxy's loss most exceeds the
reference's. At each step t, with per-domain mean token losses l_t (proxy) and r (reference):
    excess    lambda_t = max(l_t - r, 0)                      (a domain the proxy already fits gets none)
    update    alpha'_t = alpha_{t-1} * exp(eta * lambda_t)    (exponentiated gradient ascent)
    smooth    alpha_t  = (1 - c) * alpha'_t / sum(alpha'_t) + c / k
The weights DoReMi trains the final model with are the mean of alpha_t over the steps.

Here the proxy's per-domain losses come from its evaluations (one row of losses per evaluated step,
e.g. each checkpoint of a proxy run scored on the validation split per source by
danlu.eval.domain_loss): the same updates, driven by logged losses rather than each training batch.
`doremi_mix` returns the {weights: ...} mapping that a recipe's data.mix takes, so the pack stage lays
the train split out by it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from danlu.errors import ConfigError


def _domains(
    proxy: Sequence[Mapping[str, float]], reference: Mapping[str, float] | Sequence[Mapping[str, float]]
) -> list[str]:
    if not proxy:
        raise ConfigError("doremi: give the proxy run's per-domain losses at one step or more")
    domains = sorted(proxy[0])
    refs = [reference] if isinstance(reference, Mapping) else list(reference)
    for i, row in enumerate([*proxy, *refs]):
        if sorted(row) != domains:
            raise ConfigError(
                f"doremi: every loss row must name the same domains {domains}; row {i} names {sorted(row)}"
            )
        bad = {d: v for d, v in row.items() if not math.isfinite(float(v))}
        if bad:
            raise ConfigError(f"doremi: losses must be finite numbers, got {bad}")
    if len(refs) not in (1, len(proxy)):
        raise ConfigError(
            f"doremi: give one reference row, or one per proxy row ({len(proxy)}); got {len(refs)}"
        )
    return domains


def doremi_weights(
    proxy_losses: Sequence[Mapping[str, float]],
    reference_losses: Mapping[str, float] | Sequence[Mapping[str, float]],
    eta: float = 1.0,
    smoothing: float = 1e-3,
    initial: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Domain weights: the mean of DoReMi's alpha_t over the proxy's loss rows (see the module doc).

    `reference_losses` is one row (a final reference model) or one row per proxy row (the reference
    evaluated at the same steps); `initial` is alpha_0 (default uniform)."""
    if eta < 0:
        raise ConfigError(f"doremi: eta (the step size) must be >= 0, got {eta}")
    if not 0 <= smoothing <= 1:
        raise ConfigError(f"doremi: smoothing must be in [0, 1], got {smoothing}")
    domains = _domains(proxy_losses, reference_losses)
    k = len(domains)
    refs = (
        [reference_losses] * len(proxy_losses) if isinstance(reference_losses, Mapping) else reference_losses
    )
    if initial is None:
        alpha = np.full(k, 1.0 / k)
    else:
        if sorted(initial) != domains or any(initial[d] < 0 for d in domains) or not sum(initial.values()):
            raise ConfigError(f"doremi: initial weights must be >= 0 over the domains {domains}, not all 0")
        alpha = np.array([initial[d] for d in domains], np.float64)
        alpha /= alpha.sum()
    total = np.zeros(k)
    for proxy, ref in zip(proxy_losses, refs, strict=True):
        excess = np.maximum(np.array([proxy[d] - ref[d] for d in domains], np.float64), 0.0)
        logits = np.log(np.maximum(alpha, 1e-300)) + eta * excess  # log space: no overflow
        alpha = np.exp(logits - logits.max())
        alpha = (1 - smoothing) * alpha / alpha.sum() + smoothing / k
        total += alpha
    mean = total / len(proxy_losses)
    return {d: float(w) for d, w in zip(domains, mean / mean.sum(), strict=True)}


def doremi_mix(
    proxy_losses: Sequence[Mapping[str, float]],
    reference_losses: Mapping[str, float] | Sequence[Mapping[str, float]],
    **options: float,
) -> dict[str, dict[str, float]]:
    """A `data.mix` ({weights: {domain: weight}}) from DoReMi's weights; domains are data.sources."""
    return {"weights": doremi_weights(proxy_losses, reference_losses, **options)}
