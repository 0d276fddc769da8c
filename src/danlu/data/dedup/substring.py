"""Exact-substring dedup (Lee et al. 2022, "Deduplicating Training Data Makes Language Models Better").

The corpus is one byte string: each document's UTF-8 followed by 0xFF, a byte UTF-8 never uses. Every
window of `min_len` bytes that lies inside one document and also occurs at an earlier position of the
corpus is removed; the earliest occurrence is kept. With the suffix array, the suffixes starting with a
given window are one contiguous run of entries whose adjacent LCPs are all >= min_len, so "occurs
earlier" is "is not the smallest position of its run": all of it is a few vectorized passes.
Windows are removed as whole characters: a character goes only if all its bytes are covered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from danlu.data.dedup.suffix_array import suffix_array_lcp
from danlu.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SEPARATOR = 0xFF  # never appears in UTF-8, so no repeated window can contain a document boundary


def concatenate(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(corpus bytes, start offset of each text), with SEPARATOR after every text."""
    parts = [t.encode("utf-8") for t in texts]
    blob = b"\xff".join(parts) + b"\xff" if parts else b""
    lengths = np.array([len(p) + 1 for p in parts], dtype=np.int64)
    starts = np.r_[0, np.cumsum(lengths)[:-1]] if parts else np.empty(0, np.int64)
    return np.frombuffer(blob, dtype=np.uint8), starts


def repeated_window_starts(data: np.ndarray, sa: np.ndarray, lcp: np.ndarray, min_len: int) -> np.ndarray:
    """Positions p (unordered) where data[p:p+min_len] has no SEPARATOR and occurs at a position < p."""
    n = len(data)
    if n < min_len:
        return np.empty(0, dtype=np.int64)
    # run boundaries: a new run starts wherever the adjacent LCP drops below min_len
    new_run = lcp < min_len
    new_run[0] = True
    run_starts = np.flatnonzero(new_run)
    run_min = np.minimum.reduceat(sa, run_starts)
    first_of_run = np.repeat(run_min, np.diff(np.r_[run_starts, n]))
    later = sa[(sa != first_of_run)]
    # a run of length >= 2 shares its first min_len bytes, so one SEPARATOR check per start suffices
    seps = np.r_[np.flatnonzero(data == SEPARATOR), n]  # n: the end also bounds the last text
    next_sep = seps[np.searchsorted(seps, later)]
    return later[next_sep - later >= min_len]


def removed_mask(n: int, window_starts: np.ndarray, min_len: int) -> np.ndarray:
    """Bytes covered by any window [p, p + min_len)."""
    diff = np.bincount(window_starts, minlength=n + 1) - np.bincount(window_starts + min_len, minlength=n + 1)
    return np.cumsum(diff[:n]) > 0


def _cut(raw: np.ndarray, removed: np.ndarray) -> str:
    """raw UTF-8 bytes without the characters whose bytes are all removed."""
    lead = np.flatnonzero((raw & 0xC0) != 0x80)  # first byte of each character
    char_removed = np.minimum.reduceat(removed.astype(np.uint8), lead).astype(bool)
    keep = np.repeat(~char_removed, np.diff(np.r_[lead, len(raw)]))
    return raw[keep].tobytes().decode("utf-8")


def remove_repeated_substrings(
    texts: Sequence[str], min_len: int = 50, backend: str = "auto"
) -> tuple[list[str], np.ndarray]:
    """Texts with every repeat of a >= min_len-byte substring removed (first occurrences kept), and the
    number of UTF-8 bytes removed from each."""
    if min_len < 1:
        raise ConfigError(f"substring dedup min_len must be >= 1 byte, got {min_len}")
    data, starts = concatenate(texts)
    if len(data) == 0:
        return list(texts), np.zeros(len(texts), dtype=np.int64)
    sa, lcp = suffix_array_lcp(data, backend)
    windows = repeated_window_starts(data, sa, lcp, min_len)
    del sa, lcp
    removed = removed_mask(len(data), windows, min_len)
    ends = np.r_[starts[1:], len(data)] - 1  # exclusive end of each text (its separator)
    marked = np.add.reduceat(removed.astype(np.int64), starts)
    out, counts = list(texts), np.zeros(len(texts), dtype=np.int64)
    for i in np.flatnonzero(marked):
        raw = data[starts[i] : ends[i]]
        out[i] = _cut(raw, removed[starts[i] : ends[i]])
        counts[i] = len(raw) - len(out[i].encode("utf-8"))  # bytes actually cut: whole characters only
    return out, counts


class SubstringDedup:
    """Pipeline block: removes repeated substrings of at least min_len bytes, keeping first occurrences.

    Reads the whole input first (the suffix array spans the corpus). A document left empty or all
    whitespace is dropped. After `run`, `stats` counts documents and bytes.
    """

    name = "substring"

    def __init__(self, min_len: int = 50, backend: str = "auto") -> None:
        if min_len < 1:
            raise ConfigError(f"SubstringDedup min_len must be >= 1 byte, got {min_len}")
        self.min_len = min_len
        self.backend = backend
        self.stats: dict[str, int] = {}

    def run(self, docs: Iterable[dict]) -> Iterator[dict]:
        docs = list(docs)
        for d in docs:
            if not isinstance(d.get("text"), str):
                raise DataError(f"document {d.get('id')!r} has no 'text' string; every document needs one")
        texts, removed = remove_repeated_substrings([d["text"] for d in docs], self.min_len, self.backend)
        out = [
            {**d, "text": t} if r else d for d, t, r in zip(docs, texts, removed, strict=True) if t.strip()
        ]
        self.stats = {
            "documents_in": len(docs),
            "bytes_in": sum(len(d["text"].encode("utf-8")) for d in docs),
            "bytes_removed": int(removed.sum()),
            "documents_changed": int((removed > 0).sum()),
            "documents_emptied": len(docs) - len(out),
            "documents_out": len(out),
        }
        log.info("substring dedup: %s", self.stats)
        return iter(out)
