"""danlu's dedup against datasketch and against exact Jaccard, in one run; prints one table.

1. MinHash signature throughput (docs/s): danlu's `minhash_signatures` (from raw text, shingling
   included) vs datasketch `MinHash.bulk` given the same word 5-gram shingles already made (128 perms).
2. MinHash-LSH precision/recall vs exact Jaccard over all pairs, threshold 0.8, on a synthetic corpus
   with planted near-duplicates at several similarity levels (natural overlaps count too).
3. The First Folio plays vs their modern-spelling editions (if the Shakespeare cache exists).
4. SimHash and suffix-array substring dedup on ~50 MB of text (Shakespeare, repeated and perturbed).

  python benchmarks/dedup.py [--docs 2000] [--repeats 3] [--mb 50]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import scipy.sparse as sp
from datasketch import MinHash

from _machine import machine_markdown, markdown_table
from danlu.data.dedup import (
    Shingling,
    minhash_near_duplicates,
    minhash_signatures,
    optimal_bands,
    remove_repeated_substrings,
    shingle_hashes,
    simhash_near_duplicates,
    suffix_array_lcp,
)

THRESHOLD = 0.8
LEVELS = (0.95, 0.9, 0.85, 0.8, 0.7, 0.5)


def zipf_vocab_doc(rng: np.random.Generator, n_words: int, vocab: int = 30000) -> list[str]:
    """Words drawn from a Zipf-like law, so common n-grams recur across documents as in real text."""
    ranks = np.minimum(rng.zipf(1.2, n_words), vocab)
    return [f"w{r}" for r in ranks]


def word_shingles(words: list[str], n: int = 5) -> list[bytes]:
    return [" ".join(words[i : i + n]).encode() for i in range(max(1, len(words) - n + 1))]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_minhash(n_docs: int, repeats: int, rows: list[list[str]]) -> None:
    rng = np.random.default_rng(0)
    docs = [zipf_vocab_doc(rng, 300) for _ in range(n_docs)]
    texts = [" ".join(d) for d in docs]
    shingles = [word_shingles(d) for d in docs]
    t_ours = median_time(lambda: minhash_signatures(texts, num_perm=128), repeats)
    t_ds = median_time(lambda: MinHash.bulk(shingles, num_perm=128), repeats)
    rows.append(["MinHash signatures, 128 perms (docs/s)", f"{n_docs / t_ours:,.0f}", f"{n_docs / t_ds:,.0f}",
                 f"{t_ds / t_ours:.1f}x", f"{n_docs} docs x 300 words, word 5-grams, median of {repeats}"])  # fmt: skip


def exact_pairs(hashes: list[np.ndarray], threshold: float) -> tuple[set[tuple[int, int]], dict]:
    """All pairs with exact Jaccard >= threshold (sparse incidence product), and every pair's Jaccard."""
    sets = [np.unique(h) for h in hashes]
    sizes = np.array([len(s) for s in sets])
    vocab, col = np.unique(np.concatenate(sets), return_inverse=True)
    row = np.repeat(np.arange(len(sets)), sizes)
    x = sp.csr_matrix((np.ones(len(col), np.float32), (row, col)), shape=(len(sets), len(vocab)))
    inter = sp.triu(x @ x.T, k=1).tocoo()
    jac = inter.data / (sizes[inter.row] + sizes[inter.col] - inter.data)
    all_j = {(int(i), int(j)): float(v) for i, j, v in zip(inter.row, inter.col, jac, strict=True)}
    return {p for p, v in all_j.items() if v >= threshold}, all_j


def planted_corpus(n_base: int, seed: int = 1) -> tuple[list[str], dict[tuple[int, int], float]]:
    """Base docs plus, per base, one copy at a target similarity: the copy keeps a prefix of the base
    sized so that the word-5-gram Jaccard is the target (shared s of N each: J = s / (2N - s))."""
    rng = np.random.default_rng(seed)
    texts, planted = [], {}
    bases = [zipf_vocab_doc(rng, 400) for _ in range(n_base)]
    texts = [" ".join(b) for b in bases]
    for i, base in enumerate(bases):
        level = LEVELS[i % len(LEVELS)]
        n_sh = len(base) - 4
        shared = round(2 * n_sh * level / (1 + level))
        keep = shared + 4  # words kept from the base to share `shared` shingles
        copy = base[:keep] + zipf_vocab_doc(rng, len(base) - keep)
        texts.append(" ".join(copy))
        planted[(i, len(texts) - 1)] = level
    return texts, planted


def precision_recall(got: set, truth: set) -> tuple[float, float]:
    tp = len(got & truth)
    return (tp / len(got) if got else 1.0), (tp / len(truth) if truth else 1.0)


def bench_lsh(n_base: int, rows: list[list[str]]) -> None:
    texts, planted = planted_corpus(n_base)
    sh = Shingling("word", 5)
    truth, all_j = exact_pairs(shingle_hashes(texts, sh), THRESHOLD)
    natural = len(truth - set(planted))
    configs = [
        ("verify=minhash, bands", optimal_bands(THRESHOLD, 128), "minhash"),
        ("verify=exact, bands", optimal_bands(THRESHOLD, 128), "exact"),
        ("verify=exact, recall-weighted bands", optimal_bands(THRESHOLD, 128, 0.1, 0.9), "exact"),
    ]
    for name, bands, verify in configs:
        t = time.perf_counter()
        found = minhash_near_duplicates(texts, THRESHOLD, 128, sh, verify=verify, bands=bands)
        dt = time.perf_counter() - t
        got = {tuple(p) for p in found.pairs.tolist()}
        p, r = precision_recall(got, truth)
        per_level = []
        for level in LEVELS:
            lv = {q for q, v in planted.items() if v == level}
            per_level.append(f"{level}:{len(lv & got) / len(lv):.2f}")
        rows.append([f"LSH t={THRESHOLD} {name} {bands} precision / recall", f"{p:.3f} / {r:.3f}", "-", "goal >= 0.95",
                     f"{len(texts)} docs, {len(truth)} true pairs ({natural} natural), {found.candidates} candidates, "
                     f"{dt:.1f} s; found per planted level {' '.join(per_level)}"])  # fmt: skip
    del all_j


def shakespeare_docs() -> list[dict] | None:
    from danlu.data.sources import get_source
    from danlu.fetch import cache_dir

    docs = []
    for name in ("shakespeare", "shakespeare_folio"):
        src = get_source(name)
        root = cache_dir() / "sources" / f"{src.package}-{src.version}-{src.sha256[:12]}"
        if not root.is_dir():
            return None
        docs += list(src.read(root))
    return docs


def bench_folio(docs: list[dict], rows: list[list[str]]) -> None:
    texts = [d["text"] for d in docs]
    sh, threshold = Shingling("char", 5), 0.42
    truth, _ = exact_pairs(shingle_hashes(texts, sh), threshold)
    editions = all(docs[i]["source"] != docs[j]["source"] for i, j in truth)
    for verify in ("minhash", "exact"):
        t = time.perf_counter()
        found = minhash_near_duplicates(texts, threshold, 256, sh, verify=verify)
        dt = time.perf_counter() - t
        p, r = precision_recall({tuple(q) for q in found.pairs.tolist()}, truth)
        rows.append([f"Folio vs modern plays, char 5-grams, t={threshold}, 256 perms, verify={verify}",
                     f"{p:.3f} / {r:.3f}", "-", "precision / recall",
                     f"{len(docs)} docs, {len(truth)} true pairs (all folio-modern: {editions}), {dt:.1f} s"])  # fmt: skip


def big_corpus(docs: list[dict] | None, mb: float) -> list[str]:
    """~mb MB of ~5 KB documents: the plays cut into chunks, repeated with 0.5% of words replaced."""
    rng = random.Random(0)
    if docs:
        chunks = []
        for d in docs:
            t = d["text"]
            chunks += [t[i : i + 5000] for i in range(0, len(t), 5000)]
    else:
        g = np.random.default_rng(0)
        chunks = [" ".join(zipf_vocab_doc(g, 800)) for _ in range(2000)]
    out, size = [], 0
    while size < mb * 1e6:
        for c in chunks:
            words = c.split(" ")
            for _ in range(len(words) // 200):
                words[rng.randrange(len(words))] = rng.choice(words)
            out.append(" ".join(words))
            size += len(out[-1])
            if size >= mb * 1e6:
                break
    return out


def bench_big(texts: list[str], rows: list[list[str]]) -> None:
    mb = sum(len(t.encode()) for t in texts) / 1e6
    t = time.perf_counter()
    found = simhash_near_duplicates(texts, k=3, shingling=Shingling("word", 5))
    dt = time.perf_counter() - t
    rows.append([f"SimHash k=3 (fingerprint + search), {mb:.0f} MB", f"{dt:.1f} s", "-", f"{mb / dt:.1f} MB/s",
                 f"{len(texts)} docs, {found.candidates} candidates, {len(found.pairs)} pairs, "
                 f"{len(found.clusters)} clusters"])  # fmt: skip
    blob = np.frombuffer("\n".join(texts).encode(), dtype=np.uint8)
    t = time.perf_counter()
    suffix_array_lcp(blob, "divsufsort")
    dt = time.perf_counter() - t
    rows.append(
        [f"suffix array + LCP (divsufsort), {mb:.0f} MB", f"{dt:.1f} s", "-", f"{mb / dt:.1f} MB/s", ""]
    )
    small = blob[:5_000_000]
    t = time.perf_counter()
    suffix_array_lcp(small, "numpy")
    dt = time.perf_counter() - t
    rows.append(["suffix array + LCP (numpy prefix doubling), 5 MB", f"{dt:.1f} s", "-", f"{5 / dt:.2f} MB/s",
                 "fallback when pydivsufsort is missing"])  # fmt: skip
    t = time.perf_counter()
    out, removed = remove_repeated_substrings(texts, min_len=50)
    dt = time.perf_counter() - t
    rows.append([f"substring dedup L=50 end to end, {mb:.0f} MB", f"{dt:.1f} s", "-", f"{mb / dt:.1f} MB/s",
                 f"{removed.sum() / 1e6:.1f} MB removed ({removed.sum() / (mb * 1e6):.0%}), "
                 f"{sum(1 for o in out if not o.strip())} docs emptied"])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=2000, help="documents for the MinHash throughput run")
    ap.add_argument("--base", type=int, default=1200, help="base documents of the planted LSH corpus")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mb", type=float, default=50.0, help="MB of text for SimHash and the suffix array")
    args = ap.parse_args()
    rows: list[list[str]] = []
    bench_minhash(args.docs, args.repeats, rows)
    bench_lsh(args.base, rows)
    docs = shakespeare_docs()
    if docs:
        bench_folio(docs, rows)
    else:
        rows.append(["Folio vs modern plays", "skipped", "-", "-", "Shakespeare not in the danlu cache"])
    bench_big(big_corpus(docs, args.mb), rows)
    print(markdown_table(["measure", "danlu", "datasketch", "ratio / note", "setting"], rows))
    print()
    print(machine_markdown())


if __name__ == "__main__":
    main()
