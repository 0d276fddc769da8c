"""The scaling-law miniseries: tiny models of growing size on the same tokens, L(N) fitted, a prediction.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/plan_sweep.py \\
        --sizes 2x64 2x96 3x128 3x160 4x192 --holdout 4x256 --tokens 1e6 --out runs/plan-size

The data, tokenizer and pack stages of recipes/plan-sweep.yaml run once (in OUT/base); then every size
(LAYERSxWIDTH with 32-wide heads, or dN for the `model.depth` dial) is pretrained on the same number
of tokens, one run at a time in a fresh one-thread process, with a cosine LR that decays to the end
of that budget and the width rule's peak LR (times --lr-scale), so every final loss is the end point
of a finished schedule. L(N) = E + A / N^alpha (N: non-embedding parameters, or --params total) is
fitted to the final validation losses of the --sizes by least squares, with residual-bootstrap 95%
intervals (danlu.plan.fit.fit_size_runs), and predicts each --holdout size's final loss. Beside the
law the script prints what a reader could guess without it: the fitted sizes' mean loss, the largest
fitted size's loss, and a straight line in log N through the fitted losses. A run whose result.json
records the same steps and LR is reused (--retrain: train again).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown, markdown_table

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "plan-sweep.yaml"
HEAD_DIM = 32


def size_overrides(size: str) -> list[str]:
    """Recipe overrides of one size: 'dN' (the depth dial) or 'LxW' (L layers, width W)."""
    if size.startswith("d"):
        return [f"--model.depth={int(size[1:])}"]
    layers, width = (int(v) for v in size.split("x"))
    return [f"--model.n_layer={layers}", f"--model.n_embd={width}", f"--model.n_head={width // HEAD_DIM}"]


def recipe(size: str, extra: list[str]) -> object:
    from danlu.recipe import load_recipe

    return load_recipe(RECIPE, [*size_overrides(size), *extra])


def train_one(size: str, steps: int, lr: float, evals: int, out: Path) -> None:
    """Child process: pretrain one size for `steps` steps at peak LR `lr`; write result.json."""
    from danlu.config import save_yaml
    from danlu.run import RunLayout
    from danlu.train.pretrain import run_pretrain

    layout = RunLayout(out / "base")
    cfg = recipe(
        size,
        [
            f"--train.max_steps={steps}",
            f"--train.lr={lr}",
            f"--train.eval_every={max(1, math.ceil(steps / evals))}",
            f"--run_dir={out / size}",
            f"--name=plan-sweep-{size}",
        ],
    )
    cfg.run_path.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, cfg.run_path / "config.yaml")
    start = time.perf_counter()
    result = run_pretrain(cfg, layout.tokens, layout.tokenizer, cfg.run_path)
    wall = time.perf_counter() - start
    summary = {
        "size": size,
        "steps": steps,
        "lr": lr,
        "val_loss": result["val_loss"],
        "tokens_per_s": result.get("tokens_per_s"),
        "wall_s": wall,
        "load_end": os.getloadavg()[0],
    }
    tmp = cfg.run_path / "result.json.tmp"
    tmp.write_text(json.dumps(summary))
    tmp.replace(cfg.run_path / "result.json")


def launch(size: str, steps: int, lr: float, evals: int, out: Path, retrain: bool) -> dict:
    done = out / size / "result.json"
    if done.is_file() and not retrain:
        r = json.loads(done.read_text())
        if r["steps"] == steps and math.isclose(r["lr"], lr):
            return {**r, "reused": True}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--one", size, str(steps), repr(lr), str(evals), "--out", str(out)]
    log = out / f"{size}.log"
    with open(log, "w") as fh:
        code = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"size {size} failed (exit {code}); see {log}")
    r = json.loads(done.read_text())
    print(f"{size} done: val loss {r['val_loss']:.4f}, {r['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return {**r, "reused": False}


def plot(report: object, fitted: list, held: list, curves: dict, png: str) -> Path:
    """Final loss against N with the law and its bootstrap band; each run's validation curve."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ns = [n for _, n, _ in fitted + held]
    grid = np.geomspace(min(ns) / 1.3, max(ns) * 1.3, 100)
    band = np.array([b.loss(grid) for b in report.boots])
    ax1.fill_between(grid, *np.quantile(band, [0.025, 0.975], axis=0), color="C0", alpha=0.2, lw=0)
    law = report.law
    label = f"L = {law.E:.3f} + {law.A:.3g} / N^{law.alpha:.3f} (95% band)"
    ax1.plot(grid, law.loss(grid), "-", color="C0", label=label)
    ax1.plot([n for _, n, _ in fitted], [y for _, _, y in fitted], "o", color="C0", label="fitted sizes")
    ax1.plot([n for _, n, _ in held], [y for _, _, y in held], "s", color="C3", label="held out (measured)")
    for size, n, _ in fitted + held:
        ax1.annotate(size, (n, law.loss(n)), textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax1.set(xscale="log", xlabel="parameters N", ylabel="final validation loss (nats)")
    ax1.legend(fontsize=7)
    cmap = plt.get_cmap("viridis")
    for i, (size, (tokens, losses)) in enumerate(curves.items()):
        ax2.plot(tokens, losses, "o-", ms=3, color=cmap(i / max(len(curves) - 1, 1)), label=size)
    ax2.set(xscale="log", xlabel="tokens trained", ylabel="validation loss (nats)", title="runs (cosine LR)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    out = Path(png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["2x64", "2x96", "3x128", "3x160", "4x192"])
    p.add_argument("--holdout", nargs="*", default=["4x256"], help="larger sizes to predict")
    p.add_argument("--tokens", type=float, default=1e6, help="training tokens of every run")
    p.add_argument("--lr-scale", type=float, default=1.0, help="times the width rule's peak LR")
    p.add_argument("--params", choices=("non_embedding", "total"), default="non_embedding")
    p.add_argument("--evals", type=int, default=4, help="evaluations per run")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--out", default="runs/plan-size")
    p.add_argument("--plot", default="benchmarks/results/plan_sweep.png")
    p.add_argument("--retrain", action="store_true", help="train even where result.json exists")
    p.add_argument("--one", nargs=4, metavar=("SIZE", "STEPS", "LR", "EVALS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    out = Path(args.out)
    if args.one:
        import torch

        torch.set_num_threads(1)
        size, steps, lr, evals = args.one
        train_one(size, int(steps), float(lr), int(evals), out)
        return

    import numpy as np

    from danlu.model.presets import resolve_model_config, suggested_lr
    from danlu.plan.fit import fit_size_runs, read_run
    from danlu.plan.flops import model_shape
    from danlu.run import RunLayout, run_stages

    start, load_start = time.perf_counter(), os.getloadavg()
    base = recipe(args.sizes[0], [f"--run_dir={out / 'base'}", "--train.max_steps=1"])
    run_stages(base, ("data", "tokenizer", "pack"))
    vocab = json.loads((RunLayout(base.run_path).tokens / "index.json").read_text())["vocab_size"]
    plan = []
    for size in [*args.sizes, *args.holdout]:
        probe = recipe(size, [])
        shape = model_shape(probe.model, vocab)
        t = probe.train
        batch_tokens = t.batch_size * t.seq_len * t.grad_accum
        steps = max(1, math.ceil(args.tokens / batch_tokens))
        lr = args.lr_scale * suggested_lr(resolve_model_config(probe.model, vocab))
        n = shape.n_non_embedding if args.params == "non_embedding" else shape.n_params
        plan.append((size, shape, n, steps, batch_tokens, lr))
    results = {s: launch(s, steps, lr, args.evals, out, args.retrain) for s, _, _, steps, _, lr in plan}

    rows = []
    for size, shape, _, steps, batch_tokens, lr in plan:
        r = results[size]
        rows.append(
            [
                size,
                f"{shape.n_params:,}",
                f"{shape.n_non_embedding:,}",
                f"{steps * batch_tokens:,}",
                f"{lr:.3g}",
                f"{r['val_loss']:.4f}",
                f"{r['wall_s']:.0f}" + (" (reused)" if r["reused"] else ""),
                "held out" if size in args.holdout else "fit",
            ]
        )
    header = ["size", "params", "non-emb params", "tokens", "peak LR", "final val loss", "wall s", "role"]
    print(f"recipes/plan-sweep.yaml, {args.tokens:,.0f} training tokens per run, one run at a time")
    print(f"(cosine to 0.1 x peak at the last step; peak LR = {args.lr_scale:g} x the width rule)\n")
    print(markdown_table(header, rows))

    fitted = [(s, n, results[s]["val_loss"]) for s, _, n, *_ in plan if s not in args.holdout]
    held = [(s, n, results[s]["val_loss"]) for s, _, n, *_ in plan if s in args.holdout]
    ns, ys = np.array([n for _, n, _ in fitted], float), np.array([y for _, _, y in fitted])
    report = fit_size_runs(ns, ys, n_boot=args.bootstrap)
    law, ci = report.law, report.intervals
    print(f"\nL(N) = E + A / N^alpha, N = {args.params.replace('_', '-')} parameters, least squares on the")
    print(f"final losses of {len(fitted)} sizes ({ns.max() / ns.min():.1f}x in N); {len(report.boots)} ")
    print("residual-bootstrap refits (residuals scaled by sqrt(P / (P - 3))):\n")
    print(
        markdown_table(
            ["coefficient", "fit", "95% interval"],
            [[k, f"{getattr(law, k):.4g}", f"[{ci[k][0]:.4g}, {ci[k][1]:.4g}]"] for k in ("E", "A", "alpha")],
        )
    )
    print(f"\nrmse of the fit: {law.rmse:.4f} nats")
    # what a reader could guess without the law
    slope, icpt = np.polyfit(np.log(ns), ys, 1)
    guesses = {
        "L(N) law": lambda n: report.predict(n)[0],
        "mean of fitted losses": lambda n: float(ys.mean()),
        "largest fitted size's loss": lambda n: float(ys[np.argmax(ns)]),
        "line in log N through fitted": lambda n: float(icpt + slope * math.log(n)),
    }
    hrows = []
    for size, n, y in held:
        pred, lo, hi = report.predict(n)
        hrows.append([size, f"{n:,}", f"{y:.4f}", f"{pred:.4f} [{lo:.4f}, {hi:.4f}]"])
        hrows[-1] += [f"{100 * (g(n) / y - 1):+.2f}%" for g in guesses.values()]
    print()
    print(markdown_table(["held out", "N", "measured", "law (95%)", *guesses], hrows))
    worst = max((abs(report.predict(n)[0] / y - 1) for _, n, y in held), default=math.nan)
    print(f"\nlargest held-out error of the law: {100 * worst:.2f}% (goal: within 2%)")
    curves = {}
    for size, *_ in plan:
        run = read_run(out / size)
        curves[size] = (run.tokens, run.losses)
    print(f"plot: {plot(report, fitted, held, curves, args.plot)}")
    load_end = os.getloadavg()
    print(f"total wall time: {time.perf_counter() - start:.0f} s")
    print(f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f} (1 min)")
    print(machine_markdown())


if __name__ == "__main__":
    main()
