"""Semantic dedup (SemDeDup-style): documents that say the same thing in other words.

Each document becomes a TF-IDF vector over hashed word unigrams and bigrams (sublinear counts,
smoothed idf, rows L2-normalized) and, for clustering, an embedding: that vector reduced by a truncated
SVD (latent semantic analysis) to `dim` dimensions and normalized again. Spherical k-means on the
embeddings splits the corpus into clusters of about `cluster_size` documents; within each cluster
every pair whose TF-IDF cosine is >= `threshold` is a duplicate pair (the SVD's few dimensions put
whole topics close together, too close to tell a paraphrase from a neighbour), pairs join into groups (connected components), and the first
document of each group in corpus order is kept, as the other dedup blocks do. Clustering keeps the
pairwise work near-linear in the corpus; a pair split across two clusters is missed (SemDeDup's trade).

The per-shard keys are the documents' hashed feature ids, one sentinel after each document; idf, SVD
and k-means need the whole corpus, so they run in `decide`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from danlu.data.block import GlobalBlock, Stats, split_per_shard
from danlu.data.dedup.clusters import NearDuplicates
from danlu.data.dedup.shingles import _fold, word_hashes
from danlu.data.sources import Document
from danlu.errors import ConfigError, MissingExtra

log = logging.getLogger(__name__)

BUCKETS = 1 << 20
_END = np.uint32(0xFFFFFFFF)  # after each document's feature ids (a bucket id is < BUCKETS)


def feature_ids(texts: Sequence[str]) -> np.ndarray:
    """The hashed unigram and bigram ids of each text's lowercased words, each text followed by _END."""
    parts = []
    for t in texts:
        words = word_hashes(t.lower())
        grams = np.concatenate([words, _fold(words, 2)]) if len(words) > 1 else words
        parts += [(grams % np.uint64(BUCKETS)).astype(np.uint32), np.array([_END], np.uint32)]
    return np.concatenate(parts) if parts else np.empty(0, np.uint32)


def tfidf(ids: np.ndarray):
    """CSR matrix [documents, BUCKETS] of the documents in `ids` (see feature_ids), rows L2-normalized."""
    try:
        from scipy.sparse import csr_matrix
    except ImportError:
        raise MissingExtra("semantic_dedup needs the scipy package: pip install 'danlu[data]'") from None
    end = ids == _END
    n = int(end.sum())
    doc = np.cumsum(end) - end  # the document each id belongs to
    x = csr_matrix((np.ones(int((~end).sum())), (doc[~end], ids[~end].astype(np.int64))), shape=(n, BUCKETS))
    x.sum_duplicates()
    x.data = 1.0 + np.log(x.data)
    df = np.bincount(x.indices, minlength=BUCKETS)
    x.data *= (np.log((1.0 + n) / (1.0 + df)) + 1.0)[x.indices]
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    x.data /= np.repeat(np.where(norms > 0, norms, 1.0), np.diff(x.indptr))
    return x


def _normalize(e: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.where(norms > 0, norms, 1.0)


def embed(x, dim: int, seed: int = 0, power_iterations: int = 2) -> np.ndarray:
    """LSA embeddings [documents, <= dim] of a TF-IDF matrix, rows L2-normalized.

    A randomized truncated SVD (Halko, Martinsson and Tropp 2011: a Gaussian sketch of the range, power
    iterations, then the exact SVD of the small projected matrix), over the columns that occur in two
    documents or more (a feature of one document says nothing about which documents are alike).
    """
    x = x[:, np.flatnonzero(np.bincount(x.indices, minlength=x.shape[1]) >= 2)]
    k = min(dim, *x.shape)
    if k < 1:
        return np.zeros((x.shape[0], 1), np.float32)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(x @ rng.standard_normal((x.shape[1], min(k + 10, x.shape[1]))))
    for _ in range(power_iterations):
        q, _ = np.linalg.qr(x @ np.asarray(x.T @ q))
    z = np.asarray(x.T @ q)  # B = z.T is the projected matrix; only its left singular vectors matter
    evals, u = np.linalg.eigh(z.T @ z)  # B B^T = U S^2 U^T: a small eigenproblem, not B's wide SVD
    top = np.argsort(evals)[::-1][:k]
    return _normalize((q @ u[:, top]) * np.sqrt(np.clip(evals[top], 0, None)))


def spherical_kmeans(e: np.ndarray, k: int, seed: int = 0, iterations: int = 20) -> np.ndarray:
    """Cluster of each unit row of e: k-means++ seeding, then assign by largest cosine and re-center."""
    n = len(e)
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, np.int64)
    rng = np.random.default_rng(seed)
    centers = [int(rng.integers(n))]
    dist = 1.0 - e @ e[centers[0]]
    for _ in range(k - 1):
        p = np.clip(dist, 0, None) ** 2
        nxt = int(rng.choice(n, p=p / p.sum())) if p.sum() > 0 else int(rng.integers(n))
        centers.append(nxt)
        dist = np.minimum(dist, 1.0 - e @ e[nxt])
    c = e[centers].copy()
    labels = np.full(n, -1, np.int64)
    for _ in range(iterations):
        new = np.argmax(e @ c.T, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = e[labels == j]
            if len(members):
                c[j] = _normalize(members.sum(axis=0, keepdims=True))[0]
    return labels


def pairs_within_clusters(x, labels: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(pairs [m, 2] with i < j, their cosine) of rows of the row-normalized matrix x (dense or sparse)
    that share a cluster and have cosine >= threshold."""
    out, sims = [], []
    for j in np.unique(labels):
        idx = np.flatnonzero(labels == j)
        for start in range(0, len(idx), 2048):  # rows in chunks: a big cluster stays in memory bounds
            rows = idx[start : start + 2048]
            s = x[rows] @ x[idx].T
            s = s.toarray() if hasattr(s, "toarray") else s
            a, b = np.nonzero(s >= threshold)
            keep = idx[b] > rows[a]
            out.append(np.stack([rows[a[keep]], idx[b[keep]]], axis=1))
            sims.append(s[a[keep], b[keep]])
    if not out:
        return np.empty((0, 2), np.int64), np.empty(0, np.float32)
    return np.concatenate(out).astype(np.int64), np.concatenate(sims)


def semantic_duplicates(
    texts_or_ids: Sequence[str] | np.ndarray,
    threshold: float = 0.7,
    dim: int = 64,
    cluster_size: int = 500,
    seed: int = 0,
) -> tuple[NearDuplicates, np.ndarray]:
    """(the duplicate pairs and groups, each document's k-means cluster) of texts or their feature ids."""
    ids = feature_ids(texts_or_ids) if not isinstance(texts_or_ids, np.ndarray) else texts_or_ids
    x = tfidf(ids)
    labels = spherical_kmeans(embed(x, dim, seed), round(x.shape[0] / cluster_size), seed)
    pairs, sims = pairs_within_clusters(x, labels, threshold)
    return NearDuplicates(n=x.shape[0], pairs=pairs, similarity=sims, candidates=len(pairs)), labels


class SemanticDedupBlock(GlobalBlock):
    """Pipeline block `semantic_dedup`: drops documents whose LSA embedding is within `threshold` cosine
    of an earlier document's in the same k-means cluster. A kept document's meta holds its cluster and,
    where it stands for a group, how many documents were dropped as its duplicates."""

    name = "semantic_dedup"
    reason = "semantic_duplicate"
    reasons = ("semantic_duplicate",)

    def __init__(self, threshold: float = 0.7, dim: int = 64, cluster_size: int = 500, seed: int = 0) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"semantic_dedup: threshold must be in (0, 1], got {threshold}")
        if dim < 1 or cluster_size < 1:
            raise ConfigError(f"semantic_dedup: dim and cluster_size must be >= 1, got {dim}, {cluster_size}")
        self.threshold, self.dim, self.cluster_size, self.seed = threshold, dim, cluster_size, seed

    def keys(self, texts: Sequence[str]) -> np.ndarray:
        return feature_ids(texts)

    def decide(self, keys: Sequence[np.ndarray]) -> list[np.ndarray]:
        ids = np.concatenate(keys) if keys else np.empty(0, np.uint32)
        found, clusters = semantic_duplicates(ids, self.threshold, self.dim, self.cluster_size, self.seed)
        dropped = Counter(found.labels[~found.keep].tolist())
        out = np.zeros(
            found.n, dtype=[("keep", bool), ("semantic_cluster", np.int64), ("semantic_duplicates", np.int64)]
        )
        out["keep"], out["semantic_cluster"] = found.keep, clusters
        out["semantic_duplicates"][list(dropped)] = list(dropped.values())
        log.info(
            "semantic_dedup: %d groups, %d documents dropped", len(found.clusters), int((~found.keep).sum())
        )
        per_doc = [int((k == _END).sum()) for k in keys]
        return split_per_shard(out, [np.empty(n) for n in per_doc])

    def apply(
        self, docs: Iterable[Document], decision: np.ndarray, stats: Stats, by_source: Counter[str]
    ) -> Iterator[Document]:
        groups = int((decision["semantic_duplicates"] > 0).sum())
        stats.counts.update(groups=groups)
        yield from super().apply(docs, decision, stats, by_source)
