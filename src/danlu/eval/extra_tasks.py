"""The diagnostic, safety and judged tasks of `danlu eval`, by name (each a function of a TaskContext)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from danlu.eval.task_context import TaskContext


def _distinct(ctx: TaskContext) -> dict[str, Any]:
    from danlu.eval.diagnostic_tasks import evaluate_distinct

    return evaluate_distinct(ctx)


def _memorization(ctx: TaskContext) -> dict[str, Any]:
    from danlu.eval.diagnostic_tasks import evaluate_memorization

    return evaluate_memorization(ctx)


def _pos_probe(ctx: TaskContext) -> dict[str, Any]:
    from danlu.eval.diagnostic_tasks import evaluate_pos_probe

    return evaluate_pos_probe(ctx)


def _toxicity(ctx: TaskContext) -> dict[str, Any]:
    from danlu.eval.safety import evaluate_toxicity

    return evaluate_toxicity(ctx)


def _bias(ctx: TaskContext) -> dict[str, Any]:
    from danlu.eval.safety import evaluate_bias

    return evaluate_bias(ctx)


def _refusal(ctx: TaskContext) -> dict[str, Any]:
    from danlu.eval.safety import evaluate_refusal

    return evaluate_refusal(ctx)


def _mtbench(ctx: TaskContext) -> dict[str, Any]:
    from danlu.eval.judged_tasks import evaluate_mtbench

    return evaluate_mtbench(ctx)


def _alpacaeval(ctx: TaskContext) -> dict[str, Any]:
    from danlu.eval.judged_tasks import evaluate_alpacaeval

    return evaluate_alpacaeval(ctx)


JUDGED_TASKS = ("mtbench", "alpacaeval")  # they need --judge

EXTRA_TASKS: dict[str, Callable[[TaskContext], dict[str, Any]]] = {
    "distinct": _distinct,
    "memorization": _memorization,
    "pos_probe": _pos_probe,
    "toxicity": _toxicity,
    "bias": _bias,
    "refusal": _refusal,
    "mtbench": _mtbench,
    "alpacaeval": _alpacaeval,
}
