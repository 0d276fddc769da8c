"""LoRA SFT of SmolLM2-135M (imported from GGUF) on danlu's built-in instruction data, on 2 CPU threads
within a wall-time budget: held-out answer log-likelihood and multiple-choice accuracy, ARC-Easy and
HellaSwag, before and after, on the same items, in one run.

    python benchmarks/sft_smollm2.py --run-dir runs/sftsmol-main

1. The recipe (written to RUN_DIR/recipe.yaml) has an `sft:` section: LoRA on the seven Linears of
   every block, the built-in sources (olmo train splits, chatterbot, chitchat) decontaminated against
   the eval sets, `train.max_minutes` as the training budget. The stage's data is prepared first
   (RUN_DIR/sft/data, the cache the stage itself reuses), so the held-out split is known: the stage's
   own validation conversations, disjoint from its training ones by conversation (each olmo item is one
   conversation) and after near-duplicate removal over both.
2. The BEFORE evaluations of the base model run in --eval-procs worker processes of one thread each.
   Then `danlu sft RUN_DIR/recipe.yaml` runs alone as a subprocess with OMP_NUM_THREADS=2 (the user's
   path). Then the same workers evaluate RUN_DIR/sft/model, loaded as every verb loads a model dir.
3. Held-out answer log-likelihood: mean log-probability per assistant token (with its end-of-turn
   token) of the stage's validation conversations, under the model's own chat template. Held-out
   multiple choice: --mc-per-task olmo train items of each task that the SFT data did not take
   (danlu.finetune.heldout_mc: not its ids, not its normalized questions, no 13-gram shared with any of
   its conversations, fitting its context; the overlaps of the drawn set are printed, each must be 0).
   Each choice is scored as the assistant turn "<letter>. <text>", the form the SFT data trains; the
   pick is the highest summed log-likelihood (and, beside it, per token). ARC-Easy and HellaSwag:
   danlu's harness (danlu.eval.harness.evaluate_mc over Scorer, as `danlu eval` runs them), zero-shot,
   per item, so the differences are paired. Accuracies carry Wilson 95% intervals, differences a paired
   bootstrap 95% interval.
4. BEFORE results are stored per evaluation under RUN_DIR/before/, keyed by what it scores (the base
   model's files, the template, the item set); --reuse-before (with --before-from DIR, another run dir)
   computes only those whose key has no stored result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

JOBS = ("hellaswag", "arc_easy", "heldout_mc", "heldout_ll")


# --- scoring (worker side) ------------------------------------------------------------------------


def score_conversations(model: Any, rows: list[tuple[list[int], list[int]]], pad_id: int, bs: int = 8):
    """(summed log-prob of the masked tokens, their count) of each (ids, mask) row."""
    import torch

    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    head = getattr(model, "lm_head", None)
    for s in range(0, len(order), bs):
        idx = order[s : s + bs]
        width = max(len(rows[i][0]) for i in idx)
        x = torch.full((len(idx), width), pad_id, dtype=torch.long)
        m = torch.zeros((len(idx), width), dtype=torch.bool)
        for b, i in enumerate(idx):
            ids, mask = rows[i]
            x[b, : len(ids)] = torch.tensor(ids)
            m[b, : len(mask)] = torch.tensor(mask, dtype=torch.bool)
        keep = torch.zeros_like(m)
        keep[:, :-1] = m[:, 1:]  # position t predicts token t + 1
        targets = x[:, 1:][m[:, 1:]]
        hook = (
            head.register_forward_pre_hook(lambda mod, a, keep=keep: (a[0][keep],))
            if head is not None
            else None
        )
        try:
            with torch.no_grad():
                logits = model(x)
        finally:
            if hook is not None:
                hook.remove()
        if head is None:
            logits = logits[keep]
        lp = torch.log_softmax(logits.float(), -1).gather(1, targets[:, None])[:, 0]
        row_of = keep.nonzero()[:, 0]
        sums = torch.zeros(len(idx)).index_add_(0, row_of, lp)
        counts = torch.zeros(len(idx)).index_add_(0, row_of, torch.ones_like(lp))
        for b, i in enumerate(idx):
            out[i] = (float(sums[b]), int(counts[b]))
    return out


def worker(part: str, model_dir: str, spec_path: str, out_path: str) -> None:
    import torch

    from danlu.eval import tasks as task_lib
    from danlu.eval.harness import evaluate_mc
    from danlu.eval.scoring import Scorer
    from danlu.finetune import templates
    from danlu.finetune.heldout_mc import choice_rows, score_choices
    from danlu.model_dir import load_model

    spec = json.loads(Path(spec_path).read_text())
    torch.manual_seed(0)
    model, tok, _ = load_model(model_dir, device="cpu")
    model.eval()
    template = spec["template"]
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    for job in spec["parts"][part]:
        start = time.perf_counter()
        if job in ("arc_easy", "hellaswag"):
            docs = task_lib.build_docs(task_lib.get_task(job), spec["limits"][job], 0, 1234)
            with torch.no_grad():
                _, per_item = evaluate_mc(Scorer(model, tok, batch_size=16, device=torch.device("cpu")), docs)
            out[job] = {k: [m[k] for m in per_item] for k in ("acc", "acc_norm")}
        elif job == "heldout_ll":
            rows = [templates.encode(tok, c["messages"], template) for c in spec["heldout_ll"]]
            out[job] = score_conversations(model, rows, tok.pad_id)
        elif job == "heldout_mc":
            encode = lambda msgs: templates.encode(tok, msgs, template)  # noqa: E731
            out[job] = score_choices(model, [choice_rows(c["messages"], encode) for c in spec["heldout_mc"]])
        out[f"{job}_seconds"] = time.perf_counter() - start
    out["seconds"] = time.perf_counter() - t0
    Path(out_path).write_text(json.dumps(out))


# --- statistics -----------------------------------------------------------------------------------


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def paired_ci(before: list[float], after: list[float], seed: int = 0, n: int = 2000) -> tuple[float, float]:
    import numpy as np

    d = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def ratio_paired_ci(b: list[tuple[float, int]], a: list[tuple[float, int]], seed: int = 0, n: int = 2000):
    """Bootstrap over conversations of the difference of per-token means (sum log-prob / tokens)."""
    import numpy as np

    bs, bn = np.array([x[0] for x in b]), np.array([x[1] for x in b])
    as_, an = np.array([x[0] for x in a]), np.array([x[1] for x in a])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(b), (n, len(b)))
    diffs = as_[idx].sum(1) / an[idx].sum(1) - bs[idx].sum(1) / bn[idx].sum(1)
    return float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def mc_picks(per_item: list[list[tuple[float, int]]], golds: list[int], per_token: bool) -> list[float]:
    picks = []
    for scores, gold in zip(per_item, golds, strict=True):
        vals = [s / max(n, 1) if per_token else s for s, n in scores]
        picks.append(float(max(range(len(vals)), key=vals.__getitem__) == gold))
    return picks


# --- the run --------------------------------------------------------------------------------------


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def recipe_text(args: argparse.Namespace, run_dir: Path) -> str:
    sft = {
        "base": str(Path(args.base).resolve()),
        "method": "lora",
        "data": {
            "sources": args.sources.split(","), "per_source": args.per_source,
            "decontaminate": True, "val_fraction": args.val_fraction, "seed": 1234,
        },
        "lora": {"r": args.rank, "alpha": 2 * args.rank, "dropout": 0.05},
        "train": {
            "seq_len": args.seq_len, "batch_size": args.batch_size, "max_steps": args.max_steps,
            "max_minutes": args.max_minutes, "lr": args.lr, "warmup_steps": args.warmup,
            "weight_decay": 0.0, "eval_every": args.max_steps, "eval_batches": 2,
            "ckpt_every": args.max_steps, "log_every": 1, "device": "cpu", "dtype": "fp32",
        },
    }  # fmt: skip
    import yaml

    return yaml.safe_dump(
        {"run_dir": str(run_dir.resolve()), "name": run_dir.name, "sft": sft}, sort_keys=False
    )


def prepare(args: argparse.Namespace, run_dir: Path) -> tuple[dict[str, Any], Any]:
    """The stage's data (cached where the stage reads it), the held-out sets and their checks."""
    from danlu.data.decontam import Decontaminator
    from danlu.eval import tasks as task_lib
    from danlu.finetune import templates
    from danlu.finetune.heldout_mc import choice_rows, choices_of, draw_split
    from danlu.finetune.sft import _val_split, prepare_data
    from danlu.model_dir import load_model
    from danlu.recipe import load_recipe

    cfg = load_recipe(str(run_dir / "recipe.yaml")).sft
    _, tok, _ = load_model(args.base, device="cpu")
    t0 = time.perf_counter()
    _, manifest = prepare_data(cfg, tok, run_dir / "sft" / "data")
    print(f"data prepared in {time.perf_counter() - t0:.0f} s (cached in {run_dir / 'sft' / 'data'})")
    template = manifest["template"]
    lines = (run_dir / "sft" / "data" / "conversations.jsonl").read_text(encoding="utf-8").splitlines()
    convos = [json.loads(line) for line in lines]
    limit = cfg.train.seq_len + 1
    fits_msgs = lambda msgs: len(templates.encode(tok, msgs, template, max_tokens=limit)[0]) <= limit  # noqa: E731
    fits = [c for c in convos if fits_msgs(c["messages"])]
    held = [c for c in fits if _val_split(c["id"], cfg.data.seed, cfg.data.val_fraction)]
    train = [c for c in fits if not _val_split(c["id"], cfg.data.seed, cfg.data.val_fraction)]
    rng = random.Random(0)
    ll = rng.sample(held, min(args.heldout_ll, len(held)))
    by_source = lambda cs: {s: sum(c["source"] == s for c in cs) for s in cfg.data.sources}  # noqa: E731
    print(
        f"conversations after the quality rules: {len(convos)}; fitting seq_len {cfg.train.seq_len}: {len(fits)}"
    )
    print(f"  train split: {len(train)} {by_source(train)}")
    print(f"  held-out split: {len(held)} {by_source(held)}")
    print(f"  held-out answer log-likelihood set: {len(ll)} conversations {by_source(ll)}")
    print(f"  stage manifest: quality_dropped {manifest['quality_dropped']}, template {template!r}")
    train_ids, held_ids = {c["id"] for c in train}, {c["id"] for c in held}
    train_prompts = {c["messages"][0]["content"] for c in train}
    print(
        f"  disjoint: ids shared {len(train_ids & held_ids)}, held-out first user turns also in train "
        f"{sum(c['messages'][0]['content'] in train_prompts for c in held)}"
    )
    mc_train = [c for c in train if c["id"].startswith("olmo/")]
    tasks = {}
    for c in mc_train:
        tasks[c["id"].split("/")[1]] = tasks.get(c["id"].split("/")[1], 0) + 1
    seen = args.max_steps * args.batch_size
    print(
        f"  multiple-choice (olmo) train items: {len(mc_train)} of {len(train)} ({100 * len(mc_train) / len(train):.0f}%), "
        f"{sum(c['target'] for c in _targets(tok, template, mc_train))} of "
        f"{sum(c['target'] for c in _targets(tok, template, train))} target tokens; by task {dict(sorted(tasks.items()))}"
    )
    print(
        f"  {args.max_steps} steps of batch {args.batch_size} see {seen} examples ({seen / len(train):.2f} epochs): "
        f"about {round(seen * len(mc_train) / len(train))} multiple-choice ones"
    )
    encode = lambda msgs: templates.encode(tok, msgs, template)  # noqa: E731
    same = sum(
        choice_rows(c["messages"], encode)[choices_of(c["messages"])[1]] == encode(c["messages"])
        for c in mc_train
        if choices_of(c["messages"])
    )
    print(
        f"  the scored form is the trained form: {same} of {len(mc_train)} olmo train items encode their answer "
        "exactly as the multiple-choice scoring encodes the gold choice"
    )
    t0 = time.perf_counter()
    mc, mc_report = draw_split(convos, args.mc_per_task, cfg.data.seed, fits_msgs)
    print(
        f"held-out multiple-choice split: {len(mc)} olmo train items the SFT data did not take "
        f"({args.mc_per_task} per task, drawn in {time.perf_counter() - t0:.0f} s)"
    )
    print(f"  per task: {mc_report['per_task']}")
    print(f"  passed over: {mc_report['passed_over']}")
    ov = mc_report["overlaps"]
    print(
        f"  overlaps with the {len(convos)} SFT conversations (train and validation, every source): ids {ov['ids']}, "
        f"normalized questions {ov['questions']}, prompts sharing a 13-gram {ov['13gram']}"
    )
    if any(ov.values()):
        sys.exit("the multiple-choice split is not disjoint from the SFT data")
    limits = {"arc_easy": args.arc or None, "hellaswag": args.hellaswag or None}
    texts = []
    for name, n in limits.items():
        for d in task_lib.build_docs(task_lib.get_task(name), n, 0, 1234):
            texts += [d.contexts[0], *d.continuations]
    dec = Decontaminator(texts=texts)
    hits = sum(
        not dec.filter({"text": "\n".join(m["content"] for m in c["messages"]), "meta": {}})[0] for c in fits
    )
    print(f"  13-gram overlap with the {len(texts)} ARC-Easy/HellaSwag texts evaluated: {hits} conversations")
    spec = {"template": template, "limits": limits, "heldout_ll": ll, "heldout_mc": mc}
    return spec, cfg


def _targets(tok: Any, template: str, convos: list[dict[str, Any]]) -> list[dict[str, int]]:
    from danlu.finetune import templates

    return [{"target": sum(templates.encode(tok, c["messages"], template)[1][1:])} for c in convos]


def model_stamp(model_dir: str) -> dict[str, Any]:
    """What identifies a model dir's weights without reading them: its files' names, sizes, mtimes."""
    root = Path(model_dir).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {
        "dir": str(root),
        "files": [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
    }


def job_key(spec: dict[str, Any], job: str, stamp: dict[str, Any]) -> str:
    """The key of one evaluation's result: the model, and what that evaluation scores."""
    import hashlib

    what: dict[str, Any] = {"job": job, "model": stamp}
    if job in ("arc_easy", "hellaswag"):
        what["limit"] = spec["limits"][job]
    else:
        what |= {"template": spec["template"], "items": spec[job]}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def legacy_before(src: Path, stamp: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{key: result} of an older run dir's BEFORE results (one eval_spec.json for all evaluations);
    they were made with this --base."""
    spec_path = src / "eval_spec.json"
    if not spec_path.is_file():
        return {}
    old = json.loads(spec_path.read_text())
    out = {}
    for part, jobs in old.get("parts", {}).items():
        f = src / f"eval_before_{part}.json"
        if not f.is_file():
            continue
        got = json.loads(f.read_text())
        for job in jobs:
            if job == "heldout_mc" or job not in got:
                continue  # the old multiple-choice results are per choice of another item form
            out[job_key(old, job, stamp)] = _entry(got, job)
    return out


def start_workers(
    model_dir: str, run_dir: Path, tag: str, spec: dict[str, Any], jobs: list[str], procs: int
) -> dict[str, subprocess.Popen]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    spec = {**spec, "parts": {str(p): jobs[p::procs] for p in range(min(procs, len(jobs)))}}
    (run_dir / f"eval_spec_{tag}.json").write_text(json.dumps(spec))
    out = {}
    for part in spec["parts"]:
        cmd = [sys.executable, __file__, "--worker", part, model_dir, str(run_dir / f"eval_spec_{tag}.json"),
               str(run_dir / f"eval_{tag}_{part}.json")]  # fmt: skip
        log = open(run_dir / f"eval_{tag}_{part}.log", "w")  # noqa: SIM115
        out[part] = subprocess.Popen(["nice", "-n", "5", *cmd], env=env, stdout=log, stderr=subprocess.STDOUT)
    return out


def collect(procs: dict[str, subprocess.Popen], run_dir: Path, tag: str) -> dict[str, Any]:
    spec = json.loads((run_dir / f"eval_spec_{tag}.json").read_text())
    out: dict[str, Any] = {}
    for part, p in procs.items():
        if p.wait() != 0:
            sys.exit(f"eval worker {tag}/{part} failed; see {run_dir}/eval_{tag}_{part}.log")
        got = json.loads((run_dir / f"eval_{tag}_{part}.json").read_text())
        print(f"{tag} eval worker {part}: {got['seconds']:.0f} s ({', '.join(spec['parts'][part])})")
        out.update(got)
    if "heldout_mc_seconds" in out:
        n = len(spec["heldout_mc"])
        print(
            f"{tag} held-out multiple choice: {n} items in {out['heldout_mc_seconds']:.0f} s, "
            f"{out['heldout_mc_seconds'] / n:.2f} s/item (1 thread, nice 5; load average {loadavg()})"
        )
    return out


def before_results(args: argparse.Namespace, run_dir: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The base model's results: those stored under a matching key reused (--reuse-before), the rest
    computed now and stored."""
    stamp = model_stamp(args.base)
    keys = {job: job_key(spec, job, stamp) for job in JOBS}
    store = run_dir / "before"
    store.mkdir(exist_ok=True)
    found: dict[str, dict[str, Any]] = {}
    if args.reuse_before:
        src = Path(args.before_from or run_dir)
        found = legacy_before(src, stamp)
        for f in (src / "before").glob("*.json"):
            found[f.stem.split("-", 1)[1]] = json.loads(f.read_text())
    before: dict[str, Any] = {}
    todo = []
    for job in JOBS:
        if keys[job] in found:
            before.update(found[keys[job]])
            print(f"BEFORE {job}: reused (key {keys[job]})")
        else:
            todo.append(job)
    if args.reuse_before and todo:
        print(f"BEFORE {', '.join(todo)}: no stored result for this key; computing")
    if todo:
        got = collect(start_workers(str(Path(args.base).resolve()), run_dir, "before", spec, todo, args.eval_procs),
                      run_dir, "before")  # fmt: skip
        before.update(got)
    for job in JOBS:
        (store / f"{job}-{keys[job]}.json").write_text(json.dumps(_entry(before, job)))
    return before


def _entry(results: dict[str, Any], job: str) -> dict[str, Any]:
    """One evaluation's result (and its seconds, where measured) out of a worker's results."""
    return {k: results[k] for k in (job, f"{job}_seconds") if k in results}


def report(before: dict[str, Any], after: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    from _machine import markdown_table

    rows, verdicts = [], []

    def acc_row(name: str, b: list[float], a: list[float], judge: str) -> None:
        n = len(b)
        lo, hi = paired_ci(b, a)
        d = 100 * (sum(a) - sum(b)) / n
        wb, wa = wilson(sum(b), n), wilson(sum(a), n)
        rows.append([
            name, str(n), f"{100 * sum(b) / n:.2f} [{100 * wb[0]:.1f}, {100 * wb[1]:.1f}]",
            f"{100 * sum(a) / n:.2f} [{100 * wa[0]:.1f}, {100 * wa[1]:.1f}]",
            f"{d:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]",
        ])  # fmt: skip
        if judge == "raise":
            verdicts.append(f"{name}: raised? {'yes' if d > 0 else 'NO'} ({d:+.2f} points, paired CI "
                            f"{'excludes' if lo > 0 else 'includes'} 0)")  # fmt: skip
        elif judge == "keep":
            verdicts.append(
                f"{name}: lowered by no more than 1 point? {'yes' if d >= -1.0 else 'NO'} ({d:+.2f} points)"
            )

    b_ll, a_ll = before["heldout_ll"], after["heldout_ll"]
    mb = sum(s for s, _ in b_ll) / sum(n for _, n in b_ll)
    ma = sum(s for s, _ in a_ll) / sum(n for _, n in a_ll)
    lo, hi = ratio_paired_ci(b_ll, a_ll)
    rows.append([
        "held-out answer log-likelihood (nats/token)", f"{len(b_ll)} conv, {sum(n for _, n in b_ll)} tok",
        f"{mb:.4f}", f"{ma:.4f}", f"{ma - mb:+.4f} [{lo:+.4f}, {hi:+.4f}]",
    ])  # fmt: skip
    verdicts.append(f"held-out answer log-likelihood: raised? {'yes' if ma > mb else 'NO'} ({ma - mb:+.4f} nats/token, "
                    f"paired CI {'excludes' if lo > 0 else 'includes'} 0)")  # fmt: skip
    from danlu.finetune.heldout_mc import choices_of

    items = spec["heldout_mc"]
    golds = [choices_of(c["messages"])[1] for c in items]
    for per_token, label, judge in ((False, "summed", "raise"), (True, "per token", "")):
        acc_row(
            f"held-out multiple choice acc ({label} log-lik)", mc_picks(before["heldout_mc"], golds, per_token),
            mc_picks(after["heldout_mc"], golds, per_token), judge,
        )  # fmt: skip
    b_mc, a_mc = mc_picks(before["heldout_mc"], golds, False), mc_picks(after["heldout_mc"], golds, False)
    for task in sorted({c["task"] for c in items}):
        idx = [k for k, c in enumerate(items) if c["task"] == task]
        acc_row(f"  {task} (summed)", [b_mc[k] for k in idx], [a_mc[k] for k in idx], "")
    for task in ("arc_easy", "hellaswag"):
        for metric in ("acc", "acc_norm"):
            acc_row(f"{task} {metric} (0-shot)", before[task][metric], after[task][metric], "keep")
    table = markdown_table(["metric", "items", "before", "after", "after - before [paired 95% CI]"], rows)
    return [table, "", *verdicts]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="runs/smollm2", help="the imported SmolLM2-135M-Instruct model dir")
    p.add_argument("--run-dir", default="runs/sftsmol-main")
    p.add_argument("--arc", type=int, default=0, help="ARC-Easy items (0: the whole validation split)")
    p.add_argument("--hellaswag", type=int, default=400, help="the first N HellaSwag validation items")
    p.add_argument("--heldout-ll", type=int, default=150)
    p.add_argument(
        "--mc-per-task", type=int, default=60,
        help="held-out multiple-choice items per olmo task (9 tasks), drawn from the items the SFT data did not take",
    )  # fmt: skip
    p.add_argument(
        "--sources", default="olmo,chatterbot,chitchat",
        help="sft.data.sources, comma-separated (built-in: olmo, olmo:TASK[,TASK], chatterbot, chitchat)",
    )  # fmt: skip
    p.add_argument("--per-source", type=int, default=2000)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--max-minutes", type=float, default=16.0, help="train.max_minutes of the recipe")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--train-threads", type=int, default=2)
    p.add_argument("--eval-procs", type=int, default=2, help="evaluation worker processes, one thread each")
    p.add_argument(
        "--reuse-before",
        action="store_true",
        help="reuse the BEFORE results stored for the same model and items; compute only the others",
    )
    p.add_argument(
        "--before-from", help="the run dir whose stored BEFORE results --reuse-before reads (default RUN_DIR)"
    )
    p.add_argument(
        "--before-only", action="store_true", help="prepare the data and the BEFORE results, then stop (no training)"
    )  # fmt: skip
    p.add_argument("--worker", nargs=4, metavar=("PART", "MODEL", "SPEC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    os.environ["OMP_NUM_THREADS"] = "1"  # this process only prepares data and collects
    from _machine import machine_markdown

    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(machine_markdown())
    print(f"load average at start (1/5/15 min): {loadavg()}")
    print(
        f"base: {args.base} (source {json.loads((Path(args.base) / 'config.json').read_text()).get('source')})"
    )
    (run_dir / "recipe.yaml").write_text(recipe_text(args, run_dir))
    print(f"recipe {run_dir / 'recipe.yaml'}:\n" + (run_dir / "recipe.yaml").read_text())
    spec, _ = prepare(args, run_dir)
    # The evaluations run before and after training, never beside it: the 20-minute goal is for the
    # training run on the 2 cores.
    before = before_results(args, run_dir, spec)
    if args.before_only:
        print(f"BEFORE results stored in {run_dir / 'before'}; --before-only: no training")
        return
    print(f"load average before training (1/5/15 min): {loadavg()}")
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.train_threads)}
    sft_log = open(run_dir / "sft.log", "w")  # noqa: SIM115
    cmd = [str(ROOT / ".venv" / "bin" / "danlu"), "sft", str(run_dir / "recipe.yaml")]
    print(f"$ OMP_NUM_THREADS={args.train_threads} {' '.join(cmd)}")
    train = subprocess.Popen(cmd, env=env, stdout=sft_log, stderr=subprocess.STDOUT)
    rc = train.wait()
    print(f"load average after training (1/5/15 min): {loadavg()}")
    wall = time.perf_counter() - t0
    tail = (run_dir / "sft.log").read_text(errors="replace").replace("\r", "\n").splitlines()
    if rc != 0:
        print("\n".join(tail[-20:]))
        sys.exit(f"danlu sft exited {rc}")
    print("danlu sft printed (last lines):\n  " + "\n  ".join(line for line in tail[-6:] if line.strip()))
    recs = [json.loads(x) for x in (run_dir / "sft" / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in recs if "loss" in r]
    budget = [r for r in recs if r.get("event") == "time_budget"]
    step_s = max((r.get("elapsed", 0.0) for r in recs), default=0.0)
    print(
        f"danlu sft wall: {wall / 60:.1f} min (goal <= 20), {losses[-1][0]} steps of batch {args.batch_size}, "
        f"training steps {step_s / 60:.1f} min, time budget {'reached' if budget else 'not reached'}"
    )
    head, last = losses[: min(5, len(losses))], losses[-min(5, len(losses)) :]
    mean = lambda xs: sum(v for _, v in xs) / len(xs)  # noqa: E731
    print(
        f"train loss: mean of first {len(head)} steps {mean(head):.4f}, of last {len(last)} {mean(last):.4f}"
    )
    model_dir = run_dir / "sft" / "model"
    after = collect(
        start_workers(str(model_dir.resolve()), run_dir, "after", spec, list(JOBS), args.eval_procs),
        run_dir,
        "after",
    )
    print("\n".join(report(before, after, spec)))
    print(
        f"goal 'training at most 20 minutes': {'met' if wall <= 1200 else 'NOT met'} ({wall / 60:.1f} min wall of danlu sft)"
    )
    print(f"load average at end (1/5/15 min): {loadavg()}")


if __name__ == "__main__":
    main()
