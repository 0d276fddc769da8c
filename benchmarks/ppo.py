"""PPO-RLHF: the reward model's mean score on held-out prompts, and the KL to the reference, by step.

Runs the align stage as the CLI does (`danlu align recipes/tiny-cpu-align.yaml --method ppo ...`) with
a reward model written by `danlu align --method rm`, then prints from the run dir's metrics.jsonl:

    val_reward   the reward model's mean score of completions sampled (fixed seeds) for the held-out
                 prompts (prompts of the preference pairs' held-out split, never a rollout prompt)
    val_kl       the KL to the reference on those completions, summed over a completion's tokens
                 (nats), against align.rl.kl_target (the adaptive controller's target)
    the training rollouts' KL, KL coefficient, score and explained variance, a few steps at a time

and writes benchmarks/results/ppo.png (held-out score and KL with the target line).

    python benchmarks/ppo.py --sft runs/rl-ppo/sft-model --rm runs/rl-ppo/rm/align/model
    python benchmarks/ppo.py --report-only --run-dir runs/rl-ppo/bench
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

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def train(args: argparse.Namespace) -> None:
    cmd = [
        str(ROOT / ".venv" / "bin" / "danlu"), "align", "recipes/tiny-cpu-align.yaml", "--method", "ppo",
        f"--run_dir={args.run_dir}", f"--align.base={args.sft}", f"--align.rl.reward_model={args.rm}",
        f"--align.rl.max_new_tokens={args.max_new_tokens}", "--align.rl.epochs=2", "--align.rl.minibatches=2",
        f"--align.rl.kl_coef={args.kl_coef}", f"--align.rl.kl_target={args.kl_target}",
        "--align.rl.eval_prompts=64", "--align.train.seq_len=200", "--align.train.batch_size=16",
        f"--align.train.lr={args.lr}", f"--align.train.max_steps={args.steps}",
        f"--align.train.eval_every={args.eval_every}", f"--align.train.ckpt_every={args.eval_every}",
        "--align.train.log_every=4",
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    print(f"$ OMP_NUM_THREADS={args.threads} danlu {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def report(run_dir: Path) -> None:
    from _machine import machine_markdown, markdown_table

    out = run_dir / "align"
    before = json.loads((out / "data" / "before.json").read_text())
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [{"step": 0, **before}, *(r for r in recs if "val_reward" in r)]
    train_recs = [r for r in recs if "kl_coef" in r and "loss" in r]
    meta = json.loads((out / "model" / "config.json").read_text())["align"]
    rl = meta["rl"]
    target = rl["kl_target"]
    print(f"run: {run_dir}  (policy base {meta['base']}, reward model {rl['reward_model']})")
    print(
        f"kl_coef {rl['kl_coef']} (adaptive, target {target} nats per completion), epochs {rl['epochs']}, "
        f"minibatches {rl['minibatches']}, max_new_tokens {rl['max_new_tokens']}, "
        f"{rl['eval_prompts']} held-out prompts"
    )
    rows = [
        [
            str(e["step"]),
            f"{e['val_reward']:.3f}",
            f"{e['val_kl']:.3f}",
            "yes" if e["val_kl"] < target else "NO",
        ]
        for e in evals
    ]
    print(markdown_table(["step", "held-out RM score", "held-out KL (nats)", f"KL < {target}"], rows))
    first, last = evals[0], evals[-1]
    print(
        f"held-out RM score {first['val_reward']:.3f} -> {last['val_reward']:.3f} "
        f"({last['val_reward'] - first['val_reward']:+.3f}); highest held-out KL "
        f"{max(e['val_kl'] for e in evals):.3f} against the target {target}"
    )
    if train_recs:
        chunk = max(1, math.ceil(len(train_recs) / 8))
        rows = []
        for i in range(0, len(train_recs), chunk):
            part = train_recs[i : i + chunk]
            keys = ("reward", "kl", "kl_coef", "clip_fraction", "explained_variance")
            mean = {k: sum(r[k] for r in part) / len(part) for k in keys}
            rows.append([f"{part[0]['step']}-{part[-1]['step']}", *(f"{mean[k]:.4g}" for k in keys)])
        print("training rollouts (logged steps, mean):")
        print(markdown_table(["steps", "RM score", "KL", "kl_coef", "clip fraction", "explained var"], rows))
        print(f"highest rollout KL {max(r['kl'] for r in train_recs):.3f}")
    _plot(evals, target)
    print(machine_markdown())


def _plot(evals: list[dict], target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in evals]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(steps, [e["val_reward"] for e in evals], marker="o")
    a.set_title("held-out reward-model score")
    a.set_xlabel("step")
    b.plot(steps, [e["val_kl"] for e in evals], marker="o", label="held-out KL")
    b.axhline(target, color="red", linestyle="--", label=f"target {target}")
    b.set_title("KL to the reference (nats per completion)")
    b.set_xlabel("step")
    b.legend()
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / "ppo.png", dpi=100)
    print(f"plot: {RESULTS / 'ppo.png'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sft", default="runs/rl-ppo/sft-model", help="the policy's base: an SFT model dir")
    p.add_argument("--rm", default="runs/rl-ppo/rm/align/model", help="a reward model dir (same tokenizer)")
    p.add_argument("--run-dir", default="runs/rl-ppo/bench")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--kl-coef", type=float, default=0.1)
    p.add_argument("--kl-target", type=float, default=4.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    threads = "" if args.report_only else f"  (OMP_NUM_THREADS={args.threads})"
    print(f"load average at start: {load_avg()}{threads}", flush=True)
    t0 = time.perf_counter()
    if not args.report_only:
        train(args)
        print(f"training command: {(time.perf_counter() - t0) / 60:.1f} min")
    report(Path(args.run_dir))
    print(f"load average at end: {load_avg()}")


if __name__ == "__main__":
    main()
