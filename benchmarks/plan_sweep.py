"""The scaling-law miniseries: tiny models by depth, equal training FLOPs or tokens, a fit, a prediction.

    python benchmarks/plan_sweep.py                      # depths 2-6 fitted, 7 held out, 6e11 FLOPs each
    python benchmarks/plan_sweep.py --depths 1 2 3 4 5 --holdout 6 --tokens 51200 --evals 8 \\
        --out runs/plan-sweep-tokens                     # every size on the same 51,200 tokens
    (the same fit by hand: danlu plan fit runs/plan-sweep/d[2-6] --holdout runs/plan-sweep/d7)

The data, tokenizer and pack stages of recipes/plan-sweep.yaml run once (in OUT/base); then every depth
is pretrained on those tokens (`model.depth=N`) for the steps that spend the same training FLOPs (the
model's own FLOP count per token times tokens), or with --tokens the same tokens, with the recipe's
constant LR. Runs go in fresh processes, `--workers` at a time with one torch thread each (on a shared
2-core machine two single-thread runs lose less to thread synchronisation than one two-thread run).
Each run directory gets the recipe it ran as config.yaml, which `danlu plan fit` reads. L(N, D) is
then fitted to the fitted depths' evaluation curves (danlu.plan.fit), with bootstrap intervals and a
plot, and the law predicts each held-out depth's final loss. A run whose result.json records the same
step count is reused (its wall time is the one it recorded; --retrain: train again).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown, markdown_table

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "plan-sweep.yaml"


def train_one(depth: int, steps: int, evals: int, out: Path) -> None:
    """Child process: pretrain one depth for `steps` steps; write result.json."""
    from danlu.config import save_yaml
    from danlu.recipe import load_recipe
    from danlu.run import RunLayout
    from danlu.train.pretrain import run_pretrain

    layout = RunLayout(out / "base")
    cfg = load_recipe(
        RECIPE,
        [
            f"--model.depth={depth}",
            f"--train.max_steps={steps}",
            f"--train.eval_every={max(1, steps // evals)}",
            f"--run_dir={out / f'd{depth}'}",
            f"--name=plan-sweep-d{depth}",
        ],
    )
    cfg.run_path.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, cfg.run_path / "config.yaml")
    start = time.perf_counter()
    result = run_pretrain(cfg, layout.tokens, layout.tokenizer, cfg.run_path)
    wall = time.perf_counter() - start
    summary = {"depth": depth, "steps": steps, "val_loss": result["val_loss"], "wall_s": wall}
    tmp = cfg.run_path / "result.json.tmp"
    tmp.write_text(json.dumps(summary))
    tmp.replace(cfg.run_path / "result.json")


def launch(depth: int, steps: int, evals: int, out: Path, retrain: bool) -> dict:
    done = out / f"d{depth}" / "result.json"
    if done.is_file() and not retrain:
        r = json.loads(done.read_text())
        if r["steps"] == steps:
            return {**r, "reused": True}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--one", str(depth), str(steps), str(evals), "--out", str(out)]
    log = out / f"d{depth}.log"
    with open(log, "w") as fh:
        code = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"depth {depth} failed (exit {code}); see {log}")
    print(f"depth {depth} done", file=sys.stderr, flush=True)
    return {**json.loads(done.read_text()), "reused": False}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    p.add_argument("--holdout", type=int, nargs="*", default=[7], help="larger depths to predict")
    p.add_argument("--flops", type=float, default=6e11, help="training FLOPs of every run")
    p.add_argument(
        "--tokens",
        type=float,
        default=None,
        help="train every size on this many tokens instead (not --flops)",
    )
    p.add_argument("--evals", type=int, default=6, help="evaluations per run")
    p.add_argument("--workers", type=int, default=2, help="runs at once (one torch thread each)")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--out", default="runs/plan-sweep")
    p.add_argument("--plot", default="benchmarks/results/plan_sweep.png")
    p.add_argument("--retrain", action="store_true", help="train even where result.json exists")
    p.add_argument("--one", type=int, nargs=3, metavar=("DEPTH", "STEPS", "EVALS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    out = Path(args.out)
    if args.one:
        import torch

        torch.set_num_threads(1)
        train_one(*args.one, out)
        return

    from danlu.plan.fit import fit_runs, plot_fit, read_run
    from danlu.plan.flops import model_shape
    from danlu.recipe import load_recipe
    from danlu.run import RunLayout, run_stages

    start = time.perf_counter()
    base = load_recipe(RECIPE, [f"--run_dir={out / 'base'}", "--train.max_steps=1"])
    run_stages(base, ("data", "tokenizer", "pack"))
    vocab = json.loads((RunLayout(base.run_path).tokens / "index.json").read_text())["vocab_size"]
    plan = []
    for depth in [*args.depths, *args.holdout]:
        probe = load_recipe(RECIPE, [f"--model.depth={depth}"])
        shape = model_shape(probe.model, vocab)
        t = probe.train
        per_step = shape.flops_per_token(t.seq_len) * t.batch_size * t.seq_len * t.grad_accum
        batch_tokens = t.batch_size * t.seq_len * t.grad_accum
        budget = args.tokens * per_step / batch_tokens if args.tokens else args.flops
        steps = max(1, math.ceil(budget / per_step))
        plan.append((depth, shape, steps, per_step, batch_tokens))
    # the largest (slowest) runs first, so that the pool ends with short ones
    order = sorted(plan, key=lambda x: -x[2] * x[3])
    with ThreadPoolExecutor(args.workers) as pool:
        futures = {
            d: pool.submit(launch, d, steps, args.evals, out, args.retrain) for d, _, steps, _, _ in order
        }
        results = {d: f.result() for d, f in futures.items()}
    rows = []
    for depth, shape, steps, per_step, batch_tokens in plan:
        r = results[depth]
        rows.append(
            [
                str(depth),
                f"{shape.n_params:,}",
                str(steps),
                f"{steps * batch_tokens:,}",
                f"{steps * per_step:.3g}",
                f"{r['val_loss']:.4f}",
                f"{r['wall_s']:.0f}" + (" (reused)" if r["reused"] else ""),
                "held out" if depth in args.holdout else "fit",
            ]
        )
    header = ["depth", "params", "steps", "tokens", "train FLOPs", "final val loss", "wall s", "role"]
    budget = f"{args.tokens:,.0f} training tokens" if args.tokens else f"{args.flops:.3g} training FLOPs"
    print(f"recipes/plan-sweep.yaml, {budget} per run, {args.workers} runs at once\n")
    print(markdown_table(header, rows))

    fitted = [read_run(out / f"d{d}") for d in args.depths]
    held = [read_run(out / f"d{d}") for d in args.holdout]
    report = fit_runs(fitted, held, n_boot=args.bootstrap)
    law, ci = report.law, report.intervals
    n_points = sum(len(r.tokens) for r in fitted)
    print(f"\nL(N, D) = E + A / N^alpha + B / D^beta, least squares on {n_points} evaluations of depths")
    print(
        f"{', '.join(map(str, args.depths))} (after 2 x warmup); {report.n_boot} residual-bootstrap refits:\n"
    )
    print(
        markdown_table(
            ["coefficient", "fit", "95% interval"],
            [
                [k, f"{getattr(law, k):.4g}", f"[{ci[k][0]:.4g}, {ci[k][1]:.4g}]"]
                for k in ("E", "A", "alpha", "B", "beta")
            ],
        )
    )
    print(f"\nrmse of the fit: {law.rmse:.4f} nats")
    if report.n_opt_law:
        k, a = report.n_opt_law
        lo, hi = report.n_opt_interval or (math.nan, math.nan)
        print(f"IsoFLOP optima: N* = {k:.3g} C^{a:.3f} (exponent 95% interval [{lo:.3f}, {hi:.3f}])")
    else:
        print(
            f"IsoFLOP optima: {sum(math.isfinite(c.n_opt) for c in report.isoflops)} slices with a vertex inside the sizes; no N*(C) law"
        )
    hrows = [
        [
            Path(str(h["path"])).name,
            f"{int(h['params']):,}",
            f"{int(h['tokens']):,}",
            f"{h['measured']:.4f}",
            f"{h['predicted']:.4f} [{h['predicted_lo']:.4f}, {h['predicted_hi']:.4f}]",
            f"{100 * float(h['error']):+.2f}%",
        ]
        for h in report.holdout
    ]
    print()
    print(
        markdown_table(["held out", "params", "tokens", "measured loss", "predicted (95%)", "error"], hrows)
    )
    worst = max((abs(float(h["error"])) for h in report.holdout), default=math.nan)
    print(f"\nlargest held-out error: {100 * worst:.2f}% (goal: within 2%)")
    # what a prediction without the law would score: the largest fitted size's final loss, and the
    # fitted sizes' mean final loss
    largest = max(fitted, key=lambda r: r.n_params).final_loss
    mean = sum(r.final_loss for r in fitted) / len(fitted)
    for name, guess in (
        ("largest fitted size's final loss", largest),
        ("fitted sizes' mean final loss", mean),
    ):
        errs = ", ".join(f"{100 * (guess / h.final_loss - 1):+.2f}%" for h in held)
        print(f"baseline, {name} ({guess:.4f}): {errs}")
    print(f"plot: {plot_fit(report, held, args.plot)}")
    print(f"total wall time: {time.perf_counter() - start:.0f} s")
    print(machine_markdown())


if __name__ == "__main__":
    main()
