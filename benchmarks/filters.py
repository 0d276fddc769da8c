"""danlu's quality filters against datatrove's, in one run: Gopher quality, Gopher repetition and C4
quality on the same documents, MB/s of each and danlu/datatrove, and whether the decisions agree.

datatrove splits words and sentences with NLTK (a model download); it is given danlu's splitters, as in
tests/test_filters.py, so both sides do the same work and the timing compares the rules, not the
tokenizers. Each filter gets fresh document copies on every repeat (C4 rewrites text); repeats alternate
the order of the two sides; the table gives medians. danlu computes every score (they go into the
document's metadata); datatrove stops at the first failed rule.

    python benchmarks/filters.py [--source chitchat] [--mb 3.6] [--repeats 5]
    python benchmarks/filters.py --quick      # 0.5 MB, 3 repeats: a check that it runs
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datatrove.data import Document as DTDoc
from datatrove.pipeline.filters import c4_filters, gopher_quality_filter, gopher_repetition_filter

from _machine import machine_markdown, markdown_table
from danlu.data.filters import (
    C4QualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    split_sentences,
    split_words,
)
from danlu.data.sources import read_source

# the same splitters on both sides (see the module docstring)
gopher_quality_filter.split_into_words = lambda text, language=None: split_words(text)
gopher_repetition_filter.split_into_words = lambda text, language=None: split_words(text)
c4_filters.split_into_sentences = lambda text, language=None: split_sentences(text)

PAIRS = {
    "Gopher quality": (GopherQualityFilter, gopher_quality_filter.GopherQualityFilter),
    "Gopher repetition": (GopherRepetitionFilter, gopher_repetition_filter.GopherRepetitionFilter),
    "C4 quality": (C4QualityFilter, c4_filters.C4QualityFilter),
}


def load_texts(source: str, mb: float) -> list[str]:
    texts, size = [], 0
    for doc in read_source(source):
        if not doc["text"].strip():
            continue
        texts.append(doc["text"])
        size += len(doc["text"].encode("utf-8"))
        if size >= mb * 1e6:
            break
    return texts


def run_danlu(filt, texts: list[str]) -> tuple[float, list[tuple[bool, str | None]], list[str]]:
    docs = [{"id": str(i), "text": t, "source": "bench", "meta": {}} for i, t in enumerate(texts)]
    t0 = time.perf_counter()
    decisions = [filt.filter(d) for d in docs]
    return time.perf_counter() - t0, decisions, [d["text"] for d in docs]


def run_datatrove(filt, texts: list[str]) -> tuple[float, list[tuple[bool, str | None]], list[str]]:
    docs = [DTDoc(text=t, id=str(i)) for i, t in enumerate(texts)]
    t0 = time.perf_counter()
    results = [filt.filter(d) for d in docs]
    seconds = time.perf_counter() - t0
    return seconds, [(True, None) if r is True else tuple(r) for r in results], [d.text for d in docs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="chitchat", help="a built-in source (danlu.data.sources)")
    ap.add_argument("--mb", type=float, default=3.6, help="MB of its documents to filter")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="0.5 MB, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.mb, args.repeats = 0.5, 3
    texts = load_texts(args.source, args.mb)
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    rows, disagreements = [], []
    for label, (ours_cls, ref_cls) in PAIRS.items():
        ours, ref = ours_cls(), ref_cls()
        times: dict[str, list[float]] = {"danlu": [], "datatrove": []}
        for r in range(args.repeats):
            order = ["danlu", "datatrove"] if r % 2 == 0 else ["datatrove", "danlu"]
            for side in order:
                fn = run_danlu if side == "danlu" else run_datatrove
                seconds, decisions, out_texts = fn(ours if side == "danlu" else ref, texts)
                times[side].append(seconds)
                if side == "danlu":
                    ours_decisions, ours_texts = decisions, out_texts
                else:
                    ref_decisions, ref_texts = decisions, out_texts
        same = sum(a == b for a, b in zip(ours_decisions, ref_decisions, strict=True))
        disagreements += [
            f"{label}, document {i}: danlu {a[1] or 'keeps'}, datatrove {b[1] or 'keeps'}"
            for i, (a, b) in enumerate(zip(ours_decisions, ref_decisions, strict=True))
            if a != b
        ][:3]
        kept = [i for i, (keep, _) in enumerate(ours_decisions) if keep]
        same_text = sum(ours_texts[i] == ref_texts[i] for i in kept)
        t_ours, t_ref = statistics.median(times["danlu"]), statistics.median(times["datatrove"])
        rows.append(
            [
                label,
                f"{mb / t_ours:.2f}",
                f"{mb / t_ref:.2f}",
                f"{t_ref / t_ours:.2f}",
                f"{same} of {len(texts)}",
                f"{len(kept)}",
                f"{same_text} of {len(kept)}",
            ]
        )
    print(
        f"{len(texts)} documents of {args.source}, {mb:.2f} MB; medians of {args.repeats} repeats, "
        "alternating order; same word and sentence splitters on both sides\n"
    )
    header = [
        "filter",
        "danlu MB/s",
        "datatrove MB/s",
        "danlu/datatrove",
        "same decision (and reason)",
        "kept by danlu",
        "kept text identical",
    ]
    print(markdown_table(header, rows))
    if disagreements:
        print("\ndisagreements (first 3 per filter): " + "; ".join(disagreements))
    print(f"\n{machine_markdown()} | datatrove {importlib.metadata.version('datatrove')}")


if __name__ == "__main__":
    main()
