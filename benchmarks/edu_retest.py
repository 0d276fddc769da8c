"""How far the contrast edu judge's labels are a property of the text: its test-retest agreement.

The contrast judge (danlu.eval.edu_judge.EduContrastJudge) is deterministic, so a second seed changes
nothing; its noise is in what the label depends on. Two retests of the same annotated chunks:

    split half  the mean per-token margin over the first half of the tokens the judge read against
                the mean over the second half (two extracts of one text); Spearman-Brown gives the
                reliability of the full-length label from it.
    paraphrase  the same judge with the rubric's two ends reworded (PARAPHRASE) against the
                original descriptions: how much the label depends on the prompt's wording.

A classifier that predicted the text's "true" score perfectly would agree with a label of reliability
R by about sqrt(R) (the attenuation bound), so these bound the Spearman that edu_filter.py's agreement
can reach. Rows: a seeded sample of an annotation file; the recomputed full margin is checked against
the stored score (same judge, same text: Spearman 1).

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/edu_retest.py runs/edu26-emb/contrast_all.jsonl \\
        --n 200 --out runs/edu27-retest/retest.jsonl
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]

# the rubric's two ends in other words (the originals: edu_judge.EDU_DESCRIPTION / NON_EDU_DESCRIPTION)
PARAPHRASE = (
    "Below is a passage from an educational text, such as a school lesson or a chapter of a textbook: "
    "it teaches the important ideas of a school subject in a clear way that pupils can learn from.\n\n",
    "Below is a passage that teaches nothing: chatter, entertainment or advertisements, of no use in a "
    "classroom.\n\n",
)


def halves(margins) -> tuple[float, float]:
    """The mean margin over the first and over the second half of the tokens (the middle one, of an
    odd count, goes to the second)."""
    half = len(margins) // 2
    return float(margins[:half].mean()), float(margins[half:].mean())


def report(rows: list[dict], boots: int = 2000) -> list[str]:
    """The agreement lines: each retest's Spearman with a bootstrap 95% interval."""
    from danlu.data.edu import spearman, spearman_brown, spearman_ci

    def line(what: str, a: list, b: list) -> str:
        lo, hi = spearman_ci(a, b, boots)
        return f"{what} (n {len(a)}): Spearman {spearman(a, b):.3f} [95% CI {lo:.3f}, {hi:.3f}]"

    col = {k: [r[k] for r in rows] for k in ("stored", "full", "first", "second", "paraphrase")}
    r_half = spearman(col["first"], col["second"])
    r_para = spearman(col["full"], col["paraphrase"])
    return [
        line("recomputed margin vs stored score", col["full"], col["stored"]),
        line("split half: first vs second half of the tokens", col["first"], col["second"]),
        f"  full-length reliability (Spearman-Brown) {spearman_brown(r_half):.3f}; "
        f"attenuation bound on a classifier's Spearman sqrt = {max(0.0, spearman_brown(r_half)) ** 0.5:.3f}",
        line("paraphrased descriptions vs original", col["paraphrase"], col["full"]),
        f"  attenuation bound from the paraphrase retest sqrt = {max(0.0, r_para) ** 0.5:.3f}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("annotations", type=Path)
    ap.add_argument("--judge", default=str(ROOT / "runs/smollm2"))
    ap.add_argument("--doc-tokens", type=int, default=128)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=1200.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import os

    import torch

    from _machine import machine_markdown
    from danlu.data.edu import read_annotations
    from danlu.eval.edu_judge import EduContrastJudge, write_annotations
    from danlu.model_dir import load_model

    torch.set_num_threads(1)
    print("load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    rows = read_annotations(args.annotations)
    sample = random.Random(args.seed).sample(rows, min(args.n, len(rows)))
    model, tok, _ = load_model(args.judge, "cpu")
    judge = EduContrastJudge(model, tok, args.doc_tokens)
    para = EduContrastJudge(model, tok, args.doc_tokens, PARAPHRASE)
    out, start = [], time.monotonic()
    for row in sample:
        if time.monotonic() - start > args.time_limit:
            print(f"stopped at the time limit of {args.time_limit:.0f} s")
            break
        m = judge.token_margins(row["text"])
        if len(m) < 2:
            continue
        first, second = halves(m)
        out.append(
            {
                "id": row["id"],
                "source": row["source"],
                "stored": float(row["score"]),
                "full": float(m.mean()),
                "first": first,
                "second": second,
                "paraphrase": para.margin(row["text"]),
                "tokens": len(m),
            }
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_annotations(out, args.out)
    print(
        f"retested {len(out)} of {len(rows)} annotations of {args.annotations} in {time.monotonic() - start:.0f} s"
    )
    for text in report(out):
        print(text)
    print("load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(machine_markdown())


if __name__ == "__main__":
    main()
