"""Exact-substring dedup (Lee et al. 2022, "Deduplicating Training Data Makes Language Models Better").

The corpus is one byte string: each document's UTF-8 followed by 0xFF, a byte UTF-8 never uses. Every
window of `min_len` bytes that lies inside one document and also occurs at an earlier position of the
corpus is removed; the earliest occurrence is kept. With the suffix array, the suffixes starting with a
given window are one contiguous run of entries whose adjacent LCPs are all >= min_len, so "occurs
earlier" is "is not the smallest position of its run": all of it is a few vectorized passes.
Windows are removed as whole characters: a character goes only if all its bytes are covered.
The `substring_dedup` pipeline block (danlu.data.pipeline) finds `repeated_spans` over every shard at
its barrier and applies them with `cut_spans` inside each shard.
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
    if len(data) < min_len:
        return np.empty(0, dtype=np.int64)
    # entry i continues the run of entry i - 1 when they share min_len bytes; only entries in runs of
    # two or more can repeat, and in real text they are few: the rest of the work is on those alone
    joined = lcp >= min_len
    in_run = joined.copy()
    in_run[:-1] |= joined[1:]
    idx = np.flatnonzero(in_run)
    del in_run
    starts = sa[idx]
    run_starts = np.flatnonzero(~joined[idx])
    run_min = np.minimum.reduceat(starts, run_starts) if len(idx) else starts
    first_of_run = np.repeat(run_min, np.diff(np.r_[run_starts, len(idx)]))
    later = starts[starts != first_of_run]
    # a run shares its first min_len bytes, so one SEPARATOR check per start suffices
    seps = np.r_[np.flatnonzero(data == SEPARATOR), len(data)]  # the end also bounds the last text
    next_sep = seps[np.searchsorted(seps, later)]
    return later[next_sep - later >= min_len]


def _cut(raw: np.ndarray, removed: np.ndarray) -> str:
    """raw UTF-8 bytes without the characters whose bytes are all removed."""
    lead = np.flatnonzero((raw & 0xC0) != 0x80)  # first byte of each character
    char_removed = np.minimum.reduceat(removed.astype(np.uint8), lead).astype(bool)
    keep = np.repeat(~char_removed, np.diff(np.r_[lead, len(raw)]))
    return raw[keep].tobytes().decode("utf-8")


def repeated_spans(data: np.ndarray, min_len: int = 50, backend: str = "auto") -> np.ndarray:
    """The byte ranges to remove from a corpus in `concatenate`'s layout: rows (text index, start, end),
    offsets inside that text, end exclusive, maximal (adjacent windows merged), in corpus order."""
    if min_len < 1:
        raise ConfigError(f"substring dedup min_len must be >= 1 byte, got {min_len}")
    if len(data) == 0:
        return np.empty((0, 3), dtype=np.int64)
    sa, lcp = suffix_array_lcp(data, backend)
    windows = np.sort(repeated_window_starts(data, sa, lcp, min_len))
    del sa, lcp
    if not len(windows):
        return np.empty((0, 3), dtype=np.int64)
    # every window is min_len long: a span starts at a window that begins past the previous one's end
    new_span = np.r_[True, np.diff(windows) > min_len]
    starts = windows[new_span]
    ends = windows[np.r_[new_span[1:], True]] + min_len
    # no window holds a SEPARATOR, so each range lies inside one text
    text_starts = np.r_[0, np.flatnonzero(data == SEPARATOR)[:-1] + 1]
    text = np.searchsorted(text_starts, starts, side="right") - 1
    return np.stack([text, starts - text_starts[text], ends - text_starts[text]], axis=1).astype(np.int64)


def cut_spans(text: str, spans: np.ndarray) -> str:
    """text without the byte ranges `spans` (rows start, end), whole characters only: a character goes
    only if all its bytes are covered."""
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    if len(spans) and int(spans[:, 1].max()) > len(raw):
        raise ValueError(f"a removed span ends at byte {int(spans[:, 1].max())} of a {len(raw)}-byte text")
    diff = np.zeros(len(raw) + 1, dtype=np.int64)
    np.add.at(diff, spans[:, 0], 1)
    np.add.at(diff, spans[:, 1], -1)
    return _cut(raw, np.cumsum(diff[:-1]) > 0) if len(raw) else text


def spans_by_text(spans: np.ndarray) -> dict[int, np.ndarray]:
    """repeated_spans' rows grouped by text index: {text: rows (start, end)}."""
    if not len(spans):
        return {}
    texts, first = np.unique(spans[:, 0], return_index=True)
    groups = np.split(spans[:, 1:], first[1:])
    return {int(t): g for t, g in zip(texts, groups, strict=True)}


def remove_repeated_substrings(
    texts: Sequence[str], min_len: int = 50, backend: str = "auto"
) -> tuple[list[str], np.ndarray]:
    """Texts with every repeat of a >= min_len-byte substring removed (first occurrences kept), and the
    number of UTF-8 bytes removed from each."""
    data, _ = concatenate(texts)
    out, counts = list(texts), np.zeros(len(texts), dtype=np.int64)
    for i, spans in spans_by_text(repeated_spans(data, min_len, backend)).items():
        out[i] = cut_spans(texts[i], spans)
        counts[i] = len(texts[i].encode("utf-8")) - len(out[i].encode("utf-8"))  # whole characters only
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
