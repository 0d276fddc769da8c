"""The scaling-law miniseries of issue 25: tiny models by depth, equal training FLOPs, then a fit.

    python benchmarks/plan_sweep.py [--depths 2 3 4 5 6] [--holdout 7] [--flops 2e12]
    danlu plan fit runs/plan-sweep/d[2-6] --holdout runs/plan-sweep/d7

The data, tokenizer and pack stages of recipes/plan-sweep.yaml run once (in OUT/base); then every depth
is pretrained on those tokens (`model.depth=N`) for the steps that spend the same training FLOPs
(the model's own FLOP count per token times tokens), one after the other, with the recipe's constant LR.
Each run directory gets the recipe it ran as config.yaml, which `danlu plan fit` reads.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown, markdown_table
from danlu.config import save_yaml
from danlu.plan.flops import model_shape
from danlu.recipe import load_recipe
from danlu.run import RunLayout, run_stages
from danlu.train.pretrain import run_pretrain

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "plan-sweep.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    p.add_argument("--holdout", type=int, nargs="*", default=[7], help="larger depths to predict")
    p.add_argument("--flops", type=float, default=2e12, help="training FLOPs of every run")
    p.add_argument("--evals", type=int, default=8, help="evaluations per run")
    p.add_argument("--out", default="runs/plan-sweep")
    args = p.parse_args()
    out = Path(args.out)
    base = load_recipe(RECIPE, [f"--run_dir={out / 'base'}", "--train.max_steps=1"])
    run_stages(base, ("data", "tokenizer", "pack"))
    layout = RunLayout(base.run_path)
    vocab = json.loads((layout.tokens / "index.json").read_text())["vocab_size"]
    rows = []
    for depth in [*args.depths, *args.holdout]:
        probe = load_recipe(RECIPE, [f"--model.depth={depth}"])
        shape = model_shape(probe.model, vocab)
        t = probe.train
        per_step = shape.flops_per_token(t.seq_len) * t.batch_size * t.seq_len * t.grad_accum
        steps = max(1, math.ceil(args.flops / per_step))
        cfg = load_recipe(
            RECIPE,
            [
                f"--model.depth={depth}",
                f"--train.max_steps={steps}",
                f"--train.eval_every={max(1, steps // args.evals)}",
                f"--run_dir={out / f'd{depth}'}",
                f"--name=plan-sweep-d{depth}",
            ],
        )
        cfg.run_path.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, cfg.run_path / "config.yaml")
        start = time.perf_counter()
        result = run_pretrain(cfg, layout.tokens, layout.tokenizer, cfg.run_path)
        wall = time.perf_counter() - start
        rows.append(
            [
                str(depth),
                f"{shape.n_params:,}",
                str(steps),
                f"{steps * t.batch_size * t.seq_len:,}",
                f"{steps * per_step:.3g}",
                f"{result['val_loss']:.4f}",
                f"{wall:.0f}",
                "held out" if depth in args.holdout else "fit",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    header = ["depth", "params", "steps", "tokens", "train FLOPs", "final val loss", "wall s", "role"]
    print()
    print(markdown_table(header, rows))
    print(machine_markdown())


if __name__ == "__main__":
    main()
