"""SimHash (Charikar 2002) fingerprints and near-duplicate search within Hamming distance k.

A fingerprint bit is the sign of the count-weighted vote of the document's shingle hashes on that bit,
so similar feature multisets give fingerprints that differ in few bits. Search follows Manku et al. 2007
("Detecting near-duplicates for web crawling"): split the 64 bits into k+1 blocks; by pigeonhole two
fingerprints within distance k agree exactly on at least one block, so grouping by each block (one
"permuted table" per block) yields every such pair as a candidate, and a popcount of the XOR verifies it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from danlu.data.dedup.clusters import NearDuplicateFilter, NearDuplicates, bucket_pairs, unique_pairs
from danlu.data.dedup.shingles import ShingleHasher, Shingling
from danlu.errors import ConfigError

log = logging.getLogger(__name__)

_BATCH_FEATURES = 1 << 18  # distinct features per vectorized batch: 64 bit votes each


def simhash_from_hashes(hashes: Sequence[np.ndarray]) -> np.ndarray:
    """64-bit SimHash fingerprints (uint64 [n]) of documents given as their uint64 shingle hashes.

    Each distinct shingle votes +count on the bits set in its hash and -count on the others; a bit of
    the fingerprint is set where the total is positive. A document without shingles gets 0.
    """
    n = len(hashes)
    votes = np.zeros((n, 64), dtype=np.int64)
    feats, weights, owners = [], [], []
    pending = 0

    def flush() -> None:
        f = np.concatenate(feats)
        w = np.concatenate(weights)
        o = np.concatenate(owners)
        # column j holds bit j: little-endian bytes, least significant bit first
        bits = np.unpackbits(f.astype("<u8").view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
        signed = (bits.astype(np.int32) * 2 - 1) * w[:, None]
        starts = np.flatnonzero(np.r_[True, o[1:] != o[:-1]])
        votes[o[starts]] += np.add.reduceat(signed, starts, axis=0)
        feats.clear(), weights.clear(), owners.clear()

    for i, h in enumerate(hashes):
        if len(h) == 0:
            continue
        u, c = np.unique(np.asarray(h, dtype=np.uint64), return_counts=True)
        feats.append(u)
        weights.append(c.astype(np.int32))
        owners.append(np.full(len(u), i, dtype=np.int64))
        pending += len(u)
        if pending >= _BATCH_FEATURES:
            flush()
            pending = 0
    if feats:
        flush()
    packed = np.packbits(votes > 0, axis=1, bitorder="little")
    return packed.view("<u8").reshape(n).astype(np.uint64)


def simhash(texts: Sequence[str], shingling: Shingling | None = None) -> np.ndarray:
    """64-bit SimHash fingerprints of texts (default features: word 5-gram shingles, weighted by count)."""
    hasher = ShingleHasher(shingling)
    return simhash_from_hashes([hasher.hashes64(t) for t in texts])  # 64-bit features: per text


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance of uint64 arrays."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def block_masks(k: int) -> list[tuple[int, int]]:
    """(shift, width) of the k+1 blocks that split 64 bits as evenly as possible."""
    if not 0 <= k < 64:
        raise ConfigError(f"simhash Hamming distance k must be in [0, 63], got {k}")
    widths = [64 // (k + 1) + (1 if i < 64 % (k + 1) else 0) for i in range(k + 1)]
    shifts = np.r_[0, np.cumsum(widths)[:-1]]
    return [(int(s), int(w)) for s, w in zip(shifts, widths, strict=True)]


def simhash_candidate_pairs(fps: np.ndarray, k: int = 3, max_bucket: int = 256) -> np.ndarray:
    """Distinct pairs (i < j) whose fingerprints agree on at least one of the k+1 blocks."""
    fps = np.asarray(fps, dtype=np.uint64)
    pairs = []
    for shift, width in block_masks(k):
        mask = np.uint64((1 << width) - 1)
        pairs.append(bucket_pairs((fps >> np.uint64(shift)) & mask, max_bucket))
    return unique_pairs(np.concatenate(pairs), len(fps))


def simhash_near_duplicates(
    texts: Sequence[str], k: int = 3, shingling: Shingling | None = None, max_bucket: int = 256
) -> NearDuplicates:
    """Pairs of texts whose SimHash fingerprints differ in at most k bits, and their clusters."""
    fps = simhash(texts, shingling)
    cand = simhash_candidate_pairs(fps, k, max_bucket)
    dist = hamming(fps[cand[:, 0]], fps[cand[:, 1]]) if len(cand) else np.empty(0, np.int64)
    ok = dist <= k
    log.debug("simhash: %d docs, k=%d, %d candidates, %d within distance", len(texts), k, len(cand), ok.sum())
    # the similarity reported is the fraction of agreeing bits
    return NearDuplicates(n=len(texts), pairs=cand[ok], similarity=1 - dist[ok] / 64, candidates=len(cand))


class SimHashDedup(NearDuplicateFilter):
    """Pipeline block: drops documents whose SimHash is within Hamming distance k of an earlier one's."""

    name = "simhash"

    def __init__(self, k: int = 3, shingling: Shingling | None = None) -> None:
        super().__init__()
        block_masks(k)  # validate now, not on the first batch
        self.k = k
        self.shingling = shingling or Shingling()

    def find(self, texts: Sequence[str]) -> NearDuplicates:
        return simhash_near_duplicates(texts, self.k, self.shingling)
