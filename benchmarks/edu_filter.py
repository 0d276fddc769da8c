"""Educational-value filtering as FineWeb-Edu does it, on the default corpus (Shakespeare + chitchat).

    annotate  the judge (runs/smollm2, SmolLM2-135M-Instruct) scores a seeded sample of corpus chunks
              with the additive 0-5 rubric (danlu.eval.edu_judge; next-token distribution over 0..5,
              documents cut to --doc-tokens tokens), written as JSONL annotations.
    bench     trains the fast classifier (danlu.data.edu: hashed n-gram ridge regression) on the first
              part of the annotations and prints its Spearman correlation with the judge on the held-out
              rest; then scores the corpus with it, keeps the top half (the `edu_score` block), draws a
              random half of the same size, and trains one tiny model on each for the same steps. Both
              are evaluated on the "educational" slice: held-out annotated chunks the judge scored in
              its top quarter, which neither training set contains.

The corpus: every document of the default recipe's sources, cleaned (clean.normalize), cut into pieces
of about --chunk-chars characters at paragraph (else line) breaks, pieces under 200 characters dropped.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/edu_filter.py annotate --n 400 --out runs/data-edu/fw.jsonl
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/edu_filter.py bench --annotations runs/data-edu/fw.jsonl
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from danlu.data.clean import normalize
from danlu.data.sources import read_source

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("shakespeare", "chitchat")


def pieces(text: str, chars: int) -> list[str]:
    """Text cut at paragraph breaks (or line breaks, for chats without blank lines) into ~chars pieces."""
    parts = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(parts) == 1:
        parts = [p for p in text.split("\n") if p.strip()]
    sep = "\n\n" if "\n\n" in text else "\n"
    out, cur, size = [], [], 0
    for p in parts:
        cur.append(p.strip())
        size += len(p)
        if size >= chars:
            out.append(sep.join(cur))
            cur, size = [], 0
    if cur:
        out.append(sep.join(cur))
    return out


def corpus_chunks(chunk_chars: int = 1000, min_chars: int = 200) -> list[dict]:
    docs = []
    for source in SOURCES:
        for doc in read_source(source):
            for i, text in enumerate(pieces(normalize(doc["text"]), chunk_chars)):
                if len(text) >= min_chars:
                    docs.append({"id": f"{doc['id']}#{i}", "text": text, "source": source, "meta": {}})
    return docs


def annotate_main(args: argparse.Namespace) -> None:
    import torch

    from danlu.eval.edu_judge import EduJudge, annotate, write_annotations

    torch.set_num_threads(1)
    docs = corpus_chunks(args.chunk_chars)
    sample = random.Random(args.seed).sample(docs, args.n)
    judge = EduJudge.from_dir(args.judge, max_doc_tokens=args.doc_tokens, prompt=args.prompt)
    start = time.monotonic()
    rows = list(annotate(judge, sample, args.time_limit))
    write_annotations(rows, args.out)
    took = time.monotonic() - start
    print(f"annotated {len(rows)} of {len(docs)} chunks with {args.judge} in {took:.0f} s -> {args.out}")


def agreement_main(args: argparse.Namespace) -> None:
    """Spearman of the hashed n-gram ridge regressor against the judge on held-out annotations."""
    from _machine import machine_markdown
    from danlu.data.edu import read_annotations, spearman, train_edu_regressor

    for path in args.annotations:
        rows = read_annotations(path)
        cut = int(len(rows) * args.train_fraction)
        train, test = rows[:cut], rows[cut:]
        for l2 in (1.0, 10.0):
            reg = train_edu_regressor(train, l2=l2)
            rho = spearman(reg.predict([r["text"] for r in test]), [r["score"] for r in test])
            print(f"{path}: train {len(train)}, held out {len(test)}, l2 {l2:g}: Spearman {rho:.3f}")
    print(machine_markdown())


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("annotate")
    a.add_argument("--judge", default=str(ROOT / "runs/smollm2"))
    a.add_argument("--n", type=int, default=400)
    a.add_argument("--prompt", default="fineweb", help="fineweb (the verbatim rubric) or short")
    a.add_argument("--doc-tokens", type=int, default=256)
    a.add_argument("--time-limit", type=float, default=1800.0)
    a.add_argument("--out", type=Path, required=True)
    for p in (a,):
        p.add_argument("--chunk-chars", type=int, default=1000)
        p.add_argument("--seed", type=int, default=0)
    g = sub.add_parser("agreement")
    g.add_argument("annotations", nargs="+", type=Path)
    g.add_argument("--train-fraction", type=float, default=0.75)
    args = ap.parse_args()
    if args.cmd == "annotate":
        annotate_main(args)
    else:
        agreement_main(args)


if __name__ == "__main__":
    main()
