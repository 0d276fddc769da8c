"""Suffix arrays and LCP arrays of byte strings.

Backends: "divsufsort" (the `pydivsufsort` package: libdivsufsort's O(n log n) construction and Kasai's
LCP in C; tens of MB per second) and "numpy" (prefix doubling, O(n log^2 n) with vectorized sorts; the
LCP comes from the doubling's rank tables by binary lifting). "auto" picks divsufsort when installed.
Conventions: sa[i] is the start of the i-th smallest suffix; lcp[i] is the length of the longest common
prefix of the suffixes at sa[i-1] and sa[i], and lcp[0] = 0.
"""

from __future__ import annotations

import importlib.util
import logging

import numpy as np

from danlu.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "divsufsort", "numpy")


def _as_bytes_array(data: bytes | bytearray | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise DataError(f"suffix arrays take a 1-D uint8 array or bytes, got {data.dtype} {data.shape}")
        return data
    if isinstance(data, bytes | bytearray):
        return np.frombuffer(data, dtype=np.uint8)
    raise DataError(
        f"suffix arrays take bytes or a uint8 array, got {type(data).__name__}; encode text first"
    )


def _backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"suffix array backend must be one of {BACKENDS}, got {backend!r}")
    have = importlib.util.find_spec("pydivsufsort") is not None
    if backend == "divsufsort" and not have:
        raise ConfigError("backend 'divsufsort' needs the pydivsufsort package: pip install pydivsufsort")
    if backend == "auto":
        return "divsufsort" if have else "numpy"
    return backend


def _doubling(s: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Prefix doubling. Returns the suffix array and ranks[j]: the rank of each position's 2^j-byte
    prefix (prefixes cut short by the end of the string rank as if padded with a byte below 0), which
    stops at the first level where all ranks are distinct."""
    n = len(s)
    rank = s.astype(np.int64)
    ranks = [rank.astype(np.int32)]
    sa = np.argsort(rank, kind="stable")
    if n <= 1:
        return sa, ranks
    distinct = int(np.count_nonzero(np.diff(rank[sa]))) + 1
    k = 1
    while distinct < n:
        second = np.full(n, -1, dtype=np.int64)
        second[: n - k] = rank[k:]
        base = int(rank.max()) + 2  # second + 1 lies in [0, max rank + 1]
        key = rank * base + (second + 1)  # < (n + 256)^2: no int64 overflow below n ~ 3e9
        sa = np.argsort(key, kind="stable")
        sorted_key = key[sa]
        new_group = np.r_[False, sorted_key[1:] != sorted_key[:-1]]
        rank = np.empty(n, dtype=np.int64)
        rank[sa] = np.cumsum(new_group)
        distinct = int(rank.max()) + 1
        ranks.append(rank.astype(np.int32))
        k *= 2
    return sa, ranks


def _lcp_from_ranks(sa: np.ndarray, ranks: list[np.ndarray]) -> np.ndarray:
    """LCP of adjacent suffixes by binary lifting: equal 2^j-prefix ranks mean 2^j more equal bytes."""
    n = len(sa)
    lcp = np.zeros(n, dtype=np.int64)
    if n < 2:
        return lcp
    p, q = sa[:-1].astype(np.int64), sa[1:].astype(np.int64)
    length = np.zeros(n - 1, dtype=np.int64)
    # all ranks are distinct at the top level, so every LCP is < 2^top: the levels below sum to it
    for j in range(len(ranks) - 2, -1, -1):
        a, b = p + length, q + length
        ok = (a < n) & (b < n)
        ok[ok] = ranks[j][a[ok]] == ranks[j][b[ok]]
        length += ok.astype(np.int64) << j
    lcp[1:] = length
    return lcp


def suffix_array(data: bytes | bytearray | np.ndarray, backend: str = "auto") -> np.ndarray:
    """The suffix array of a byte string (int64)."""
    s = _as_bytes_array(data)
    if len(s) == 0:
        return np.empty(0, dtype=np.int64)
    if _backend(backend) == "divsufsort":
        from pydivsufsort import divsufsort

        return divsufsort(np.ascontiguousarray(s).copy() if not s.flags.writeable else s).astype(np.int64)
    return _doubling(s)[0]


def suffix_array_lcp(
    data: bytes | bytearray | np.ndarray, backend: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """(suffix array, LCP array) of a byte string, both int64."""
    s = _as_bytes_array(data)
    if len(s) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    if _backend(backend) == "divsufsort":
        from pydivsufsort import divsufsort, kasai

        if (
            not s.flags.writeable
        ):  # pydivsufsort hands the buffer to C through ctypes, which wants it writable
            s = s.copy()
        sa = divsufsort(s)
        following = kasai(s, sa)  # its lcp[i] pairs sa[i] with sa[i+1]; shift to pair sa[i-1] with sa[i]
        lcp = np.empty(len(s), dtype=np.int64)
        lcp[0] = 0
        lcp[1:] = following[:-1]
        del following  # large corpora: free each array before the next widens
        return sa.astype(np.int64, copy=False), lcp
    sa, ranks = _doubling(s)
    return sa, _lcp_from_ranks(sa, ranks)


def lcp_array(data: bytes | bytearray | np.ndarray, sa: np.ndarray) -> np.ndarray:
    """Kasai's LCP array of a byte string and its suffix array (O(n) Python loop: small inputs only;
    use suffix_array_lcp for large ones)."""
    s = _as_bytes_array(data).tobytes()
    n = len(s)
    rank = np.empty(n, dtype=np.int64)
    rank[sa] = np.arange(n)
    lcp = np.zeros(n, dtype=np.int64)
    h = 0
    for i in range(n):  # h drops by at most one from suffix i to i+1: O(n) comparisons in all
        r = rank[i]
        if r == 0:
            h = 0
            continue
        j = sa[r - 1]
        while i + h < n and j + h < n and s[i + h] == s[j + h]:
            h += 1
        lcp[r] = h
        if h:
            h -= 1
    return lcp
