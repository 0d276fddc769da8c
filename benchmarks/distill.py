"""Distillation's worked example: SmolLM2-135M-Instruct (runs/smollm2) teaches a small danlu student
that shares its tokenizer and vocabulary, against the same student trained without a teacher.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/distill.py [--steps 150]

Both students have the same shape, initial weights (seed), text windows in the same order, learning
rate schedule and step count; they differ only in the loss:

  plain      cross-entropy on the labels                               (danlu distill --method ce)
  distilled  T²·KL(teacher ‖ student) + α·CE, the teacher under no_grad (danlu distill --method logit)

The text is Jane Austen's novels (the danlu corpus cache; --chars of it), its last 5% held out. Printed:
the held-out loss of both at every evaluation (and the teacher's on the same windows), then danlu's
eval harness on both students: LAMBADA (last-word accuracy and target perplexity) and HellaSwag
(acc_norm), with the item counts, and the paired differences (distilled - plain over the same items:
LAMBADA's per-item target log-likelihood and accuracy, HellaSwag's acc_norm) with 95% bootstrap
intervals. --reuse evaluates the students an earlier run left under --out instead of training again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown, markdown_table
from danlu.compress.config import DistillConfig, default_train
from danlu.compress.distill import evaluate_ce, run_distill
from danlu.compress.text_data import read_text, split_ids, val_windows
from danlu.data.corpora import read_corpus
from danlu.eval import tasks as task_lib
from danlu.eval.harness import evaluate_mc
from danlu.eval.metrics import bootstrap_ci
from danlu.eval.scoring import Scorer, mean_stderr
from danlu.model_dir import load_model

STUDENT = "n_layer: {layers}\nn_embd: {dim}\nn_head: 4\nn_kv_head: 2\nffn_hidden: {ffn}\nmax_seq_len: 512\n"


def item_scores(
    model: torch.nn.Module, tok: object, n_lambada: int, n_hellaswag: int
) -> dict[str, np.ndarray]:
    """Per-item scores, in item order: LAMBADA's target log-likelihood (nats) and last-word accuracy
    (as danlu.eval.harness.evaluate_lambada scores them), HellaSwag's acc_norm and acc."""
    scorer = Scorer(model, tok, batch_size=16)
    lam_docs = task_lib.build_docs(task_lib.get_task("lambada"), n_lambada)
    lam = scorer.loglikelihood([(d.contexts[0], d.continuations[0]) for d in lam_docs])
    _, hs = evaluate_mc(scorer, task_lib.build_docs(task_lib.get_task("hellaswag"), n_hellaswag))
    return {
        "lambada target log-likelihood": np.array([s.logprob for s in lam]),
        "lambada acc": np.array([float(s.greedy) for s in lam]),
        "hellaswag acc_norm": np.array([m["acc_norm"] for m in hs]),
        "hellaswag acc": np.array([m["acc"] for m in hs]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="runs/smollm2")
    ap.add_argument("--out", default="runs/distill-bench")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--kind", default="forward")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--chars", type=int, default=1_500_000)
    ap.add_argument("--eval-batches", type=int, default=16)
    ap.add_argument("--lambada", type=int, default=500, help="LAMBADA items")
    ap.add_argument("--hellaswag", type=int, default=200, help="HellaSwag items")
    ap.add_argument("--reuse", action="store_true", help="evaluate the students already under --out")
    args = ap.parse_args()

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text_file = out / "austen.txt"
    if not text_file.is_file():
        text = "\n\n".join(d["text"] for d in read_corpus("austen"))[: args.chars]
        text_file.write_text(text, encoding="utf-8")
    student = out / "student.yaml"
    student.write_text(STUDENT.format(layers=args.layers, dim=args.dim, ffn=3 * args.dim))
    train = default_train()
    train.max_steps, train.eval_every, train.ckpt_every = args.steps, args.eval_every, args.steps
    train.batch_size, train.seq_len, train.lr, train.warmup_steps = args.batch_size, args.seq_len, args.lr, 15
    train.eval_batches, train.device, train.log_every = args.eval_batches, "cpu", 10

    results, seconds = {}, {}
    for name, method in (("plain", "ce"), ("distilled", "logit")):
        cfg = DistillConfig(method=method, kind=args.kind, temperature=args.temperature, alpha=args.alpha,
                            data=(str(text_file),), train=train)  # fmt: skip
        t0 = time.perf_counter()
        if args.reuse and (out / name / "model" / "config.json").is_file():
            results[name], seconds[name] = {"model_dir": out / name / "model"}, float("nan")
            continue
        results[name] = run_distill(cfg, args.teacher, student, out / name)
        seconds[name] = time.perf_counter() - t0

    teacher, tok, _ = load_model(args.teacher)
    _, val_ids = split_ids(tok.encode(read_text([text_file])), args.seq_len, 0.05)
    val = list(val_windows(val_ids, args.batch_size, args.seq_len, args.eval_batches))
    teacher_loss = evaluate_ce(teacher, val, torch.device("cpu"), "fp32")["val_loss"]
    n_val = sum(int(y.numel()) for _, y in val)
    del teacher

    curves = {}
    for name in results:
        rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        curves[name] = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    steps = sorted(curves["plain"])
    print(f"## held-out loss (nats/token, {n_val} tokens of held-out Austen; teacher: {teacher_loss:.4f})")
    print(markdown_table(["step", "plain", "distilled", "distilled - plain"],
                         [[str(s), f"{curves['plain'][s]:.4f}", f"{curves['distilled'][s]:.4f}",
                           f"{curves['distilled'][s] - curves['plain'][s]:+.4f}"] for s in steps]))  # fmt: skip

    scores = {}
    for name, r in results.items():
        model, tok, mcfg = load_model(r["model_dir"])
        scores[name] = (item_scores(model, tok, args.lambada, args.hellaswag), mcfg)
    print(
        f"\n## eval harness (LAMBADA first {args.lambada} items, HellaSwag first {args.hellaswag} items, 0-shot)"
    )
    rows = []
    for name, (sc, _) in scores.items():
        rows.append([name, f"{sc['lambada acc'].mean():.4f} ± {mean_stderr(sc['lambada acc']):.4f}",
                     f"{np.exp(-sc['lambada target log-likelihood'].mean()):.1f}",
                     f"{sc['hellaswag acc_norm'].mean():.4f} ± {mean_stderr(sc['hellaswag acc_norm']):.4f}",
                     f"{sc['hellaswag acc'].mean():.4f}"])  # fmt: skip
    print(
        markdown_table(
            ["student", "LAMBADA acc", "LAMBADA target ppl", "HellaSwag acc_norm", "HellaSwag acc"], rows
        )
    )
    print("\n## paired over the same items: distilled - plain, mean [95% bootstrap interval]")
    rows = []
    for metric in ("lambada target log-likelihood", "lambada acc", "hellaswag acc_norm"):
        d = scores["distilled"][0][metric] - scores["plain"][0][metric]
        lo, hi = bootstrap_ci(d)
        rows.append([metric, str(d.size), f"{d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]",
                     "distilled better" if lo > 0 else "plain better" if hi < 0 else "no difference shown"])  # fmt: skip
    print(markdown_table(["metric (per item)", "items", "distilled - plain", "reading"], rows))
    mcfg = scores["plain"][1]
    params = sum(p.numel() for p in load_model(results["plain"]["model_dir"])[0].parameters())
    print(f"\nstudent: {mcfg.n_layer} layers, d {mcfg.n_embd}, ffn {mcfg.ffn_hidden}, vocab {mcfg.vocab_size} "
          f"(SmolLM2's tokenizer), {params / 1e6:.1f}M parameters; teacher 134.5M")  # fmt: skip
    print(
        f"{args.steps} steps of {args.batch_size}x{args.seq_len} tokens each, lr {args.lr}, "
        f"distillation: {args.kind} KL, T={args.temperature}, alpha={args.alpha}"
    )
    if args.reuse and any(v != v for v in seconds.values()):  # NaN: a reused student
        print(f"training: the students under {out} were reused (--reuse), not trained in this run")
    else:
        print(
            f"training time: plain {seconds['plain']:.0f} s, distilled {seconds['distilled']:.0f} s "
            f"(ratio {seconds['distilled'] / seconds['plain']:.2f}x; the teacher's forward on every batch); "
            "the machine was shared with other jobs"
        )
    print(f"total {time.perf_counter() - t_start:.0f} s")
    print(machine_markdown())


if __name__ == "__main__":
    main()
