"""Worked example: paraphrase (a chat model) and EDA augmentation on the user's path, `danlu data RECIPE`.

One paragraph from each of Austen's six novels (the `austen` registry source) goes into a JSONL file; a
recipe runs `paraphrase` (keep_original: each paraphrase added beside its paragraph) and then `eda`
(WordNet synonym replacement, on half the documents, kept beside them too). The script prints the
manifest's block lines, where the copies went, every original with its paraphrase, and a few EDA copies.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/augment_example.py \
        --model runs/smollm2 --out runs/aug26-example --time-limit 900
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_markdown


def paragraphs(n: int, min_chars: int = 200, max_chars: int = 420) -> list[str]:
    """The first paragraph of min_chars..max_chars characters after chapter 1 of each novel, one per novel."""
    from danlu.data.corpora import read_corpus

    out = []
    for novel in read_corpus("austen"):
        body = novel["text"].split("CHAPTER 1", 1)[-1]
        for para in re.split(r"\n\s*\n", body):
            text = " ".join(para.split())
            if min_chars <= len(text) <= max_chars and not text.isupper():
                out.append(text)
                break
        if len(out) == n:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="runs/smollm2", help="a danlu chat model dir")
    ap.add_argument("--out", default="runs/augment-example")
    ap.add_argument("--docs", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=1, help="documents per engine batch")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--time-limit", type=float, default=900.0, help="seconds of paraphrasing at most")
    args = ap.parse_args()
    from danlu.cli import main as danlu

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = out / "austen.jsonl"
    texts = paragraphs(args.docs)
    src.write_text("".join(json.dumps({"id": f"austen-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    recipe = out / "recipe.yaml"
    paraphrase = {
        "block": "paraphrase",
        "model": str(Path(args.model).resolve()),
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "seed": 0,
        "batch_size": args.batch_size,
        "time_limit_s": args.time_limit,
    }
    eda = {"block": "eda", "synonym_replace": 0.1, "fraction": 0.5, "keep_original": True, "seed": 0}
    recipe.write_text(
        f"name: augment-example\nrun_dir: {(out / 'run').resolve()}\n"
        f"data:\n  sources: [{src.resolve()}]\n  val_fraction: 0.1\n  min_chars: 20\n"
        f"  pipeline:\n    - {json.dumps(paraphrase)}\n    - {json.dumps(eda)}\n"
    )
    print(machine_markdown())
    print(f"load average at start: {os.getloadavg()}")
    print(f"$ danlu data {recipe}")
    start = time.perf_counter()
    danlu(["data", str(recipe)])
    wall = time.perf_counter() - start
    print(f"danlu data took {wall:.1f} s; load average at end: {os.getloadavg()}")
    docs_dir = out / "run" / "data"
    manifest = json.loads((docs_dir / "manifest.json").read_text())
    for name, b in manifest["blocks"].items():
        print(
            f"manifest block {name}: in {b['documents_in']} out {b['documents_out']} counts {b.get('counts', {})}"
        )
    print("manifest augmented_added:", manifest.get("augmented_added"))
    print(
        "manifest lineage blocks:",
        [(b["name"], b.get("augments", False)) for b in manifest["lineage"]["blocks"]],
    )
    from danlu.data.documents import read_documents

    docs = [d for s in ("train", "val") for d in read_documents(docs_dir, s)]
    by_id = {d["id"]: d for d in docs}
    for d in docs:
        mark = d["meta"].get("augmented") or {}
        if mark.get("block") == "paraphrase":
            print(
                f"\n--- {mark['source_id']} (seed {mark['seed']}) original:\n{by_id[mark['source_id']]['text']}"
            )
            print(f"--- paraphrase by {mark['model']}:\n{d['text']}")
    for d in [d for d in docs if (d["meta"].get("augmented") or {}).get("block") == "eda"][:2]:
        mark = d["meta"]["augmented"]
        print(f"\n--- eda copy of {mark['source_id']} ({mark['synonyms']} synonyms):\n{d['text']}")


if __name__ == "__main__":
    main()
