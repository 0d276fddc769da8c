"""Shingles: a document as a set of 32-bit hashes of its word or character n-grams.

Hashing is vectorized: each word (or character) gets one 32-bit hash, and the n-gram hash mixes the n
element hashes with numpy over the whole document at once, so the per-shingle Python cost is nil.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from danlu.errors import ConfigError

_WORD = re.compile(r"\w+")
# odd 64-bit multiplier (from splitmix64) for the polynomial that folds n element hashes into one
_FOLD = np.uint64(0x9E3779B97F4A7C15)
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))
_FMIX64 = (
    np.uint64(33),
    np.uint64(0xFF51AFD7ED558CCD),
    np.uint64(33),
    np.uint64(0xC4CEB9FE1A85EC53),
    np.uint64(33),
)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer: a bijection that spreads every input bit over the output."""
    s1, m1, s2, m2, s3 = _FMIX32
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s3)


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer."""
    s1, m1, s2, m2, s3 = _FMIX64
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s3)


@dataclass(frozen=True)
class Shingling:
    """How a text becomes shingles: `kind` "word" (\\w+ tokens) or "char" (Unicode code points), `n`-grams.

    Text is lowercased; for "char", runs of whitespace count as one space, so reflowed lines still match.
    A text shorter than n elements is one shingle of all its elements; an empty text has no shingles.
    """

    kind: str = "word"
    n: int = 5
    lowercase: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("word", "char"):
            raise ConfigError(f"shingling kind must be 'word' or 'char', got {self.kind!r}")
        if self.n < 1:
            raise ConfigError(f"shingle size n must be >= 1, got {self.n}")


_BMP_WORD_CHARS: np.ndarray | None = None


def _is_word_char(cp: np.ndarray) -> np.ndarray:
    """Whether each code point matches the regex \\w, through a table of the Basic Multilingual Plane
    built once (~65k regex checks); the rare code points above it are checked one distinct value each."""
    global _BMP_WORD_CHARS
    if _BMP_WORD_CHARS is None:
        _BMP_WORD_CHARS = np.array([_WORD.match(chr(c)) is not None for c in range(0x10000)], dtype=bool)
    out = np.zeros(len(cp), dtype=bool)
    bmp = cp < 0x10000
    out[bmp] = _BMP_WORD_CHARS[cp[bmp]]
    if not bmp.all():
        astral = np.unique(cp[~bmp])
        table = np.array([_WORD.match(chr(c)) is not None for c in astral], dtype=bool)
        out[~bmp] = table[np.searchsorted(astral, cp[~bmp])]
    return out


def _word_hashes_and_starts(text: str) -> tuple[np.ndarray, np.ndarray]:
    """uint64 hash of each \\w+ word of text, in order, and the code-point index where each word starts.

    No per-word Python work: a word's hash is the wrapping sum of fmix64(code point | position-in-word
    << 32) over its characters (order-sensitive through the position), computed for all words at once
    by a segmented sum, then mixed again.
    """
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    is_word = _is_word_char(cp)
    chars = np.flatnonzero(is_word)
    if len(chars) == 0:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
    starts = is_word.copy()
    starts[1:] &= ~is_word[:-1]
    start_pos = np.flatnonzero(starts)
    first = np.flatnonzero(starts[chars])  # index in `chars` of each word's first character
    word_len = np.diff(np.r_[first, len(chars)])
    pos = np.arange(len(chars)) - np.repeat(first, word_len)
    vals = fmix64(cp[chars].astype(np.uint64) | (pos.astype(np.uint64) << np.uint64(32)))
    return fmix64(np.add.reduceat(vals, first)), start_pos


def word_hashes(text: str) -> np.ndarray:
    """uint64 hash of each \\w+ word of text, in order."""
    return _word_hashes_and_starts(text)[0]


def _fold(elements: np.ndarray, n: int) -> np.ndarray:
    """uint64 element hashes -> 64-bit hashes of each run of n consecutive elements."""
    m = len(elements)
    if m == 0:
        return np.empty(0, dtype=np.uint64)
    if m < n:
        n = m
    count = m - n + 1
    h = np.zeros(count, dtype=np.uint64)
    for j in range(n):  # polynomial in the fold multiplier; wraps mod 2^64
        h *= _FOLD
        h += elements[j : j + count]
    return fmix64(h)


class ShingleHasher:
    """Callable text -> uint32 array of its shingle hashes (in text order, repeats kept)."""

    def __init__(self, shingling: Shingling | None = None) -> None:
        self.shingling = shingling or Shingling()

    def elements(self, text: str) -> np.ndarray:
        """The uint64 hashes of the words or characters that shingles are made of."""
        sh = self.shingling
        if sh.lowercase:
            text = text.lower()
        if sh.kind == "word":
            return word_hashes(text)
        text = " ".join(text.split())
        # code points; +1 keeps a NUL character distinct from the polynomial's zero start
        return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64) + np.uint64(1)

    def hashes64(self, text: str) -> np.ndarray:
        """uint64 hashes of the text's shingles (in text order, repeats kept)."""
        return _fold(self.elements(text), self.shingling.n)

    def __call__(self, text: str) -> np.ndarray:
        return (self.hashes64(text) >> np.uint64(32)).astype(np.uint32)

    def batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 shingle hashes of all texts back to back, number of shingles of each text): the same
        values as calling the hasher on each text, with numpy work done once for the whole batch."""
        sh = self.shingling
        texts = [t.lower() for t in texts] if sh.lowercase else list(texts)
        if sh.kind == "char":
            texts = [" ".join(t.split()) for t in texts]
            sizes = np.array([len(t) for t in texts], dtype=np.int64)
            elements = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
            elements += np.uint64(1)
        else:
            # "\n" is not a word character, so no word spans two texts
            joined = "\n".join(texts)
            cp_starts = np.r_[0, np.cumsum([len(t) + 1 for t in texts])[:-1]].astype(np.int64)
            elements, word_starts = _word_hashes_and_starts(joined)
            owner = np.searchsorted(cp_starts, word_starts, side="right") - 1
            sizes = np.bincount(owner, minlength=len(texts)).astype(np.int64)
        n = sh.n
        folded = _fold(elements, n) if len(elements) >= n else np.empty(0, np.uint64)
        # an n-gram starting at element i is valid if it ends inside the same text
        doc_start = np.r_[0, np.cumsum(sizes)[:-1]]
        counts = np.maximum(sizes - n + 1, 0)
        valid = np.zeros(len(folded), dtype=bool)
        valid[
            np.repeat(doc_start, counts)
            + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
        ] = True
        parts = folded[valid]
        short = np.flatnonzero((sizes > 0) & (sizes < n))
        if len(short):  # texts shorter than n: one shingle of all their elements, spliced in order
            pieces, last = [], 0
            ends = np.cumsum(counts)
            for d in short:
                cut = int(ends[d])
                pieces += [parts[last:cut], _fold(elements[doc_start[d] : doc_start[d] + sizes[d]], n)]
                last = cut
            pieces.append(parts[last:])
            parts = np.concatenate(pieces)
            counts = counts.copy()
            counts[short] = 1
        return (parts >> np.uint64(32)).astype(np.uint32), counts


def shingle_hashes(texts: Iterable[str], shingling: Shingling | None = None) -> list[np.ndarray]:
    """The shingle hashes of each text (uint32 arrays)."""
    texts = list(texts)
    flat, counts = ShingleHasher(shingling).batch(texts)
    return np.split(flat, np.cumsum(counts)[:-1]) if texts else []


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two shingle-hash sets (1.0 for two empty sets)."""
    ua, ub = np.unique(a), np.unique(b)
    union = len(np.union1d(ua, ub))
    if union == 0:
        return 1.0
    return len(np.intersect1d(ua, ub, assume_unique=True)) / union


def jaccard_matrix(hashes: list[np.ndarray], chunk: int = 1 << 18) -> np.ndarray:
    """Exact pairwise Jaccard [n, n] of shingle-hash sets, through a dense doc x shingle incidence matmul
    over chunks of the shingle vocabulary: the ground truth for a few hundred long documents."""
    n = len(hashes)
    sets = [np.unique(h) for h in hashes]
    sizes = np.array([len(s) for s in sets], dtype=np.float64)
    flat = np.concatenate(sets) if sets else np.empty(0, np.uint32)
    owner = np.repeat(np.arange(n), sizes.astype(np.int64))
    vocab, col = np.unique(flat, return_inverse=True)
    inter = np.zeros((n, n), dtype=np.float64)
    for lo in range(0, len(vocab), chunk):
        sel = (col >= lo) & (col < lo + chunk)
        x = np.zeros((n, min(chunk, len(vocab) - lo)), dtype=np.float32)
        x[owner[sel], col[sel] - lo] = 1.0
        inter += x @ x.T  # float32 sums of 0/1 are exact below 2^24 shingles per chunk
    union = sizes[:, None] + sizes[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 1.0)
