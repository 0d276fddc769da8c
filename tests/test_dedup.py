"""Near-duplicate and substring dedup: MinHash (vs datasketch), LSH, SimHash, suffix arrays, blocks."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.data.dedup import (
    MinHashDedup,
    Shingling,
    SimHashDedup,
    SubstringDedup,
    connected_components,
    jaccard,
    lcp_array,
    minhash_near_duplicates,
    minhash_signatures,
    optimal_bands,
    remove_repeated_substrings,
    shingle_hashes,
    signatures_from_hashes,
    simhash,
    simhash_near_duplicates,
    suffix_array,
    suffix_array_lcp,
)
from danlu.data.dedup.clusters import bucket_pairs
from danlu.data.dedup.shingles import ShingleHasher, jaccard_matrix
from danlu.data.dedup.simhash import hamming, simhash_candidate_pairs
from danlu.errors import ConfigError, DataError

VOCAB = [f"w{i}" for i in range(5000)]


def random_doc(rng: random.Random, n_words: int = 200) -> list[str]:
    return [rng.choice(VOCAB) for _ in range(n_words)]


def perturb(words: list[str], rate: float, rng: random.Random) -> list[str]:
    """Replace a fraction `rate` of the words by fresh random ones."""
    out = list(words)
    for i in rng.sample(range(len(out)), round(rate * len(out))):
        out[i] = rng.choice(VOCAB)
    return out


def docs_of(texts: list[str]) -> list[dict]:
    return [{"id": f"d{i}", "text": t, "source": "test", "meta": {}} for i, t in enumerate(texts)]


# --- shingles -------------------------------------------------------------------------------------


def test_word_shingles_are_the_distinct_n_grams():
    h = ShingleHasher(Shingling("word", 3))
    # "a b c a b c a" has 5 trigrams, 3 of them distinct (abc, bca, cab)
    assert len(h("a b c a b c a")) == 5
    assert len(np.unique(h("a b c a b c a"))) == 3
    # case, punctuation and spacing do not change word shingles
    assert np.array_equal(h("The cat, sat. On"), h("the  CAT sat on"))
    assert len(h("one two")) == 1  # shorter than n: one shingle of everything
    assert len(h("")) == 0
    assert not np.array_equal(h("a b c"), h("c b a"))


def test_char_shingles_fold_whitespace():
    h = ShingleHasher(Shingling("char", 4))
    assert len(h("abcdef")) == 3
    assert np.array_equal(h("ab  cd\nef"), h("ab cd ef"))
    assert len(np.unique(h("ééééé"))) == 1  # code points, not bytes


def test_bad_shingling_raises():
    with pytest.raises(ConfigError, match="kind"):
        Shingling("line", 3)
    with pytest.raises(ConfigError, match="n must be"):
        Shingling("word", 0)


# --- MinHash --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_signatures_equal_datasketch(scheme):
    datasketch = pytest.importorskip("datasketch")
    rng = random.Random(0)
    texts = [" ".join(random_doc(rng, rng.randint(1, 80))) for _ in range(12)] + [""]
    hashes = shingle_hashes(texts, Shingling("word", 3))
    ours = signatures_from_hashes(hashes, num_perm=64, seed=7, scheme=scheme)
    for h, row in zip(hashes, ours, strict=True):
        m = datasketch.MinHash(num_perm=64, seed=7, hashfunc=lambda v: v, scheme=scheme)
        m.update_batch([int(v) for v in h])
        assert np.array_equal(m.hashvalues.astype(np.uint64), row.astype(np.uint64))


def test_jaccard_estimate_within_three_standard_errors():
    rng = random.Random(1)
    num_perm = 256
    for target in (0.1, 0.3, 0.5, 0.7, 0.9):
        base = random_doc(rng, 400)
        # replacing a fraction of words of a doc with distinct words gives roughly the target overlap
        other = perturb(base, 1 - target, rng)
        a, b = shingle_hashes([" ".join(base), " ".join(other)], Shingling("word", 1))
        exact = jaccard(a, b)
        sig = signatures_from_hashes([a, b], num_perm=num_perm, seed=3)
        est = float((sig[0] == sig[1]).mean())
        se = math.sqrt(exact * (1 - exact) / num_perm)
        assert abs(est - exact) <= 3 * se + 1e-9, (target, exact, est)


def test_identical_and_disjoint_texts():
    sig = minhash_signatures(["a b c d e f g", "a b c d e f g", "h i j k l m n"], num_perm=32)
    assert np.array_equal(sig[0], sig[1])
    assert (sig[0] == sig[2]).mean() < 0.2
    assert np.all(minhash_signatures([""], num_perm=8) == 0xFFFFFFFF)


def test_bad_scheme_raises():
    with pytest.raises(ConfigError, match="scheme"):
        minhash_signatures(["x"], scheme="sha1")


# --- LSH ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_perm", [16, 64, 128, 256])
def test_optimal_bands_equal_datasketch(num_perm):
    datasketch = pytest.importorskip("datasketch")
    from datasketch.lsh import _optimal_param

    for threshold in (0.1, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):
        expected = _optimal_param(threshold, num_perm, 0.5, 0.5)
        if expected[0] >= 2:  # MinHashLSH refuses a single band; the search is the same function
            lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm)
            assert (lsh.b, lsh.r) == expected
        assert optimal_bands(threshold, num_perm) == expected, threshold
    assert optimal_bands(0.8, num_perm, 0.2, 0.8) == _optimal_param(0.8, num_perm, 0.2, 0.8)


def test_optimal_bands_rejects_bad_threshold():
    with pytest.raises(ConfigError, match="threshold"):
        optimal_bands(1.0, 128)


def test_lsh_recall_on_planted_near_duplicates():
    rng = random.Random(2)
    bases = [random_doc(rng, 150) for _ in range(200)]
    texts = [" ".join(b) for b in bases]
    planted = []
    for i in range(0, 200, 2):  # one near-copy of every other base: ~2% of words changed
        texts.append(" ".join(perturb(bases[i], 0.01, rng)))
        planted.append((i, len(texts) - 1))
    found = minhash_near_duplicates(texts, threshold=0.8, shingling=Shingling("word", 3))
    hashes = shingle_hashes(texts, Shingling("word", 3))
    truth = {(i, j) for i, j in planted if jaccard(hashes[i], hashes[j]) >= 0.8}
    assert len(truth) >= 90
    got = {tuple(p) for p in found.pairs.tolist()}
    assert len(truth & got) / len(truth) >= 0.95
    # unrelated random documents share almost no 3-grams: every found pair is a planted one
    assert got <= set(planted)


def test_minhash_dedup_keeps_first_of_each_cluster():
    rng = random.Random(3)
    a, b = random_doc(rng), random_doc(rng)
    texts = [" ".join(a), " ".join(b), " ".join(a[:-1]), " ".join(a), "short unrelated text here"]
    block = MinHashDedup(threshold=0.8)
    kept = list(block.run(docs_of(texts)))
    assert [d["id"] for d in kept] == ["d0", "d1", "d4"]
    assert block.clusters == [["d0", "d2", "d3"]]
    assert block.stats["removed"] == 2 and block.stats["clusters"] == 1


def test_minhash_exact_verification_matches_exact_jaccard():
    rng = random.Random(4)
    base = random_doc(rng, 300)
    texts = [" ".join(base)] + [" ".join(perturb(base, r, rng)) for r in (0.005, 0.02, 0.1, 0.3)]
    found = minhash_near_duplicates(texts, threshold=0.7, shingling=Shingling("word", 2), verify="exact")
    hashes = shingle_hashes(texts, Shingling("word", 2))
    for (i, j), s in zip(found.pairs.tolist(), found.similarity, strict=True):
        assert s == pytest.approx(jaccard(hashes[i], hashes[j])) and s >= 0.7


def test_block_rejects_documents_without_text():
    with pytest.raises(DataError, match="text"):
        list(MinHashDedup().run([{"id": "x", "source": "s", "meta": {}}]))


# --- clusters -------------------------------------------------------------------------------------


def naive_components(n: int, pairs: list[tuple[int, int]]) -> list[int]:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for i, j in pairs:
        ri, rj = find(i), find(j)
        parent[max(ri, rj)] = min(ri, rj)
    return [min(k for k in range(n) if find(k) == find(i)) for i in range(n)]


@given(
    st.integers(1, 30).flatmap(
        lambda n: st.tuples(
            st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=40)
        )
    )
)
@settings(max_examples=100, deadline=None)
def test_connected_components_match_union_find(case):
    n, pairs = case
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    assert connected_components(n, arr).tolist() == naive_components(n, pairs)


@given(st.lists(st.integers(0, 5), max_size=40), st.integers(2, 6))
@settings(max_examples=100, deadline=None)
def test_bucket_pairs(keys, max_bucket):
    keys_arr = np.array(keys, dtype=np.int64)
    got = {tuple(p) for p in bucket_pairs(keys_arr, max_bucket).tolist()}
    for key in set(keys):
        members = [i for i, k in enumerate(keys) if k == key]
        if len(members) <= max_bucket:
            expected = {(i, j) for i in members for j in members if i < j}
        else:
            expected = {(members[0], j) for j in members[1:]}
        assert {p for p in got if keys[p[0]] == key} == expected


# --- SimHash --------------------------------------------------------------------------------------


fingerprints = st.integers(0, 2**64 - 1)


@given(fingerprints, fingerprints, fingerprints)
def test_hamming_is_a_metric(a, b, c):
    x, y, z = (np.array([v], dtype=np.uint64) for v in (a, b, c))
    assert hamming(x, y)[0] == bin(a ^ b).count("1") == hamming(y, x)[0]
    assert hamming(x, x)[0] == 0
    assert hamming(x, z)[0] <= hamming(x, y)[0] + hamming(y, z)[0]


@given(
    st.lists(fingerprints, min_size=1, max_size=8),
    st.lists(st.tuples(st.integers(0, 7), st.sets(st.integers(0, 63), max_size=5)), max_size=12),
    st.integers(0, 4),
)
@settings(max_examples=150, deadline=None)
def test_simhash_search_finds_exactly_pairs_within_k(bases, flips, k):
    """Pigeonhole search over k+1 blocks returns every pair within distance k (brute force) and no other."""
    fps = list(bases)
    for base, bits in flips:  # near copies: a base with a few bits flipped
        v = fps[base % len(bases)]
        for bit in bits:
            v ^= 1 << bit
        fps.append(v)
    arr = np.array(fps, dtype=np.uint64)
    cand = simhash_candidate_pairs(arr, k)
    within = {tuple(p) for p in cand.tolist() if bin(fps[p[0]] ^ fps[p[1]]).count("1") <= k}
    brute = {
        (i, j)
        for i in range(len(fps))
        for j in range(i + 1, len(fps))
        if bin(fps[i] ^ fps[j]).count("1") <= k
    }
    assert within == brute


def test_simhash_is_the_weighted_bit_vote():
    texts = ["a b c d e f", "a a a b"]
    hasher = ShingleHasher(Shingling("word", 1))
    fps = simhash(texts, Shingling("word", 1))
    for text, fp in zip(texts, fps, strict=True):
        u, c = np.unique(hasher.hashes64(text), return_counts=True)
        expected = 0
        for bit in range(64):
            vote = sum(int(w) * (1 if (int(h) >> bit) & 1 else -1) for h, w in zip(u, c, strict=True))
            expected |= int(vote > 0) << bit
        assert int(fp) == expected


def test_simhash_near_duplicates_and_block():
    rng = random.Random(5)
    # one word changed in 3000: each bit's vote (a sum of ~3000 +-1 terms) rarely changes sign
    base = random_doc(rng, 3000)
    texts = [
        " ".join(base),
        " ".join(perturb(base, 1 / 3000, rng)),
        " ".join(random_doc(rng, 3000)),
        " ".join(base),
    ]
    fps = simhash(texts, Shingling("word", 3))
    assert hamming(fps[0:1], fps[1:2])[0] <= 3 < hamming(fps[0:1], fps[2:3])[0]
    assert simhash_near_duplicates(texts, k=3, shingling=Shingling("word", 3)).clusters == [[0, 1, 3]]
    block = SimHashDedup(k=3, shingling=Shingling("word", 3))
    assert [d["id"] for d in block.run(docs_of(texts))] == ["d0", "d2"]
    assert block.stats["removed"] == 2
    with pytest.raises(ConfigError):
        SimHashDedup(k=64)


# --- suffix arrays --------------------------------------------------------------------------------


def naive_lcp(s: bytes, sa: list[int]) -> list[int]:
    out = [0]
    for a, b in itertools.pairwise(sa):
        k = 0
        while a + k < len(s) and b + k < len(s) and s[a + k] == s[b + k]:
            k += 1
        out.append(k)
    return out


@pytest.mark.parametrize("backend", ["numpy", "divsufsort"])
@given(st.binary(max_size=60) | st.text("ab", max_size=60).map(str.encode))
@settings(max_examples=150, deadline=None)
def test_suffix_array_and_lcp_match_naive(backend, s):
    if backend == "divsufsort":
        pytest.importorskip("pydivsufsort")
    ref = sorted(range(len(s)), key=lambda i: s[i:])
    sa, lcp = suffix_array_lcp(s, backend)
    assert sa.tolist() == ref
    assert suffix_array(s, backend).tolist() == ref
    assert lcp.tolist() == (naive_lcp(s, ref) if s else [])
    if s:
        assert lcp_array(s, sa).tolist() == lcp.tolist()


def test_suffix_array_rejects_text():
    with pytest.raises(DataError, match="encode"):
        suffix_array("not bytes")  # type: ignore[arg-type]


# --- substring dedup ------------------------------------------------------------------------------

SHARED = "The quick brown fox jumps over the lazy dog by the river. "  # 58 bytes


def test_substring_removal_on_hand_built_corpus():
    texts = [
        "Intro. " + SHARED + "Outro one.",
        "Start two:\n" + SHARED + "end two.",
        "Nothing repeated in this one.",
        SHARED.strip(),
    ]
    out, removed = remove_repeated_substrings(texts, min_len=30)
    assert out[0] == texts[0]  # the first occurrence stays
    assert out[1] == "Start two:\nend two."
    assert out[2] == texts[2]
    assert out[3] == ""
    assert removed.tolist() == [0, len(SHARED), 0, len(SHARED) - 1]
    block = SubstringDedup(min_len=30)
    kept = list(block.run(docs_of(texts)))
    assert [d["id"] for d in kept] == ["d0", "d1", "d2"]  # the emptied document is dropped
    assert block.stats["bytes_removed"] == 2 * len(SHARED) - 1 and block.stats["documents_emptied"] == 1


def test_substring_removal_below_min_len_and_across_boundaries():
    # a repeat shorter than min_len stays; the end of one doc + the start of the next is not a repeat
    texts = ["abcdefgh xyz", "abcdefgh uvw", "xyz"]
    assert remove_repeated_substrings(texts, min_len=10)[0] == texts
    assert remove_repeated_substrings(texts, min_len=9)[0] == ["abcdefgh xyz", "uvw", "xyz"]


def test_substring_removal_keeps_whole_characters():
    # é = c3 a9 and ũ = c5 a9 share their last byte: the 11-byte repeat "\xa9" + 10 digits starts
    # inside ũ, which keeps its lead byte and so stays whole
    texts = ["é0123456789", "ũ0123456789"]
    out, removed = remove_repeated_substrings(texts, min_len=11)
    assert out == [texts[0], "ũ"]
    assert removed.tolist() == [0, 10]
    # the same repeat within one 2-byte character per side is below min_len once whole characters count
    assert remove_repeated_substrings(texts, min_len=12)[0] == texts


@given(st.lists(st.text("ab ", max_size=30), min_size=1, max_size=5), st.integers(2, 6))
@settings(max_examples=150, deadline=None)
def test_substring_removal_matches_brute_force(texts, min_len):
    """A byte goes iff a min_len window inside its document covering it occurs at an earlier position."""
    blob = "".join(t + "\n" for t in texts).encode()  # "\n" stands in for the separator (absent in texts)
    expected = []
    offset = 0
    for t in texts:
        raw = t.encode()
        gone = [False] * len(raw)
        for p in range(len(raw) - min_len + 1):
            if blob.find(raw[p : p + min_len]) < offset + p:
                for q in range(p, p + min_len):
                    gone[q] = True
        expected.append("".join(c for c, g in zip(t, gone, strict=True) if not g))
        offset += len(raw) + 1
    for backend in ("numpy", "auto"):
        assert remove_repeated_substrings(texts, min_len, backend)[0] == expected


def test_substring_bad_min_len():
    with pytest.raises(ConfigError, match="min_len"):
        SubstringDedup(min_len=0)


# --- real data ------------------------------------------------------------------------------------


@pytest.mark.needs_data
def test_first_folio_plays_are_near_duplicates_of_modern_spelling(shakespeare_docs):
    """The 35 First Folio plays pair with their modern-spelling editions, and with nothing else.

    Character 5-grams (spelling changes touch few of them): an edition pair has exact Jaccard 0.44-0.55,
    any other pair at most 0.40. Precision and recall are against exact Jaccard >= threshold over all
    pairs of the 77 documents.
    """
    from danlu.data.sources import read_source

    docs = list(shakespeare_docs) + list(read_source("shakespeare_folio"))
    texts = [d["text"] for d in docs]
    shingling = Shingling("char", 5)
    threshold = 0.42
    exact = jaccard_matrix(shingle_hashes(texts, shingling))
    truth = {(i, j) for i in range(len(docs)) for j in range(i + 1, len(docs)) if exact[i, j] >= threshold}
    assert len(truth) == 35
    assert all(
        docs[i]["source"] == "shakespeare" and docs[j]["source"] == "shakespeare_folio" for i, j in truth
    )
    found = minhash_near_duplicates(texts, threshold, num_perm=256, shingling=shingling, verify="exact")
    got = {tuple(p) for p in found.pairs.tolist()}
    assert len(got & truth) / len(truth) >= 0.95  # recall
    assert got <= truth  # precision 1: exact verification
