"""Run evaluation tasks on a model: scores with standard errors, and how fast and how much memory.

`evaluate` is the function behind `danlu eval`. Multiple-choice tasks put all their requests through
one `Scorer` call (sorted, batched, shared inputs deduplicated); LAMBADA scores the last word;
generative tasks decode greedily, batch_size prompts at a time through the inference engine
(batch size 1: one at a time, without it).
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from danlu.errors import ConfigError
from danlu.eval import tasks as task_lib
from danlu.eval.code_task import CODE_TASKS, evaluate_code_task
from danlu.eval.extra_tasks import EXTRA_TASKS, JUDGED_TASKS
from danlu.eval.generative import batched_greedy_until, greedy_until, score_generation
from danlu.eval.metrics import bootstrap_ci
from danlu.eval.perplexity import perplexity
from danlu.eval.scoring import Scorer, mc_metrics, mean_stderr
from danlu.eval.task_context import TaskContext
from danlu.model_dir import is_model_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[str, ...]
    limit: int | None = None
    batch_size: int = 16
    num_fewshot: int = 0
    seed: int = 1234
    max_new_tokens: int = 256
    ppl_files: tuple[str, ...] = ()  # text files to measure perplexity and bits per byte on
    ppl_stride: int | None = None  # sliding-window stride in tokens (None: disjoint windows)
    samples: int = 1  # completions per problem of the code tasks (humaneval, mbpp): pass@k for k <= samples
    temperature: float = 0.0  # their sampling temperature (0: greedy)
    train_data: str | None = None  # memorization: the training documents dir or text file
    toxicity_model: str | None = None  # toxicity: a classifier .npz (danlu.data.toxicity_model)
    judge: str | None = None  # mtbench, alpacaeval: the judge's model dir
    reference: str | None = None  # alpacaeval: the reference's model dir (None: built-in answers)

    def __post_init__(self) -> None:
        if not self.tasks and not self.ppl_files:
            raise ConfigError("no tasks given; pass e.g. --tasks hellaswag,arc_easy (or --ppl FILE)")
        for path in self.ppl_files:
            if not Path(path).is_file():
                raise ConfigError(f"--ppl {path}: no such file; give a UTF-8 text file")
        for name in self.tasks:
            if name not in CODE_TASKS and name not in EXTRA_TASKS:
                task_lib.get_task(name)
        if self.toxicity_model is not None and not Path(self.toxicity_model).is_file():
            raise ConfigError(f"--toxicity-model {self.toxicity_model}: no such file")
        judged = [t for t in self.tasks if t in JUDGED_TASKS]
        if judged and self.judge is None:
            raise ConfigError(
                f"the judged tasks ({', '.join(judged)}) need a judge model: pass --judge MODEL_DIR"
            )
        for flag, path in (("--judge", self.judge), ("--reference", self.reference)):
            if path is not None and not is_model_dir(path):
                raise ConfigError(f"{flag} {path}: not a danlu model dir (config.json, model.safetensors)")
        if self.train_data is not None and not Path(self.train_data).exists():
            raise ConfigError(f"--train-data {self.train_data}: no such file or directory")
        if self.samples < 1 or self.temperature < 0:
            raise ConfigError(
                f"need --samples >= 1 and --temperature >= 0, got {self.samples}, {self.temperature}"
            )
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if self.batch_size < 1 or self.num_fewshot < 0 or self.max_new_tokens < 1:
            raise ConfigError("need --batch-size >= 1, --num-fewshot >= 0 and --max-new-tokens >= 1")


def _summary(per_item: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in per_item[0] if per_item else ():
        values = [m[key] for m in per_item]
        out[key] = sum(values) / len(values)
        out[f"{key}_stderr"] = mean_stderr(values)
        out[f"{key}_ci95"] = list(bootstrap_ci(values))  # percentile bootstrap, seeded
    return out


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return rss_kb / (2**20 if sys.platform == "darwin" else 2**10)


def evaluate_mc(
    scorer: Scorer, docs: Sequence[task_lib.MCDoc]
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    requests = [(c, x) for d in docs for c, x in zip(d.contexts, d.continuations, strict=True)]
    scores = scorer.loglikelihood(requests)
    per_item: list[dict[str, float]] = []
    i = 0
    for d in docs:
        k = len(d.continuations)
        per_item.append(mc_metrics(scores[i : i + k], d.choices, d.gold))
        i += k
    result: dict[str, Any] = _summary(per_item)
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for d, m in zip(docs, per_item, strict=True):
        if d.group:
            groups[d.group].append(m)
    if groups:
        # lm-eval's MMLU average weights subjects by size: the mean over all items (above);
        # the unweighted mean of subjects is given beside it
        result["subsets"] = {g: {"n": len(v), **_summary(v)} for g, v in sorted(groups.items())}
        result["acc_subject_mean"] = sum(s["acc"] for s in result["subsets"].values()) / len(groups)
        result["acc_subject_mean_ci95"] = stratified_bootstrap_ci(
            [[m["acc"] for m in v] for v in groups.values()]
        )
    return result, per_item


def stratified_bootstrap_ci(
    strata: Sequence[Sequence[float]], n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> list[float]:
    """Percentile bootstrap interval of the unweighted mean of stratum means, each stratum (MMLU
    subject) resampled within itself, so that every resample keeps every subject."""
    rng = np.random.default_rng(seed)
    means = np.zeros(n_resamples)
    for values in strata:
        x = np.asarray(values, dtype=np.float64)
        means += x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    means /= len(strata)
    alpha = (1 - confidence) / 2
    return [float(q) for q in np.quantile(means, [alpha, 1 - alpha])]


def evaluate_lambada(scorer: Scorer, docs: Sequence[task_lib.MCDoc]) -> dict[str, Any]:
    scores = scorer.loglikelihood([(d.contexts[0], d.continuations[0]) for d in docs])
    accs = [float(s.greedy) for s in scores]
    lls = [s.logprob for s in scores]
    lo, hi = bootstrap_ci(lls)  # a percentile interval maps through the monotone exp(-x)
    return {
        "acc": sum(accs) / len(accs),
        "acc_stderr": mean_stderr(accs),
        "acc_ci95": list(bootstrap_ci(accs)),
        "perplexity": math.exp(-sum(lls) / len(lls)),  # lm-eval's perplexity aggregation
        "perplexity_ci95": [math.exp(-hi), math.exp(-lo)],
    }


def evaluate_gen(
    model: Any,
    tok: Any,
    spec: task_lib.TaskSpec,
    docs: Sequence[task_lib.GenDoc],
    max_new: int,
    batch_size: int = 1,
) -> tuple[dict[str, Any], int]:
    if batch_size > 1:  # the continuous-batching engine decodes batch_size prompts at a time
        outputs = batched_greedy_until(model, tok, [d.prompt for d in docs], spec.until, max_new, batch_size)
    else:
        outputs = [
            greedy_until(model, tok, d.prompt, spec.until, max_new)
            for d in tqdm(docs, desc=spec.name, leave=False, disable=len(docs) < 2)
        ]
    per_item = [
        score_generation(spec.name, text, d.answers) for (text, _), d in zip(outputs, docs, strict=True)
    ]
    return _summary(per_item), sum(n for _, n in outputs)


def evaluate(
    model: Any,
    tok: Any,
    cfg: EvalConfig,
    device: str | torch.device = "cpu",
    model_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Scores of every task in cfg, with efficiency figures; a JSON-ready dict. model_dir tells the
    diagnostic and safety tasks whether the model is a chat model and where its training data is."""
    device = torch.device(device)
    results: dict[str, Any] = {}
    total_tokens = 0
    total_seconds = 0.0
    token_seconds = 0.0  # of the tasks that count their tokens (not the code, diagnostic, safety ones)
    for name in cfg.tasks:
        if name in CODE_TASKS:
            t0 = time.perf_counter()
            res, chars = evaluate_code_task(
                model, tok, name, cfg.limit, cfg.samples, cfg.temperature, cfg.max_new_tokens, cfg.seed
            )
            seconds = time.perf_counter() - t0
            total_seconds += seconds
            res.update(seconds=seconds, generated_chars=chars)
            results[name] = res
            continue
        if name in EXTRA_TASKS:
            t0 = time.perf_counter()
            ctx = TaskContext(model, tok, cfg, Path(model_dir) if model_dir else None, device)
            res = EXTRA_TASKS[name](ctx)
            res["seconds"] = time.perf_counter() - t0
            total_seconds += res["seconds"]
            results[name] = res
            continue
        spec = task_lib.get_task(name)
        docs = task_lib.build_docs(spec, cfg.limit, cfg.num_fewshot, cfg.seed)
        log.info("%s: %d items", name, len(docs))
        scorer = Scorer(model, tok, batch_size=cfg.batch_size, device=device)
        t0 = time.perf_counter()
        generated = 0
        if spec.kind == "mc":
            res, _ = evaluate_mc(scorer, docs)
        elif spec.kind == "loglik":
            res = evaluate_lambada(scorer, docs)
        else:
            res, generated = evaluate_gen(model, tok, spec, docs, cfg.max_new_tokens, cfg.batch_size)
        seconds = time.perf_counter() - t0
        tokens = scorer.tokens_forwarded + generated
        total_tokens += tokens
        total_seconds += seconds
        token_seconds += seconds
        res.update(
            n=len(docs),
            seconds=seconds,
            seconds_per_item=seconds / max(len(docs), 1),
            tokens_per_second=tokens / seconds if seconds > 0 else float("nan"),
            **({"generated_tokens": generated} if spec.kind == "gen" else {}),
        )
        results[name] = res
    for path in cfg.ppl_files:
        scorer = Scorer(model, tok, batch_size=cfg.batch_size, device=device)
        t0 = time.perf_counter()
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        res = perplexity(scorer, [text], stride=cfg.ppl_stride)
        seconds = time.perf_counter() - t0
        total_tokens += scorer.tokens_forwarded
        total_seconds += seconds
        token_seconds += seconds
        res.update(n=1, seconds=seconds, tokens_per_second=scorer.tokens_forwarded / max(seconds, 1e-9))
        results[f"ppl:{Path(path).name}"] = res
    return {
        "results": results,
        "config": {
            "tasks": list(cfg.tasks), "limit": cfg.limit, "batch_size": cfg.batch_size,
            "ppl_files": list(cfg.ppl_files), "ppl_stride": cfg.ppl_stride, "num_fewshot": cfg.num_fewshot, "seed": cfg.seed, "max_new_tokens": cfg.max_new_tokens,
            "samples": cfg.samples, "temperature": cfg.temperature,
            "train_data": cfg.train_data, "toxicity_model": cfg.toxicity_model,
            "judge": cfg.judge, "reference": cfg.reference,
        },
        "efficiency": {
            "seconds": total_seconds,
            "tokens": total_tokens,
            # None when no task counted tokens: a rate of 0 would read as a stalled model
            "tokens_per_second": total_tokens / token_seconds if total_tokens and token_seconds > 0 else None,
            "peak_memory_mb": _peak_memory_mb(device),
            "device": str(device),
            "threads": torch.get_num_threads(),
        },
    }  # fmt: skip


def evaluate_dir(model_dir: str | Path, cfg: EvalConfig, device: str = "cpu") -> dict[str, Any]:
    from danlu.model_dir import load_model

    model, tok, _ = load_model(model_dir, device=device)
    out = evaluate(model, tok, cfg, device, model_dir)
    out["model"] = str(model_dir)
    return out
