"""MinHash signatures and LSH banding: near-duplicate documents by estimated Jaccard similarity.

Signatures follow datasketch's permutation schemes exactly (same seed -> same permutations -> the same
values as `datasketch.MinHash` fed the same 32-bit shingle hashes):
  "affine32" (datasketch >= 2.0 default): h' = fmix32(h); phv_k = a_k * h' + b_k mod 2^32, a_k odd.
      A bijection per permutation, so no extra collisions; uint32 arithmetic is also the fastest.
  "legacy"  (datasketch < 2.0): phv_k = ((a_k * h + b_k) mod (2^61 - 1)) & (2^32 - 1), computed in
      wrapping uint64 like datasketch (so bit-for-bit equal, overflow included).
The signature of a document is min_k over its shingles, one column per permutation. Work is vectorized
per permutation over all shingles of a batch of documents, with `np.minimum.reduceat` per document.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from danlu.data.dedup.clusters import NearDuplicateFilter, NearDuplicates, bucket_pairs, unique_pairs
from danlu.data.dedup.shingles import ShingleHasher, Shingling, fmix32, fmix64, jaccard, shingle_hashes
from danlu.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMES = ("affine32", "legacy")
_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64((1 << 32) - 1)
_EMPTY = np.uint32(0xFFFFFFFF)  # the signature of a text without shingles (datasketch's initial value)
_BATCH_SHINGLES = 1 << 20  # shingles per vectorized batch: ~4 MB per temporary


def permutations(num_perm: int, seed: int = 1, scheme: str = "affine32") -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the num_perm hash permutations, drawn exactly as datasketch.MinHash draws them."""
    if scheme not in SCHEMES:
        raise ConfigError(f"minhash scheme must be one of {SCHEMES}, got {scheme!r}")
    if num_perm < 1:
        raise ConfigError(f"num_perm must be >= 1, got {num_perm}")
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        ab = np.array(
            [
                (gen.randint(1, _MERSENNE, dtype=np.uint64), gen.randint(0, _MERSENNE, dtype=np.uint64))
                for _ in range(num_perm)
            ],
            dtype=np.uint64,
        ).T
        return ab[0], ab[1]
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)  # odd: bijective
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _signatures_flat(
    flat: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray, scheme: str
) -> np.ndarray:
    """Signatures of documents whose shingle hashes lie back to back in `flat`, counts[i] for doc i."""
    num_perm = len(a)
    sig = np.full((len(counts), num_perm), _EMPTY, dtype=np.uint32)
    ends = np.cumsum(counts)
    start = 0
    while start < len(counts):
        # a batch of documents holding about _BATCH_SHINGLES shingles (at least one document)
        base = ends[start - 1] if start else 0
        stop = start + max(1, int(np.searchsorted(ends[start:] - base, _BATCH_SHINGLES, side="right")))
        rows = start + np.flatnonzero(counts[start:stop] > 0)
        if len(rows):
            chunk = flat[base : ends[stop - 1]].astype(np.uint32, copy=False)
            offsets = np.r_[0, np.cumsum(counts[rows])[:-1]]
            if scheme == "legacy":
                x = chunk.astype(np.uint64)
                for k in range(num_perm):
                    v = x * a[k]  # wraps mod 2^64 exactly like datasketch's uint64 arithmetic
                    v += b[k]
                    v %= _MERSENNE
                    v &= _MAX32
                    sig[rows, k] = np.minimum.reduceat(v, offsets)
            else:
                x = fmix32(chunk)
                v = np.empty_like(x)
                for k in range(num_perm):
                    np.multiply(x, a[k], out=v)
                    v += b[k]
                    sig[rows, k] = np.minimum.reduceat(v, offsets)
        start = stop
    return sig


def signatures_from_hashes(
    hashes: Sequence[np.ndarray], num_perm: int = 128, seed: int = 1, scheme: str = "affine32"
) -> np.ndarray:
    """MinHash signatures [len(hashes), num_perm] (uint32) of documents given as 32-bit shingle hashes."""
    a, b = permutations(num_perm, seed, scheme)
    counts = np.array([len(h) for h in hashes], dtype=np.int64)
    flat = np.concatenate(hashes).astype(np.uint32) if len(hashes) else np.empty(0, np.uint32)
    return _signatures_flat(flat, counts, a, b, scheme)


def minhash_signatures(
    texts: Iterable[str],
    num_perm: int = 128,
    seed: int = 1,
    shingling: Shingling | None = None,
    scheme: str = "affine32",
    batch_docs: int = 4096,
) -> np.ndarray:
    """MinHash signatures [n, num_perm] (uint32) of texts, shingled as `shingling` says (word 5-grams)."""
    a, b = permutations(num_perm, seed, scheme)
    hasher = ShingleHasher(shingling)
    texts = list(texts)
    out = [np.empty((0, num_perm), dtype=np.uint32)]
    for lo in range(0, len(texts), batch_docs):
        flat, counts = hasher.batch(texts[lo : lo + batch_docs])
        out.append(_signatures_flat(flat, counts, a, b, scheme))
    return np.concatenate(out)


def estimated_jaccard(sig: np.ndarray, pairs: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Fraction of equal signature columns of each pair: the MinHash estimate of their Jaccard."""
    out = np.empty(len(pairs), dtype=np.float64)
    for s in range(0, len(pairs), chunk):
        p = pairs[s : s + chunk]
        out[s : s + chunk] = (sig[p[:, 0]] == sig[p[:, 1]]).mean(axis=1)
    return out


# --- LSH ------------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def optimal_bands(
    threshold: float,
    num_perm: int,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> tuple[int, int]:
    """(bands b, rows r), b*r <= num_perm, minimizing the weighted false positive + negative probability.

    The same objective as datasketch's `_optimal_param`: a pair of similarity s becomes a candidate with
    probability P(s) = 1 - (1 - s^r)^b; FP = integral_0^t P(s) ds, FN = integral_t^1 (1 - P(s)) ds.
    P is a polynomial of degree r*b <= num_perm, so Gauss-Legendre with num_perm/2 + 2 nodes integrates
    it exactly; every (b, r) is evaluated at once.
    """
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"LSH threshold must be in (0, 1), got {threshold}")
    if num_perm < 2:
        raise ConfigError(f"num_perm must be >= 2 for LSH, got {num_perm}")
    bs, rs = zip(*[(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], strict=True)
    b = np.array(bs, dtype=np.float64)[:, None]
    r = np.array(rs, dtype=np.float64)[:, None]
    x, w = np.polynomial.legendre.leggauss(num_perm // 2 + 2)

    def integral(lo: float, hi: float, f) -> np.ndarray:
        s = (hi - lo) / 2 * x + (hi + lo) / 2
        return (f(s[None, :]) * w).sum(axis=1) * (hi - lo) / 2

    fp = integral(0.0, threshold, lambda s: 1 - (1 - s**r) ** b)
    fn = integral(threshold, 1.0, lambda s: (1 - s**r) ** b)
    # first minimum in (b, r) order, as datasketch's strict-< scan picks it
    best = int(np.argmin(fp * false_positive_weight + fn * false_negative_weight))
    return int(bs[best]), int(rs[best])


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[bands, n] 64-bit keys: band i of a signature hashed. Equal bands give equal keys; a collision of
    unequal ones has probability ~2^-64 and at worst adds a candidate that verification rejects."""
    if bands * rows > sig.shape[1]:
        raise ConfigError(f"{bands} bands x {rows} rows exceed the {sig.shape[1]} signature columns")
    keys = np.empty((bands, sig.shape[0]), dtype=np.uint64)
    mult = np.uint64(0x9E3779B97F4A7C15)
    for i in range(bands):
        h = np.full(sig.shape[0], np.uint64(i), dtype=np.uint64)
        for c in range(i * rows, (i + 1) * rows):
            h *= mult
            h += sig[:, c].astype(np.uint64)
        keys[i] = fmix64(h)
    return keys


def lsh_candidate_pairs(sig: np.ndarray, bands: int, rows: int, max_bucket: int = 256) -> np.ndarray:
    """Distinct pairs (i < j) of documents that share at least one band: the LSH candidates."""
    n = sig.shape[0]
    keys = band_keys(sig, bands, rows)
    pairs = [bucket_pairs(keys[i], max_bucket) for i in range(bands)]
    return unique_pairs(np.concatenate(pairs) if pairs else np.empty((0, 2), np.int64), n)


VERIFY = ("none", "minhash", "exact")


def minhash_near_duplicates(
    texts: Sequence[str],
    threshold: float = 0.8,
    num_perm: int = 128,
    shingling: Shingling | None = None,
    seed: int = 1,
    verify: str = "minhash",
    bands: tuple[int, int] | None = None,
    scheme: str = "affine32",
    max_bucket: int = 256,
) -> NearDuplicates:
    """Near-duplicate pairs and clusters of texts by MinHash-LSH.

    verify: "minhash" keeps candidates whose estimated Jaccard >= threshold, "exact" those whose exact
    shingle-set Jaccard is (precise, costs a set intersection per candidate), "none" keeps all candidates.
    bands: (b, r) to override optimal_bands(threshold, num_perm).
    """
    if verify not in VERIFY:
        raise ConfigError(f"verify must be one of {VERIFY}, got {verify!r}")
    hashes = shingle_hashes(texts, shingling)
    sig = signatures_from_hashes(hashes, num_perm, seed, scheme)
    b, r = bands or optimal_bands(threshold, num_perm)
    cand = lsh_candidate_pairs(sig, b, r, max_bucket)
    if verify == "minhash":
        sim = estimated_jaccard(sig, cand)
    elif verify == "exact":
        sets = {int(i): np.unique(hashes[i]) for i in np.unique(cand)}
        sim = np.array([jaccard(sets[int(i)], sets[int(j)]) for i, j in cand], dtype=np.float64)
    else:
        sim = np.full(len(cand), np.nan)
    ok = np.ones(len(cand), dtype=bool) if verify == "none" else sim >= threshold
    log.debug(
        "minhash-lsh: %d docs, b=%d r=%d, %d candidates, %d verified", len(texts), b, r, len(cand), ok.sum()
    )
    return NearDuplicates(n=len(texts), pairs=cand[ok], similarity=sim[ok], candidates=len(cand))


class MinHashDedup(NearDuplicateFilter):
    """Pipeline block: drops every document that is a near-duplicate (by MinHash-LSH) of an earlier one.

    Options as `minhash_near_duplicates`; see `NearDuplicateFilter` for what `run` keeps and reports.
    """

    name = "minhash"

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 128,
        shingling: Shingling | None = None,
        seed: int = 1,
        verify: str = "minhash",
        bands: tuple[int, int] | None = None,
        scheme: str = "affine32",
    ) -> None:
        super().__init__()
        if verify not in VERIFY:
            raise ConfigError(f"verify must be one of {VERIFY}, got {verify!r}")
        self.options: dict[str, Any] = dict(
            threshold=threshold,
            num_perm=num_perm,
            shingling=shingling or Shingling(),
            seed=seed,
            verify=verify,
            bands=bands or optimal_bands(threshold, num_perm),  # validates threshold and num_perm now
            scheme=scheme,
        )

    def find(self, texts: Sequence[str]) -> NearDuplicates:
        return minhash_near_duplicates(texts, **self.options)
