"""Data mixing: how much of each source to train on, and which documents make up that amount.

Weights come from the recipe (per source) or from temperature sampling, p_i = n_i^alpha / sum_j n_j^alpha
(n_i the size of source i; alpha = 1 is proportional, alpha = 0 uniform; alpha = 1/T for a temperature
T as in XLM-R and mT5). A budget of `total` tokens gives each source a target p_i * total; a source may
be repeated at most `max_epochs` times (upsampling), and what a capped source cannot supply goes to the
uncapped ones in proportion to their weights (water-filling, as UniMax does), so the budget is met
whenever the cap allows it. Phase schedules split the budget by fraction of tokens (e.g. 0-70%, 70-90%,
90-100%) with a weight set per phase; the epoch cap holds over all phases together.
Selection is deterministic for a seed: whole shuffled passes over a source for each full epoch, then a
seeded random subset for the fractional part. `parse_mix` checks a recipe's `data.mix` against its
sources and turns it into the `MixSpec` the pack stage lays the train split out by; its `order` sorts
each phase's documents by a score (a curriculum, danlu.data.curriculum) instead of shuffling them.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from danlu.data.curriculum import Curriculum, parse_order
from danlu.errors import ConfigError


def temperature_weights(sizes: Mapping[str, float], alpha: float = 1.0) -> dict[str, float]:
    """p_i proportional to n_i^alpha, normalized to sum to 1; empty sources get 0."""
    if alpha < 0:
        raise ConfigError(f"mixing alpha must be >= 0 (1: proportional, 0: uniform), got {alpha}")
    if any(n < 0 for n in sizes.values()):
        raise ConfigError(f"source sizes must be >= 0, got {dict(sizes)}")
    raw = {s: (float(n) ** alpha if n > 0 else 0.0) for s, n in sizes.items()}
    z = sum(raw.values())
    if z == 0:
        raise ConfigError("every source is empty: nothing to mix")
    return {s: v / z for s, v in raw.items()}


def _normalized(weights: Mapping[str, float], sizes: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(weights) - set(sizes))
    if unknown:
        raise ConfigError(f"mixing weights name unknown sources {unknown}; sources are {', '.join(sizes)}")
    if any(w < 0 for w in weights.values()):
        raise ConfigError(f"mixing weights must be >= 0, got {dict(weights)}")
    z = sum(weights.get(s, 0.0) for s in sizes if sizes[s] > 0)
    if z <= 0:
        raise ConfigError("mixing weights are all zero for non-empty sources")
    return {s: (weights.get(s, 0.0) / z if sizes[s] > 0 else 0.0) for s in sizes}


def allocate(
    sizes: Mapping[str, float],
    total: float,
    weights: Mapping[str, float],
    max_epochs: float = math.inf,
    used: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Tokens to take from each source: weight * total, capped at max_epochs * size - used, with the
    capped remainder spread over the other sources by weight (repeated until nothing more is capped)."""
    if total < 0:
        raise ConfigError(f"mixing total must be >= 0, got {total}")
    if max_epochs <= 0:
        raise ConfigError(f"max_epochs must be > 0, got {max_epochs}")
    p = _normalized(weights, sizes)
    cap = {s: max(max_epochs * sizes[s] - (used or {}).get(s, 0.0), 0.0) for s in sizes}
    out = dict.fromkeys(sizes, 0.0)
    free = {s for s in sizes if p[s] > 0}
    budget = float(total)
    while free and budget > 1e-9:
        z = sum(p[s] for s in free)
        share = {s: budget * p[s] / z for s in free}
        capped = {s for s in free if out[s] + share[s] >= cap[s]}
        if not capped:
            for s in free:
                out[s] += share[s]
            break
        for s in capped:  # fill capped sources to their cap, then share the rest again
            budget -= cap[s] - out[s]
            out[s] = cap[s]
        free -= capped
    return out


@dataclass(frozen=True)
class Phase:
    """Tokens from fraction `start` to `end` of the budget, mixed with `weights` (None: temperature)."""

    start: float
    end: float
    weights: Mapping[str, float] | None = None


def parse_phases(spec: Sequence[Mapping[str, Any]]) -> list[Phase]:
    """[{until: 0.7, weights: {...}}, {until: 0.9, ...}, {until: 1.0, ...}] -> contiguous phases."""
    phases, start = [], 0.0
    for i, p in enumerate(spec):
        end = float(p.get("until", 1.0))
        if not start < end <= 1.0:
            raise ConfigError(f"mixing phase {i}: until={end} must be in ({start}, 1]; phases must increase")
        phases.append(Phase(start, end, p.get("weights")))
        start = end
    if not phases or phases[-1].end != 1.0:
        raise ConfigError("mixing phases must end at until: 1.0 (the whole budget)")
    return phases


def plan_mix(
    sizes: Mapping[str, float],
    total: float,
    weights: Mapping[str, float] | None = None,
    alpha: float = 1.0,
    max_epochs: float = math.inf,
    phases: Sequence[Phase] | None = None,
) -> list[dict[str, float]]:
    """Tokens per source for each phase (one phase covering the whole budget if none are given)."""
    phases = list(phases) if phases else [Phase(0.0, 1.0, weights)]
    used = dict.fromkeys(sizes, 0.0)
    out = []
    for ph in phases:
        w = ph.weights if ph.weights is not None else (weights or temperature_weights(sizes, alpha))
        got = allocate(sizes, (ph.end - ph.start) * total, w, max_epochs, used)
        for s, v in got.items():
            used[s] += v
        out.append(got)
    return out


def _rng(seed: int, *keys: Any) -> np.random.Generator:
    digest = hashlib.sha256(":".join(map(str, (seed, *keys))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def sample_source(doc_sizes: Sequence[float], target: float, seed: int, key: Any = "") -> np.ndarray:
    """Indices of documents summing to about `target` tokens: floor(epochs) shuffled full passes, then
    a seeded random prefix of one more shuffle until the target is reached (crossing it by < 1 doc)."""
    sizes = np.asarray(doc_sizes, dtype=np.float64)
    n_total = sizes.sum()
    if target <= 0 or n_total <= 0:
        return np.empty(0, dtype=np.int64)
    rng = _rng(seed, key)
    full = int(target // n_total)
    parts = [rng.permutation(len(sizes)) for _ in range(full)]
    rest = target - full * n_total
    if rest > 1e-9:
        order = rng.permutation(len(sizes))
        take = int(np.searchsorted(np.cumsum(sizes[order]), rest)) + 1  # the doc that reaches `rest`
        parts.append(order[:take])
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def sample_mix(
    doc_sizes: Mapping[str, Sequence[float]], plan: Sequence[Mapping[str, float]], seed: int
) -> list[list[tuple[str, int]]]:
    """Per phase, the (source, document index) pairs to train on, interleaved by a seeded shuffle.

    Over all phases a source is read in one continuing sequence of shuffled passes, so repeats only
    begin once every document of it has been used.
    """
    phases: list[list[tuple[str, int]]] = []
    offset = dict.fromkeys(doc_sizes, 0.0)
    for k, alloc in enumerate(plan):
        picks: list[tuple[str, int]] = []
        for src in sorted(doc_sizes):
            want = alloc.get(src, 0.0)
            if want <= 0:
                continue
            # draw the cumulative amount and keep the new tail: phases continue the same passes
            before = sample_source(doc_sizes[src], offset[src], seed, src) if offset[src] > 0 else []
            after = sample_source(doc_sizes[src], offset[src] + want, seed, src)
            picks += [(src, int(i)) for i in after[len(before) :]]
            offset[src] += want
        order = _rng(seed, "phase", k).permutation(len(picks))
        phases.append([picks[i] for i in order])
    return phases


# ---------------------------------------------------------------------------------------------
# The recipe's data.mix, checked before any work


MIX_KEYS = ("weights", "alpha", "max_epochs", "tokens", "phases", "seed", "order")
_PHASE_KEYS = ("until", "weights")


@dataclass(frozen=True)
class MixSpec:
    """A checked `data.mix`: weights (or temperature alpha), epoch cap, token budget, phases, seed."""

    seed: int
    weights: dict[str, float] | None = None
    alpha: float = 1.0
    max_epochs: float = math.inf
    tokens: int | None = (
        None  # None: the train split's token count (a phased mix in a run: the training budget)
    )
    phases: list[Phase] = field(default_factory=list)
    order: Curriculum | None = None  # documents of each phase sorted by a score (danlu.data.curriculum)


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def _integer(value: Any, key: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        at_least = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{key}: expected an integer{at_least}, got {value!r}")
    return value


def _weights(value: Any, sources: Sequence[str], key: str) -> dict[str, float]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"{key}: expected a mapping of source name to weight, got {value!r}")
    for name in value:
        if name not in sources:
            raise ConfigError(f"{key}: unknown source {name!r}; data.sources are {', '.join(sources)}")
    weights = {name: _number(w, f"{key}.{name}") for name, w in value.items()}
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ConfigError(
            f"{key}: weights must be >= 0 with at least one > 0 (leave a source out to give it no "
            f"tokens), got {weights}"
        )
    return weights


def _mapping(value: Any, key: str, valid: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping with keys {', '.join(valid)}, got {value!r}")
    for name in value:
        if name not in valid:
            close = difflib.get_close_matches(str(name), valid, n=1)
            hint = f"did you mean {key}.{close[0]}?" if close else f"valid keys: {', '.join(valid)}"
            raise ConfigError(f"{key}.{name}: unknown key; {hint}")
    return value


def _phases(value: Any, sources: Sequence[str]) -> list[Phase]:
    key = "data.mix.phases"
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: expected a list like [{{until: 0.7, weights: {{...}}}}, {{until: 1.0}}]")
    spec = []
    for i, raw in enumerate(value):
        phase = _mapping(raw, f"{key}[{i}]", _PHASE_KEYS)
        if "until" not in phase:
            raise ConfigError(f"{key}[{i}]: missing until (the fraction of tokens where the phase ends)")
        until = _number(phase["until"], f"{key}[{i}].until")
        w = phase.get("weights")
        spec.append(
            {"until": until, "weights": None if w is None else _weights(w, sources, f"{key}[{i}].weights")}
        )
    try:
        return parse_phases(spec)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None


def parse_mix(raw: Mapping[str, Any], sources: Sequence[str], default_seed: int) -> MixSpec:
    """Check a recipe's data.mix (errors name the key) and resolve its defaults."""
    raw = _mapping(raw, "data.mix", MIX_KEYS)
    get = {k: raw[k] for k in MIX_KEYS if raw.get(k) is not None}
    if "weights" in get and "alpha" in get:
        raise ConfigError("data.mix: give weights or alpha, not both (alpha derives weights from sizes)")
    alpha = _number(get.get("alpha", 1.0), "data.mix.alpha")
    if alpha < 0:
        raise ConfigError(f"data.mix.alpha: must be >= 0 (1: proportional, 0: uniform), got {alpha}")
    max_epochs = _number(get["max_epochs"], "data.mix.max_epochs") if "max_epochs" in get else math.inf
    if max_epochs <= 0:
        raise ConfigError(f"data.mix.max_epochs: must be > 0 (repeats allowed per source), got {max_epochs}")
    return MixSpec(
        seed=_integer(get.get("seed", default_seed), "data.mix.seed"),
        weights=_weights(get["weights"], sources, "data.mix.weights") if "weights" in get else None,
        alpha=alpha,
        max_epochs=max_epochs,
        tokens=_integer(get["tokens"], "data.mix.tokens", 1) if "tokens" in get else None,
        phases=_phases(get["phases"], sources) if "phases" in get else [],
        order=parse_order(get["order"]) if "order" in get else None,
    )
