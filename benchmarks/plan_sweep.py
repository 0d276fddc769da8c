"""The scaling-law miniseries: tiny models of growing size on the same tokens, L(N) fitted, a prediction.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/plan_sweep.py --sizes 2x64 2x96 3x128 3x160 4x192 \\
        --holdout 4x256 --tokens 7e5 --seeds 1337,1338,1339 --jobs 2 --out runs/plan-size

The data, tokenizer and pack stages of recipes/plan-sweep.yaml run once (in --base, by default OUT/base);
then every size (LAYERSxWIDTH with 32-wide heads, or dN for the `model.depth` dial) is pretrained with
every seed (`train.seed`: the initial weights and the order of the training windows) on the same number
of tokens, each run in a fresh one-thread process (--jobs at once), with a cosine LR that decays to the
end of that budget and the width rule's peak LR (times --lr-scale), so every final loss is the end point
of a finished schedule. L(N) = E + A / N^alpha (N: non-embedding parameters, or --params total) is
fitted by least squares to each --sizes size's final validation loss averaged over its seeds; the 95%
intervals resample the seeds within each size (one seed: the residuals; danlu.plan.fit.fit_size_seeds),
and the law predicts each --holdout size's seed-averaged final loss. Beside the law the script prints
what a reader could guess without it: the fitted sizes' mean loss, the largest fitted size's loss, and
a straight line in log N through the fitted losses.

A finished run is reused, never retrained (--retrain: train again), when its config.yaml holds exactly
the settings this command would train it with (all but its name and directory) and it trained on the
same token shards (checked by digest): runs in OUT as <size>-seed<seed>, and in each --reuse sweep
directory as <size>-seed<seed> or <size> (read only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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


def recipe(size: str, extra: list[str]) -> Any:
    from danlu.recipe import load_recipe

    return load_recipe(RECIPE, [*size_overrides(size), *extra])


def run_recipe(size: str, seed: int, steps: int, lr: float, evals: int, run_dir: Path) -> Any:
    """The recipe of one run: this size and seed, `steps` optimizer steps at peak LR `lr`."""
    return recipe(
        size,
        [
            f"--train.max_steps={steps}",
            f"--train.lr={lr!r}",
            f"--train.eval_every={max(1, math.ceil(steps / evals))}",
            f"--train.seed={seed}",
            f"--run_dir={run_dir}",
            f"--name=plan-sweep-{run_dir.name}",
        ],
    )


def settings(cfg: dict) -> dict:
    """What a run trains with: the resolved recipe less its name and directory, YAML-normalized."""
    return {k: v for k, v in json.loads(json.dumps(cfg)).items() if k not in ("name", "run_dir")}


def tokens_digest(base: Path) -> str:
    """sha256 of a prepared base's token shards and their index."""
    h = hashlib.sha256()
    tokens = base / "tokens"
    for path in [*sorted(tokens.glob("*.bin")), tokens / "index.json"]:
        h.update(path.name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def prepare_base(base: Path, size: str) -> None:
    """Run the data, tokenizer and pack stages into `base`, or check that a prepared one has this
    recipe's data and tokenizer settings (then it is only read)."""
    from danlu.config import load_yaml, to_dict
    from danlu.run import run_stages

    cfg = recipe(size, [f"--run_dir={base}", "--train.max_steps=1"])
    if not (base / "tokens" / "index.json").is_file():
        run_stages(cfg, ("data", "tokenizer", "pack"))
        return
    have, want = settings(load_yaml(base / "config.yaml")), settings(to_dict(cfg))
    for section in ("data", "tokenizer"):
        if have.get(section) != want[section]:
            raise SystemExit(f"{base} was prepared with other {section} settings than {RECIPE.name}")


def train_one(size: str, seed: int, steps: int, lr: float, evals: int, run_dir: Path, base: Path) -> None:
    """Child process: pretrain one size with one seed on the tokens of `base`; write result.json."""
    from danlu.config import save_yaml
    from danlu.run import RunLayout
    from danlu.train.pretrain import run_pretrain

    layout = RunLayout(base)
    cfg = run_recipe(size, seed, steps, lr, evals, run_dir)
    cfg.run_path.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, cfg.run_path / "config.yaml")
    start = time.perf_counter()
    result = run_pretrain(cfg, layout.tokens, layout.tokenizer, cfg.run_path)
    summary = {
        "size": size,
        "seed": seed,
        "steps": steps,
        "lr": lr,
        "val_loss": result["val_loss"],
        "tokens_per_s": result.get("tokens_per_s"),
        "wall_s": time.perf_counter() - start,
        "load_end": os.getloadavg()[0],
        "tokens_digest": tokens_digest(base),
    }
    tmp = cfg.run_path / "result.json.tmp"
    tmp.write_text(json.dumps(summary))
    tmp.replace(cfg.run_path / "result.json")


def finished_run(candidates: list[Path], expected: dict) -> Path | None:
    """The first candidate run dir that finished with exactly the `expected` settings."""
    from danlu.config import load_yaml

    for run in candidates:
        finished = (run / "result.json").is_file() and (run / "config.yaml").is_file()
        if finished and settings(load_yaml(run / "config.yaml")) == expected:
            return run
    return None


def launch(job: dict, args: argparse.Namespace) -> dict:
    """Reuse the finished run of `job` (size, seed, steps, lr) or train it in a child process."""
    from danlu.config import to_dict

    size, seed, out = job["size"], job["seed"], Path(args.out)
    run_dir = out / f"{size}-seed{seed}"
    expected = settings(to_dict(run_recipe(size, seed, job["steps"], job["lr"], args.evals, run_dir)))
    candidates = [run_dir] + [Path(r) / name for r in args.reuse for name in (f"{size}-seed{seed}", size)]
    found = None if args.retrain else finished_run(candidates, expected)
    if found is not None:
        return {**json.loads((found / "result.json").read_text()), "dir": found, "reused": True}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    one = [size, str(seed), str(job["steps"]), repr(job["lr"]), str(args.evals), str(run_dir)]
    cmd = [sys.executable, __file__, "--one", *one, "--base", str(args.base)]
    log = out / f"{size}-seed{seed}.log"
    with open(log, "w") as fh:
        code = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"size {size} seed {seed} failed (exit {code}); see {log}")
    r = json.loads((run_dir / "result.json").read_text())
    msg = f"{size} seed {seed} done: val loss {r['val_loss']:.4f}, {r['wall_s']:.0f} s, load {r['load_end']:.1f}"
    print(msg, file=sys.stderr, flush=True)
    return {**r, "dir": run_dir, "reused": False}


def check_reused_tokens(results: dict, base: Path) -> None:
    """Every reused run trained on the token shards of `base` (its sweep's base has the same digest)."""
    digest = tokens_digest(base)
    for r in results.values():
        if not r["reused"]:
            continue
        theirs = r.get("tokens_digest") or tokens_digest(Path(r["dir"]).parent / "base")
        if theirs != digest:
            raise SystemExit(f"{r['dir']} trained on other token shards than {base}; pass --retrain")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["2x64", "2x96", "3x128", "3x160", "4x192"])
    p.add_argument("--holdout", nargs="*", default=["4x256"], help="larger sizes to predict")
    p.add_argument("--tokens", type=float, default=7e5, help="training tokens of every run")
    p.add_argument(
        "--seeds", default="1337", help="comma-separated train.seed values, each size trained with each"
    )
    p.add_argument("--lr-scale", type=float, default=1.0, help="times the width rule's peak LR")
    p.add_argument("--params", choices=("non_embedding", "total"), default="non_embedding")
    p.add_argument("--evals", type=int, default=4, help="evaluations per run")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (one thread each)")
    p.add_argument("--out", default="runs/plan-size", help="where new runs go")
    p.add_argument("--base", help="prepared data/tokenizer/tokens to train on (default OUT/base)")
    p.add_argument("--reuse", nargs="*", default=[], help="other sweep dirs whose finished runs count")
    p.add_argument("--plot", default="benchmarks/results/plan_sweep.png")
    p.add_argument("--retrain", action="store_true", help="train even where a finished run matches")
    p.add_argument("--one", nargs=6, help=argparse.SUPPRESS)  # SIZE SEED STEPS LR EVALS RUN_DIR
    args = p.parse_args()
    args.base = Path(args.base or Path(args.out) / "base")
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    return args


def plan_jobs(args: argparse.Namespace, vocab: int) -> tuple[list[dict], list[dict]]:
    """(sizes, jobs): each size's shape, N, steps and LR; one job per size and seed, seed-major, so an
    interrupted sweep has whole seeds done."""
    from danlu.model.presets import resolve_model_config, suggested_lr
    from danlu.plan.flops import model_shape

    sizes = []
    for size in [*args.sizes, *args.holdout]:
        probe = recipe(size, [])
        shape = model_shape(probe.model, vocab)
        t = probe.train
        batch_tokens = t.batch_size * t.seq_len * t.grad_accum
        steps = max(1, math.ceil(args.tokens / batch_tokens))
        lr = args.lr_scale * suggested_lr(resolve_model_config(probe.model, vocab))
        n = shape.n_non_embedding if args.params == "non_embedding" else shape.n_params
        sizes.append(
            {"size": size, "shape": shape, "n": n, "steps": steps, "tokens": steps * batch_tokens, "lr": lr}
        )
    jobs = [{**s, "seed": seed} for seed in args.seed_list for s in sizes]
    return sizes, jobs


def report(args: argparse.Namespace, sizes: list[dict], results: dict) -> None:
    """The run table, the fit with its intervals, the held-out predictions against the baselines."""
    import numpy as np

    from danlu.plan.fit import fit_size_seeds, read_run
    from danlu.plan.fit_plots import SizePoint, plot_size_fit

    seeds = args.seed_list
    rows, points = [], {}
    for s in sizes:
        rs = [results[s["size"], seed] for seed in seeds]
        point = SizePoint(s["size"], float(s["n"]), tuple(r["val_loss"] for r in rs))
        points[s["size"]] = point
        rows.append(
            [
                s["size"],
                f"{s['shape'].n_params:,}",
                f"{s['shape'].n_non_embedding:,}",
                f"{s['tokens']:,}",
                f"{s['lr']:.3g}",
                " / ".join(f"{r['val_loss']:.4f}" for r in rs),
                f"{point.mean:.4f}",
                f"{point.spread:.4f}" if len(rs) > 1 else "-",
                " / ".join(f"{r['wall_s']:.0f}" for r in rs),
                "held out" if s["size"] in args.holdout else "fit",
            ]
        )
    reused = sum(r["reused"] for r in results.values())
    print(f"recipes/plan-sweep.yaml, {args.tokens:,.0f} training tokens per run, {args.jobs} run(s) at once")
    print(f"(cosine to 0.1 x peak at the last step; peak LR = {args.lr_scale:g} x the width rule)")
    print(f"seeds (train.seed: initial weights and data order): {', '.join(map(str, seeds))}")
    print(f"{reused} of {len(results)} runs reused from earlier sweeps (wall s: their recorded times)\n")
    seed_cols = "final val loss per seed"
    header = [
        "size",
        "params",
        "non-emb params",
        "tokens",
        "peak LR",
        seed_cols,
        "mean",
        "seed sd",
        "wall s",
        "role",
    ]
    print(markdown_table(header, rows))

    fitted = [points[s] for s in args.sizes]
    held = [points[s] for s in args.holdout]
    ns, ys = np.array([p.n for p in fitted]), np.array([p.mean for p in fitted])
    fit = fit_size_seeds(ns, [np.array(p.losses) for p in fitted], n_boot=args.bootstrap)
    law, ci = fit.law, fit.intervals
    how = {
        "seeds": "each size's seeds resampled (deviations from its mean scaled by sqrt(k / (k - 1)))",
        "residuals": "residuals resampled (scaled by sqrt(P / (P - 3)))",
    }[fit.resampling]
    print(f"\nL(N) = E + A / N^alpha, N = {args.params.replace('_', '-')} parameters, least squares on the")
    print(
        f"mean final losses of {len(fitted)} sizes ({ns.max() / ns.min():.1f}x in N, {len(seeds)} seed(s) each);"
    )
    print(f"{len(fit.boots)} bootstrap refits, {how}:\n")
    coef_rows = [
        [k, f"{getattr(law, k):.4g}", f"[{ci[k][0]:.4g}, {ci[k][1]:.4g}]"] for k in ("E", "A", "alpha")
    ]
    print(markdown_table(["coefficient", "fit", "95% interval"], coef_rows))
    print(f"\nrmse of the law through the fitted means: {law.rmse:.4f} nats")
    if len(seeds) > 1:
        se = float(np.median([p.spread / math.sqrt(len(p.losses)) for p in fitted]))
        print(f"median standard error of a fitted size's mean over its seeds: {se:.4f} nats")
    # what a reader could guess without the law
    slope, icpt = np.polyfit(np.log(ns), ys, 1)
    guesses = {
        "L(N) law": lambda n: fit.predict(n)[0],
        "mean of fitted losses": lambda n: float(ys.mean()),
        "largest fitted size's loss": lambda n: float(ys[np.argmax(ns)]),
        "line in log N through fitted": lambda n: float(icpt + slope * math.log(n)),
    }
    hrows, verdicts = [], []
    for p in held:
        pred, lo, hi = fit.predict(p.n)
        measured = f"{p.mean:.4f}" + (f" (sd {p.spread:.4f})" if len(p.losses) > 1 else "")
        row = [p.label, f"{p.n:,.0f}", measured, f"{pred:.4f} [{lo:.4f}, {hi:.4f}]"]
        hrows.append(row + [f"{100 * (g(p.n) / p.mean - 1):+.2f}%" for g in guesses.values()])
        inside = "inside" if lo <= p.mean <= hi else "OUTSIDE"
        verdicts.append(f"{p.label}: the measured mean {p.mean:.4f} is {inside} the law's 95% interval")
        if len(p.losses) > 1:
            elo, ehi = fit.error_interval(p.n, np.array(p.losses))
            verdicts.append(
                f"{p.label}: 95% interval of the law's error with the held-out seeds resampled too: "
                f"[{100 * elo:+.2f}%, {100 * ehi:+.2f}%]"
            )
    print()
    print(markdown_table(["held out", "N", "measured mean", "law (95%)", *guesses], hrows))
    print()
    print("\n".join(verdicts))
    worst = max((abs(fit.predict(p.n)[0] / p.mean - 1) for p in held), default=math.nan)
    best_guess = {k: max(abs(g(p.n) / p.mean - 1) for p in held) for k, g in guesses.items()} if held else {}
    beaten = [k for k, v in best_guess.items() if k != "L(N) law" and v <= worst]
    print(f"largest held-out error of the law: {100 * worst:.2f}% (goal: within 2%)")
    print("baselines at least as close as the law: " + (", ".join(beaten) if beaten else "none"))
    curves = {}
    for s in sizes:
        run = read_run(results[s["size"], seeds[0]]["dir"])
        curves[s["size"]] = (run.tokens, run.losses)
    png = plot_size_fit(
        fit, fitted, held, args.plot, curves=curves, curves_title=f"runs of seed {seeds[0]} (cosine LR)"
    )
    print(f"plot: {png}")


def main() -> None:
    args = parse_args()
    if args.one:
        import torch

        torch.set_num_threads(1)
        size, seed, steps, lr, evals, run_dir = args.one
        train_one(size, int(seed), int(steps), float(lr), int(evals), Path(run_dir), args.base)
        return

    from danlu.run import RunLayout

    start, load_start = time.perf_counter(), os.getloadavg()
    print(f"load average at start {load_start[0]:.2f} (1 min)", file=sys.stderr, flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    prepare_base(args.base, args.sizes[0])
    vocab = json.loads((RunLayout(args.base).tokens / "index.json").read_text())["vocab_size"]
    sizes, jobs = plan_jobs(args, vocab)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        done = list(pool.map(lambda job: launch(job, args), jobs))
    results = {(j["size"], j["seed"]): r for j, r in zip(jobs, done, strict=True)}
    check_reused_tokens(results, args.base)
    report(args, sizes, results)
    load_end = os.getloadavg()
    print(f"total wall time: {time.perf_counter() - start:.0f} s")
    print(f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f} (1 min)")
    print(machine_markdown())


if __name__ == "__main__":
    main()
