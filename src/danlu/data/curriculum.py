"""Curriculum: the documents of each mix phase in the order of a score, instead of shuffled.

`data.mix.order: {by: KEY, descending: false}` sorts every phase's documents by KEY before the pack stage
lays them out: `length` (tokens, short first: the sequence-length warm-up of Li et al. 2022), or a
score an earlier pipeline block wrote into doc["meta"] (`edu_score` from the edu_score block,
`perplexity` from the perplexity block with annotate_only, `quality_score`, or any other number).
Documents without the score go last in their phase. The phases themselves stay in their order, so a
curriculum runs within each phase of a schedule; the training loader then walks an ordered phase's
windows in stream order rather than in a shuffle (danlu.data.loader).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from danlu.errors import ConfigError

LENGTH = "length"
_KEYS = ("by", "descending")


@dataclass(frozen=True)
class Curriculum:
    by: str  # "length" or a meta key holding a number
    descending: bool = False

    def from_meta(self) -> bool:
        return self.by != LENGTH


def parse_order(raw: Any) -> Curriculum:
    """A recipe's data.mix.order, checked."""
    key = "data.mix.order"
    if not isinstance(raw, Mapping) or "by" not in raw:
        raise ConfigError(f"{key}: expected {{by: length | META_KEY, descending: false}}, got {raw!r}")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{key}: unknown key {', '.join(unknown)}; valid keys: {', '.join(_KEYS)}")
    by, descending = raw["by"], raw.get("descending", False)
    if not isinstance(by, str) or not by:
        raise ConfigError(f"{key}.by: expected 'length' or the meta key of a score, got {by!r}")
    if not isinstance(descending, bool):
        raise ConfigError(f"{key}.descending: expected true or false, got {descending!r}")
    return Curriculum(by, descending)


def meta_value(meta: Mapping[str, Any], key: str) -> float:
    """A document's score for ordering; NaN when it has none (or it is not a finite number)."""
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return math.nan
    return float(value)


def order_phase(docs: np.ndarray, keys: np.ndarray, descending: bool = False) -> np.ndarray:
    """`docs` (indices into `keys`) sorted by their key; ties keep their order, NaN keys go last."""
    k = np.asarray(keys, np.float64)[docs]
    k = -k if descending else k
    k = np.where(np.isnan(k), np.inf, k)
    return docs[np.argsort(k, kind="stable")]
