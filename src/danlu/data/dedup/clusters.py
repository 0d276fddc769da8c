"""Connected components of a duplicate-pair graph, and the bucket -> candidate-pair expansion LSH needs."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from danlu.errors import DataError

log = logging.getLogger(__name__)


def connected_components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Label of each of n nodes: the smallest node index in its component (so the label is the first doc).

    Vectorized union-find: hook every edge's larger root onto the smaller one, then pointer-jump until
    each node points at its root; repeat until both ends of every edge share a root. The roots only ever
    decrease, so this terminates, and pointer jumping keeps the number of rounds small.
    """
    labels = np.arange(n, dtype=np.int64)
    if len(pairs) == 0:
        return labels
    a = np.asarray(pairs[:, 0], dtype=np.int64)
    b = np.asarray(pairs[:, 1], dtype=np.int64)
    while True:
        ra, rb = labels[a], labels[b]
        differ = ra != rb
        if not differ.any():
            return labels
        ra, rb = ra[differ], rb[differ]
        lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
        np.minimum.at(labels, hi, lo)
        while True:  # pointer jumping: labels[i] <- labels[labels[i]] until every chain is flat
            nxt = labels[labels]
            if np.array_equal(nxt, labels):
                break
            labels = nxt
        a, b = a[differ], b[differ]


def clusters_from_labels(labels: np.ndarray) -> list[list[int]]:
    """Groups of two or more nodes sharing a label, each sorted, ordered by their first node."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    groups = np.split(order, starts[1:])
    return [g.tolist() for g in groups if len(g) > 1]


def bucket_pairs(keys: np.ndarray, max_bucket: int = 256) -> np.ndarray:
    """All pairs (i, j), i < j, of positions whose keys are equal, as an int64 array [m, 2].

    A bucket larger than max_bucket (e.g. thousands of copies of a boilerplate page) contributes only the
    pairs of its first member with every other one: quadratic pairs would swamp memory, and the star is
    enough to put the whole bucket in one component.
    """
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    n = len(k)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    sizes = np.diff(np.r_[starts, n])
    pos = np.arange(n) - np.repeat(starts, sizes)  # position within its bucket
    size_of = np.repeat(sizes, sizes)
    small = size_of <= max_bucket
    # small buckets: element at position p pairs with the size-1-p elements after it
    counts = np.where(small, size_of - 1 - pos, 0)
    left = np.repeat(np.arange(n), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    right = left + 1 + within
    # big buckets: a star from the first member
    big = ~small & (pos > 0)
    star_right = np.flatnonzero(big)
    star_left = star_right - pos[star_right]
    i = order[np.r_[left, star_left]]
    j = order[np.r_[right, star_right]]
    out = np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1).astype(np.int64)
    return out


def unique_pairs(pairs: np.ndarray, n: int) -> np.ndarray:
    """Distinct rows of an [m, 2] pair array with i < j, sorted."""
    if len(pairs) == 0:
        return pairs.reshape(0, 2).astype(np.int64)
    code = np.unique(pairs[:, 0] * np.int64(n) + pairs[:, 1])
    return np.stack([code // n, code % n], axis=1)


@dataclass
class NearDuplicates:
    """What near-duplicate search found: verified pairs, their similarity, and the clusters they form."""

    n: int
    pairs: np.ndarray  # [m, 2] int64, i < j
    similarity: np.ndarray  # [m] the similarity the pair was verified with (estimate, exact, or nan)
    candidates: int  # pairs before verification
    labels: np.ndarray = field(init=False)  # component label = index of the first document of the cluster

    def __post_init__(self) -> None:
        self.labels = connected_components(self.n, self.pairs)

    @property
    def clusters(self) -> list[list[int]]:
        """Groups of 2+ near-duplicate documents (indices in input order), each sorted."""
        return clusters_from_labels(self.labels)

    @property
    def keep(self) -> np.ndarray:
        """Boolean mask of the documents to keep: the first of each cluster and every singleton."""
        return self.labels == np.arange(self.n)


class NearDuplicateFilter(ABC):
    """Base of the near-duplicate pipeline blocks: `run(docs)` yields the documents to keep.

    The whole input is read before the first document is yielded (duplicates are found among all of
    them). Clusters are connected components of verified pairs; the first document of each cluster in
    input order is kept. After `run`, `stats` holds counts and `clusters` the groups of document ids.
    """

    name = "near-duplicate"

    def __init__(self) -> None:
        self.stats: dict[str, int] = {}
        self.clusters: list[list[str]] = []

    @abstractmethod
    def find(self, texts: Sequence[str]) -> NearDuplicates:
        """The near-duplicate pairs and clusters of texts (in input order)."""

    def run(self, docs: Iterable[dict]) -> Iterator[dict]:
        docs = list(docs)
        for d in docs:
            if not isinstance(d.get("text"), str):
                raise DataError(f"document {d.get('id')!r} has no 'text' string; every document needs one")
        found = self.find([d["text"] for d in docs])
        keep = found.keep
        self.clusters = [[docs[i]["id"] for i in c] for c in found.clusters]
        self.stats = {
            "documents_in": len(docs),
            "candidate_pairs": found.candidates,
            "duplicate_pairs": len(found.pairs),
            "clusters": len(self.clusters),
            "removed": int((~keep).sum()),
            "documents_out": int(keep.sum()),
        }
        log.info("%s dedup: %s", self.name, self.stats)
        return (d for d, k in zip(docs, keep, strict=True) if k)
