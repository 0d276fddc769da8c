"""danlu's own BPE trainer beside HF tokenizers' BpeTrainer on the default corpus, plus WordPiece and Unigram.

The default corpus is the train split of recipes/tiny-cpu.yaml's documents (shakespeare + chitchat after
the data stage), made with `danlu data` into a temporary folder unless --docs names a documents folder
(e.g. RUN_DIR/data). Both BPE trainers learn vocab --vocab (4096, the recipe's) at min_frequency 2 with
danlu's special tokens; the script asserts that they give the same vocabulary, the same merges and the
same tokenizer.json, then prints the medians of --repeats trainings (wall and process CPU time, the
order alternating) and the ratio. WordPiece and Unigram are trained once each, through the path of
`tokenizer.trainer=wordpiece|unigram` (danlu.tokenizer.subword: byte-level, same vocabulary size), for a
compression comparison: UTF-8 bytes per token on the validation split, as the tokenizer stage reports it.

    python benchmarks/bpe_trainer.py [--docs DIR] [--vocab 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown, markdown_table
from danlu.data.documents import document_texts, run_data
from danlu.recipe import load_recipe
from danlu.tokenizer import Tokenizer, tokenizer_stats


def documents(docs: str | None) -> Path:
    if docs:
        return Path(docs)
    out = Path(tempfile.mkdtemp(prefix="danlu-bpe-bench-")) / "data"
    run_data(load_recipe("recipes/tiny-cpu.yaml").data, out)
    return out


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", help="a documents folder (default: make tiny-cpu's in a temporary folder)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    docs = documents(args.docs)
    train, val = list(document_texts(docs, "train")), list(document_texts(docs, "val"))

    times: dict[str, list[tuple[float, float]]] = {"hf": [], "danlu": []}
    toks: dict[str, Tokenizer] = {}
    for r in range(args.repeats):
        for name in ["hf", "danlu"] if r % 2 == 0 else ["danlu", "hf"]:
            wall, cpu, toks[name] = timed(lambda n=name: Tokenizer.train(train, args.vocab, trainer=n))
            times[name].append((wall, cpu))
    ref, ours = (json.loads(toks[k].hf.to_str())["model"] for k in ("hf", "danlu"))
    assert ours["vocab"] == ref["vocab"], "the trainers' vocabularies differ"
    assert ours["merges"] == ref["merges"], "the trainers' merges differ"
    assert toks["danlu"].hf.to_str() == toks["hf"].hf.to_str(), "the tokenizer.json files differ"

    med = {
        k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()
    }
    mb = sum(len(t.encode("utf-8")) for t in train) / 1e6
    print(
        f"corpus: {docs} train split, {len(train)} documents, {mb:.2f} MB; vocab {args.vocab}, "
        f"min_frequency 2; {len(ref['merges'])} merges, identical vocab, merges and tokenizer.json: yes"
    )
    rows = [
        [name, f"{med[name][0]:.2f}", f"{med[name][1]:.2f}", f"{med[name][0] / med['hf'][0]:.1f}x"]
        for name in ("hf", "danlu")
    ]
    print(markdown_table(["BPE trainer", "wall s (median)", "CPU s (median)", "wall vs hf"], rows))

    # the tokenizer stage's own path: Tokenizer.train(trainer=...) and the stats it reports on val
    comp = [["bpe (hf = danlu)", "-", f"{tokenizer_stats(toks['hf'], val)['bytes_per_token']:.3f}"]]
    for kind in ("wordpiece", "unigram"):
        wall, _, tok = timed(lambda k=kind: Tokenizer.train(train, args.vocab, trainer=k))
        comp.append([kind, f"{wall:.2f}", f"{tokenizer_stats(tok, val)['bytes_per_token']:.3f}"])
    print(markdown_table(["trainer", "wall s (once)", f"val bytes/token ({len(val)} documents)"], comp))
    print(machine_markdown())


if __name__ == "__main__":
    main()
