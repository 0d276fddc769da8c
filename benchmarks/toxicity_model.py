"""The trained toxicity classifier (danlu.data.toxicity_model): distilled from alt-profanity-check's model.

The teacher labels every line of the default corpus (chitchat turns, Shakespeare verse lines; P >= 0.5 is
toxic); danlu's hashed n-gram logistic model is trained on 80% of the lines (all toxic ones, 3 clean
per toxic) and its precision and recall against the teacher are printed on the held-out 20%, at their
natural toxic rate. A few hand-written lines are scored as well, and the model is saved.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/toxicity_model.py --out runs/data26-tox/toxicity.npz
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

HAND_WRITTEN = [
    ("you are a worthless idiot and everyone hates you", True),
    ("shut up, you stupid moron", True),
    ("what a pathetic loser, go to hell", True),
    ("thanks so much, have a lovely evening", False),
    ("the train leaves at seven from platform two", False),
    ("I think we should plant tomatoes in the spring", False),
]


def main() -> None:
    from _machine import machine_markdown
    from danlu.data.toxicity_model import precision_recall, source_lines, teacher_scores, train_toxicity_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    print("load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    start = time.monotonic()
    lines = source_lines()
    labels = (teacher_scores(lines) >= 0.5).tolist()
    print(
        f"teacher alt-profanity-check 1.9.1 (MIT): {len(lines)} lines, {sum(labels)} toxic "
        f"({sum(labels) / len(lines):.2%}), {time.monotonic() - start:.0f} s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    clf, held = train_toxicity_model(lines, labels, args.out, epochs=args.epochs)
    print(f"trained in {time.monotonic() - t0:.0f} s -> {args.out}")
    for threshold in (0.5, 0.7, 0.9):
        print(held.at(threshold).line(f"held-out lines vs the teacher, P >= {threshold}"))
    texts, gold = zip(*HAND_WRITTEN, strict=True)
    probs = clf.score_many(list(texts))
    for (text, want), p in zip(HAND_WRITTEN, probs, strict=True):
        print(f"  {p:.3f} {'toxic' if want else 'clean'}: {text}")
    print(precision_recall(probs >= 0.5, gold).line("hand-written lines"))
    print(
        f"total {time.monotonic() - start:.0f} s; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    print(machine_markdown())


if __name__ == "__main__":
    main()
