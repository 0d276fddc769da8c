"""Pruning a real model: held-out perplexity before and after magnitude and 2:4 pruning, and after a
short recovery finetune with the masks kept.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/prune.py [--model runs/smollm2]

Every variant goes through the prune stage (danlu.compress.prune.run_prune, what `danlu prune` runs):
the Linears of the blocks are pruned (embeddings and the tied output head kept), the sparsity is
measured on the written weights, and the perplexity is exp(mean next-token loss) over the same
held-out windows (the last 5% of --chars of Jane Austen's novels, from the danlu corpus cache). The
recovery finetune trains on the rest of that text, every pruned weight held at zero.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown, markdown_table
from danlu.compress.config import PruneConfig, default_train
from danlu.compress.masks import holds_nm
from danlu.compress.prune import run_prune
from danlu.data.corpora import read_corpus
from danlu.model_dir import load_model

VARIANTS = {
    "magnitude 50% per layer": ("magnitude", 0.5, "layer", 0),
    "magnitude 50% global": ("magnitude", 0.5, "global", 0),
    "magnitude 70% per layer": ("magnitude", 0.7, "layer", 0),
    "2:4": ("2:4", 0.5, "layer", 0),
    "magnitude 50% per layer + recovery": ("magnitude", 0.5, "layer", -1),
    "2:4 + recovery": ("2:4", 0.5, "layer", -1),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="runs/smollm2")
    ap.add_argument("--out", default="runs/distill-prune-bench")
    ap.add_argument("--recover-steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--chars", type=int, default=1_500_000)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    ap.add_argument("--keep", action="store_true", help="keep the pruned model dirs")
    args = ap.parse_args()

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text_file = out / "austen.txt"
    if not text_file.is_file():
        text = "\n\n".join(d["text"] for d in read_corpus("austen"))[: args.chars]
        text_file.write_text(text, encoding="utf-8")
    train = default_train()
    train.batch_size, train.seq_len, train.lr = args.batch_size, args.seq_len, args.lr
    train.eval_batches, train.device, train.log_every, train.warmup_steps = args.eval_batches, "cpu", 10, 3

    rows, before = [], None
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        method, sparsity, scope, steps = VARIANTS[name]
        steps = args.recover_steps if steps < 0 else 0
        cfg = PruneConfig(method=method, sparsity=sparsity, scope=scope, recover_steps=steps,
                          data=(str(text_file),), train=train)  # fmt: skip
        dest = out / name.replace(" ", "_").replace(",", "").replace("%", "").replace(":", "-").replace(
            "+", ""
        )
        t0 = time.perf_counter()
        result = run_prune(cfg, args.model, dest, force=True)
        seconds = time.perf_counter() - t0
        losses, report = result["val_loss"], result["report"]
        before = losses["before"]
        by_kind = defaultdict(list)
        for layer, r in report["layers"].items():
            by_kind[layer.rsplit(".", 1)[-1]].append(r["sparsity"])
        kinds = ", ".join(f"{k} {min(v):.3f}-{max(v):.3f}" for k, v in by_kind.items())
        if method == "2:4":
            model = load_model(dest)[0]
            modules = dict(model.named_modules())
            assert all(holds_nm(modules[n].weight) for n in report["layers"]), "a group breaks 2:4"
        after = losses.get("recovered", losses["pruned"])
        rows.append([name, f"{report['sparsity']:.4f}", f"{report['model_sparsity']:.4f}",
                     f"{math.exp(losses['pruned']):.2f}",
                     f"{math.exp(losses['recovered']):.2f}" if "recovered" in losses else "-",
                     f"{math.exp(after) / math.exp(before):.3f}x", f"{seconds:.0f}"])  # fmt: skip
        print(
            f"{name}: {len(report['layers'])} pruned layers, per-layer sparsity by kind: {kinds}", flush=True
        )
        if not args.keep:
            shutil.rmtree(dest)
            shutil.rmtree(dest.with_name(dest.name + ".recover"), ignore_errors=True)
    assert before is not None
    print(f"\n## {args.model}: held-out perplexity {math.exp(before):.2f} before pruning "
          f"({args.eval_batches} windows of {args.batch_size}x{args.seq_len} tokens of Austen)")  # fmt: skip
    print(markdown_table(["variant", "sparsity of pruned layers", "of all parameters", "ppl pruned",
                          f"ppl after {args.recover_steps} recovery steps", "final / before", "seconds"],
                         rows))  # fmt: skip
    print(f"recovery: lr {args.lr}, {args.batch_size}x{args.seq_len} tokens per step; the machine was shared")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    print(machine_markdown())


if __name__ == "__main__":
    main()
