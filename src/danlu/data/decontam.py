"""Decontamination: remove (or flag) training documents that share word n-grams with evaluation sets.

Text is compared as lowercased \\w+ words (punctuation and spacing ignored), in n-grams of `n` words
(13 by default, as GPT-3 and the Llama/OLMo decontamination reports use). The index holds the 64-bit
hashes of every n-gram of every evaluation example (question, context and answers) as one sorted numpy
array: 8 bytes an n-gram, looked up for a whole document at once with a binary search. A document with
at least `min_matches` matching n-grams is contaminated. A text shorter than n words is one n-gram of
all its words (so a short document that is exactly a short eval text is caught too).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence

import numpy as np

from danlu.data.dedup.shingles import ShingleHasher, Shingling
from danlu.data.sources import Document
from danlu.errors import ConfigError
from danlu.fetch import cache_dir
from danlu.io import atomic_path

log = logging.getLogger(__name__)


class NgramIndex:
    """A set of word n-gram hashes with vectorized membership tests."""

    def __init__(self, hashes: np.ndarray, n: int, is_sorted_unique: bool = False) -> None:
        if not is_sorted_unique:
            # sort + neighbour compare: several times faster than np.unique's hashing on millions
            hashes = np.sort(hashes.astype(np.uint64))
            hashes = hashes[np.r_[True, hashes[1:] != hashes[:-1]]] if len(hashes) else hashes
        self.hashes = hashes
        self.n = n
        self.hasher = ShingleHasher(Shingling(kind="word", n=n))

    @classmethod
    def from_texts(cls, texts: Iterable[str], n: int = 13) -> NgramIndex:
        hasher = ShingleHasher(Shingling(kind="word", n=n))
        parts = [hasher.hashes64(t) for t in texts]
        return cls(np.concatenate(parts) if parts else np.empty(0, np.uint64), n)

    def __len__(self) -> int:
        return len(self.hashes)

    def ngram_hashes(self, text: str) -> np.ndarray:
        return self.hasher.hashes64(text)

    def matches(self, text: str) -> int:
        """How many of the text's n-grams (with repeats) are in the index."""
        h = self.ngram_hashes(text)
        if len(h) == 0 or len(self.hashes) == 0:
            return 0
        pos = np.searchsorted(self.hashes, h).clip(max=len(self.hashes) - 1)
        return int((self.hashes[pos] == h).sum())


def eval_index(n: int = 13, eval_sets: Sequence[str] | None = None) -> NgramIndex:
    """The n-gram index of the DATA.md evaluation sets (all, or those named), cached on disk."""
    from danlu.data.evalsets import (
        EVAL_SETS,
        example_texts,
        fetch_eval_sets,
        list_eval_splits,
        read_eval_split,
    )

    root = fetch_eval_sets()
    splits = list_eval_splits(root)
    if eval_sets is not None:
        known = sorted({s[0] for s in splits})
        unknown = sorted(set(eval_sets) - set(known))
        if unknown:
            raise ConfigError(f"decontaminate: unknown eval sets {unknown}; choose from {', '.join(known)}")
        splits = [s for s in splits if s[0] in set(eval_sets)]
    key = hashlib.sha256(f"{EVAL_SETS.sha256}:{n}:{splits}".encode()).hexdigest()[:16]
    path = cache_dir() / "decontam" / f"ngrams-{n}-{key}.npy"
    if path.exists():
        return NgramIndex(np.load(path), n, is_sorted_unique=True)
    log.info("building the %d-gram index of %d eval splits", n, len(splits))
    index = NgramIndex.from_texts(
        (t for s in splits for t in example_texts(read_eval_split(*s, root=root))), n
    )
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, index.hashes)
    return index


class Decontaminator:
    """Pipeline block: documents sharing >= min_matches word n-grams with the eval sets.

    mode "remove" drops them (reason "contaminated"); mode "flag" keeps them with
    meta["decontam"] = {"matches": k}. `eval_sets` limits the index to some datasets (names as in
    danlu.data.evalsets, e.g. "ai2_arc", "hails/mmlu_no_train"); `texts` replaces it with given texts.
    The index loads on first use, once per process.
    """

    name = "decontaminate"
    reasons = ("contaminated",)

    def __init__(
        self,
        n: int = 13,
        mode: str = "remove",
        min_matches: int = 1,
        eval_sets: list[str] | None = None,
        texts: Sequence[str] | None = None,
    ) -> None:
        if n < 1:
            raise ConfigError(f"decontaminate: n must be >= 1 word, got {n}")
        if mode not in ("remove", "flag"):
            raise ConfigError(f"decontaminate: mode must be 'remove' or 'flag', got {mode!r}")
        if min_matches < 1:
            raise ConfigError(f"decontaminate: min_matches must be >= 1, got {min_matches}")
        self.n, self.mode, self.min_matches = n, mode, min_matches
        self.eval_sets = eval_sets
        self._index: NgramIndex | None = NgramIndex.from_texts(texts, n) if texts is not None else None

    @property
    def index(self) -> NgramIndex:
        if self._index is None:
            self._index = eval_index(self.n, self.eval_sets)
        return self._index

    def filter(self, doc: Document) -> tuple[bool, str | None]:
        k = self.index.matches(doc["text"])
        if k < self.min_matches:
            return True, None
        doc["meta"][self.name] = {"matches": k}
        return (False, "contaminated") if self.mode == "remove" else (True, None)
