"""Mixture of experts against dense on the default recipe: validation loss per training FLOP, and how
evenly the router spreads tokens over the experts.

Trains three models on the tokens of an existing `danlu run` (default runs/tiny-cpu), same data,
steps and schedule: the dense default; an MoE with the same active FLOPs (8 experts of half the MLP
width, top-2: each token runs as much MLP as in the dense model, with 4x its MLP parameters); and an
MoE with experts as wide as the dense MLP (top-2 of 8, twice the active MLP FLOPs). Prints one table
(parameters, FLOPs per token, final validation loss and bits per byte, expert load) and writes
moe_loss_per_flop.png and moe_load.png.

    python benchmarks/moe.py [--run runs/tiny-cpu] [--steps 500] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_markdown, markdown_table
from danlu.model import build_model, resolve_model_config
from danlu.model.transformer import default_ffn_hidden
from danlu.recipe import load_recipe
from danlu.tokenizer import Tokenizer
from danlu.train.metrics import read_metrics
from danlu.train.pretrain import run_pretrain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/tiny-cpu.yaml")
    ap.add_argument("--run", default="runs/tiny-cpu", help="a finished `danlu run` whose tokens/ are used")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    run, out = Path(args.run), Path(args.out)
    base = load_recipe(args.recipe, [])
    ffn = default_ffn_hidden(base.model.n_embd)
    variants = {
        "dense": [],
        "moe-8x(ffn/2)-top2 (same active FLOPs)": ["--model.n_experts=8", f"--model.ffn_hidden={ffn // 2}"],
        "moe-8x(ffn)-top2": ["--model.n_experts=8"],
    }
    vocab = Tokenizer.load(run / "tokenizer").vocab_size
    results, rows = {}, []
    for name, overrides in variants.items():
        cfg = load_recipe(
            args.recipe, [f"--train.max_steps={args.steps}", "--train.log_every=10", *overrides]
        )
        model = build_model(resolve_model_config(cfg.model, vocab), "meta")
        fpt = model.flops_per_token(cfg.train.seq_len)
        slug = name.split(" ")[0].replace("(", "").replace(")", "").replace("/", "")
        shutil.rmtree(out / f"moe-{slug}", ignore_errors=True)  # never resume another length's run
        res = run_pretrain(cfg, run / "tokens", run / "tokenizer", out / f"moe-{slug}")
        recs = read_metrics(out / f"moe-{slug}" / "metrics.jsonl")
        loads = [r["moe_load"] for r in recs if "moe_load" in r]
        results[name] = (fpt, recs, loads)
        tokens = args.steps * cfg.train.batch_size * cfg.train.seq_len * cfg.train.grad_accum
        if loads:  # the last quarter of training, per expert, averaged over layers and logged steps
            tail = loads[len(loads) * 3 // 4 :]
            n_exp = len(tail[0][0])
            share = [sum(step[layer][e] for step in tail for layer in range(len(step))) for e in range(n_exp)]
            total = sum(share)
            share = [s / total for s in share]
            load = f"min {min(share):.3f} / max {max(share):.3f} (uniform {1 / n_exp:.3f})"
        else:
            load = "-"
        rows.append([
            name, f"{model.num_params() / 1e6:.2f}M", f"{fpt / 1e6:.1f}M", f"{fpt * tokens / 1e15:.3f}",
            f"{res['val_loss']:.4f}", f"{res['val_bpb']:.4f}", load,
        ])  # fmt: skip

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, (fpt, recs, _) in results.items():
        steps = [r for r in recs if "loss" in r and "event" not in r]
        ax.plot([fpt * r["tokens"] / 1e15 for r in steps], [r["loss"] for r in steps], lw=1, label=name)
    ax.set_xlabel("training PFLOPs")
    ax.set_ylabel("train loss (nats/token)")
    ax.set_ylim(top=6.5)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out / "moe_loss_per_flop.png", bbox_inches="tight")

    name = next(n for n in results if results[n][2])
    loads = results[name][2]
    fig, axes = plt.subplots(1, len(loads[-1]), figsize=(3.2 * len(loads[-1]), 3), dpi=100, squeeze=False)
    for layer, ax in enumerate(axes[0]):
        tail = loads[len(loads) * 3 // 4 :]
        share = [sum(step[layer][e] for step in tail) / len(tail) for e in range(len(tail[0][layer]))]
        ax.bar(range(len(share)), share)
        ax.axhline(1 / len(share), color="k", lw=0.8, ls="--")
        ax.set_title(f"layer {layer}: tokens per expert", fontsize=9)
        ax.set_xlabel("expert")
    fig.suptitle(f"{name}, last quarter of training", fontsize=9)
    fig.savefig(out / "moe_load.png", bbox_inches="tight")

    print(
        markdown_table(
            ["model", "params", "FLOPs/token", "train PFLOPs", "val loss", "val bpb", "expert load share"],
            rows,
        )
    )
    print(f"plots: {out / 'moe_loss_per_flop.png'}, {out / 'moe_load.png'}\n{machine_markdown()}")


if __name__ == "__main__":
    main()
