"""GRPO on arithmetic with verifiable rewards: greedy exact match on held-out problems, before and after.

Runs the align stage as the CLI does (`danlu align recipes/tiny-cpu-align.yaml --method grpo ...`) on a
copy of an imported model dir (the original is only read), bounded by train.max_minutes of training
wall time (rollouts included; the two evaluations are not), then prints from the run dir:

    the held-out problems: distinct questions drawn with the held-out seed, none of them ever a
    training prompt (the stage excludes them from every rollout), each scored greedily by the
    stage's own evaluation before step 1 and after the last step (last number of the reply = the
    answer, GSM8K's extraction; "format" = the reply is the bare number)
    exact match before and after with Wilson 95% intervals, the paired flips (wrong -> right,
    right -> wrong) and the exact two-sided McNemar p-value of those flips
    the training rollouts' mean correctness, format and reward, a few steps at a time
    the load average at the start and the end (the machine is shared)

and writes benchmarks/results/grpo.png (the rollouts' correctness and format by step).

    python benchmarks/grpo.py --minutes 30                 # train, then report
    python benchmarks/grpo.py --report-only --run-dir R     # report an earlier run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact p-value of b vs c discordant pairs under p = 1/2."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def train(args: argparse.Namespace) -> list[str]:
    run_dir = Path(args.run_dir)
    base = run_dir / "base"
    if not base.is_dir():  # a copy: the stage only reads its base, the original is never opened for writing
        shutil.copytree(args.base, base)
    steps = 1000  # the time budget ends the run; the schedule is constant after warmup
    cmd = [
        str(ROOT / ".venv" / "bin" / "danlu"), "align", "recipes/tiny-cpu-align.yaml", "--method", "grpo",
        f"--run_dir={run_dir}", f"--align.base={base}",
        "--align.rl.task=arith", f"--align.rl.digits={args.digits}", f"--align.rl.ops={args.ops}",
        f"--align.rl.eval_prompts={args.held_out}", f"--align.rl.group_size={args.group_size}",
        f"--align.rl.max_new_tokens={args.max_new_tokens}", f"--align.rl.format_weight={args.format_weight}",
        f"--align.rl.kl_coef={args.beta}", f"--align.rl.temperature={args.temperature}",
        f"--align.data.template={args.template}", f"--align.train.batch_size={args.batch_size}",
        f"--align.train.lr={args.lr}",
        f"--align.train.max_minutes={args.minutes}", f"--align.train.max_steps={steps}",
        "--align.train.schedule=constant", "--align.train.warmup_steps=2",
        f"--align.train.eval_every={steps}", f"--align.train.ckpt_every={steps}", "--align.train.log_every=1",
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    print(f"$ OMP_NUM_THREADS={args.threads} danlu {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return cmd


def report(run_dir: Path, wall_s: float | None) -> None:
    from _machine import machine_markdown, markdown_table
    from danlu.model_dir import load_tokenizer

    out = run_dir / "align"
    data = out / "data"
    before = json.loads((data / "held_out_before.json").read_text())
    after = json.loads((data / "held_out_after.json").read_text())
    assert len(before) == len(after) and [b["answer"] for b in before] == [a["answer"] for a in after]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if "correct" in r and "loss" in r]
    budget = [r for r in recs if r.get("event") == "time_budget"]
    rl = json.loads((out / "model" / "config.json").read_text())["align"]["rl"]
    n = len(before)
    k0, k1 = int(sum(b["correct"] for b in before)), int(sum(a["correct"] for a in after))
    up = sum(1 for b, a in zip(before, after, strict=True) if not b["correct"] and a["correct"])
    down = sum(1 for b, a in zip(before, after, strict=True) if b["correct"] and not a["correct"])
    f0, f1 = sum(b["format"] for b in before) / n, sum(a["format"] for a in after) / n
    elapsed = budget[-1]["elapsed"] if budget else (train_recs[-1].get("elapsed") if train_recs else None)
    last_step = train_recs[-1]["step"] if train_recs else 0
    print(
        f"run: {run_dir}  (base {json.loads((out / 'model' / 'config.json').read_text())['align']['base']})"
    )
    print(
        f"task: {rl['digits']}-digit problems over {rl['ops']!r}, group {rl['group_size']}, "
        f"max_new_tokens {rl['max_new_tokens']}, temperature {rl['temperature']}, beta {rl['kl_coef']}, "
        f"format_weight {rl['format_weight']}, norm {rl['norm']}"
    )
    minutes = f"{elapsed / 60:.1f} min of training" if elapsed is not None else "training time not logged"
    stop = "stopped by the time budget" if budget else "ran to max_steps"
    print(f"training: {last_step} steps (one rollout each), {minutes}, {stop}" + (
        f"; whole command {wall_s / 60:.1f} min with both evaluations" if wall_s else ""))  # fmt: skip
    print(f"held-out problems: {n} distinct, never a training prompt; greedy decoding")
    first_prompt = json.loads((data / "prompts.json").read_text())["val"][0][0]
    tok = load_tokenizer(run_dir / "base")
    print(f"first held-out prompt: {tok.decode(first_prompt)!r}")
    rows = []
    for name, k, f in (("before (base)", k0, f0), ("after GRPO", k1, f1)):
        lo, hi = wilson(k, n)
        rows.append([name, f"{k}/{n}", f"{k / n:.3f}", f"[{lo:.3f}, {hi:.3f}]", f"{f:.3f}"])
    print(markdown_table(["model", "correct", "exact match", "Wilson 95%", "format"], rows))
    print(
        f"paired flips: wrong->right {up}, right->wrong {down}, net {up - down:+d} of {n}; "
        f"exact McNemar p = {mcnemar_exact(up, down):.4g}"
    )
    if train_recs:
        chunk = max(1, math.ceil(len(train_recs) / 8))
        rows = []
        for i in range(0, len(train_recs), chunk):
            part = train_recs[i : i + chunk]
            mean = {k: sum(r[k] for r in part) / len(part) for k in ("correct", "format", "reward")}
            rows.append([f"{part[0]['step']}-{part[-1]['step']}", *(f"{mean[k]:.3f}" for k in mean)])
        print("training rollouts (sampled, mean over the steps):")
        print(markdown_table(["steps", "correct", "format", "reward"], rows))
        _plot(train_recs)
    for label, recs_ in (("before", before), ("after", after)):
        print(f"sample replies {label}: " + " | ".join(repr(r["reply"]) for r in recs_[:4]))
    print(machine_markdown())


def _plot(train_recs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in train_recs]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("correct", "format"):
        ax.plot(steps, [r[key] for r in train_recs], marker=".", label=f"rollout {key}")
    ax.set_xlabel("step (one rollout)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    ax.set_title("GRPO on SmolLM2-135M: training rollouts")
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / "grpo.png", dpi=100)
    print(f"plot: {RESULTS / 'grpo.png'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="runs/smollm2", help="the imported model dir (copied, never written)")
    p.add_argument("--run-dir", default="runs/rl-grpo/bench")
    p.add_argument("--minutes", type=float, default=30.0, help="training wall-time budget")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the run")
    p.add_argument("--digits", type=int, default=1)
    p.add_argument("--ops", default="+-")
    p.add_argument("--held-out", type=int, default=100)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4, help="prompts per rollout")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--format-weight", type=float, default=0.5)
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient (TRL's default 0)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--template", default="auto", help="chat template (chatml: no default system prompt)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    threads = "" if args.report_only else f"  (OMP_NUM_THREADS={args.threads})"
    print(f"load average at start: {load_avg()}{threads}", flush=True)
    wall = None
    if not args.report_only:
        t0 = time.perf_counter()
        train(args)
        wall = time.perf_counter() - t0
    report(Path(args.run_dir), wall)
    print(f"load average at end: {load_avg()}")


if __name__ == "__main__":
    main()
