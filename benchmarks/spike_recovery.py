"""A corrupted batch injected into the default recipe: the spike guard detects it, rolls back to the
last checkpoint, skips the batch, and the run returns to the clean run's curve.

Runs pretraining twice on the tokens of an existing `danlu run` (default runs/tiny-cpu): clean, and
with every target of the batch at --at-step replaced by <|pad|> (a token never seen as a target).
Writes a PNG of both curves and prints the final validation losses.

    python benchmarks/spike_recovery.py [--run runs/tiny-cpu] [--at-step 300] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

from _machine import machine_markdown, markdown_table
from danlu.data.loader import TrainLoader
from danlu.recipe import load_recipe
from danlu.tokenizer import Tokenizer
from danlu.train.metrics import read_metrics
from danlu.train.pretrain import run_pretrain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/tiny-cpu.yaml")
    ap.add_argument("--run", default="runs/tiny-cpu", help="a finished `danlu run` whose tokens/ are used")
    ap.add_argument("--at-step", type=int, default=300)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    run, out = Path(args.run), Path(args.out)
    cfg = load_recipe(args.recipe, [])
    tokens, tokenizer = run / "tokens", run / "tokenizer"
    clean = run_pretrain(cfg, tokens, tokenizer, out / "spike-clean")

    pad = Tokenizer.load(tokenizer).pad_id
    original, calls = TrainLoader.next_batch, {"n": 0}

    def corrupted(self: TrainLoader) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = original(self)
        calls["n"] += 1
        return (x, torch.full_like(y, pad)) if calls["n"] == args.at_step * cfg.train.grad_accum else (x, y)

    TrainLoader.next_batch = corrupted  # type: ignore[method-assign]
    hit = run_pretrain(cfg, tokens, tokenizer, out / "spike-injected")
    TrainLoader.next_batch = original  # type: ignore[method-assign]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, style in (("spike-clean", "-"), ("spike-injected", "--")):
        recs = read_metrics(out / name / "metrics.jsonl")
        steps = [r for r in recs if "loss" in r and "event" not in r]
        ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], style, lw=1, label=f"{name} train")
        val = [r for r in recs if "val_loss" in r]
        ax.plot(
            [r["step"] for r in val], [r["val_loss"] for r in val], "o" + style, ms=4, label=f"{name} val"
        )
        for ev in (r for r in recs if r.get("event") in ("rollback", "spike")):
            ax.axvline(ev["step"], color="tab:red", lw=0.8, ls=":")
            ax.annotate(
                f"{ev['event']} (loss {ev['loss']:.1f})", (ev["step"], ax.get_ylim()[1]), fontsize=8, va="top"
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    png = out / "spike_recovery.png"
    fig.savefig(png, bbox_inches="tight")
    events = [
        r
        for r in read_metrics(out / "spike-injected" / "metrics.jsonl")
        if r.get("event") in ("rollback", "spike")
    ]
    rows = [
        ["clean", f"{clean['val_loss']:.4f}", f"{clean['val_bpb']:.4f}", "-"],
        [f"corrupted batch at step {args.at_step}", f"{hit['val_loss']:.4f}", f"{hit['val_bpb']:.4f}",
         "; ".join(f"{e['event']} at {e['step']} (loss {e['loss']:.2f}) to step {e.get('to_step', '-')}" for e in events)],
    ]  # fmt: skip
    print(markdown_table(["run", "final val loss", "val bpb", "guard events"], rows))
    print(
        f"\nrelative difference of final val loss: {abs(hit['val_loss'] - clean['val_loss']) / clean['val_loss']:.2%}"
    )
    print(f"plot: {png}\n{machine_markdown()}")


if __name__ == "__main__":
    main()
