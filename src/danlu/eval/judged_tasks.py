"""The judged tasks of `danlu eval` (mtbench, alpacaeval): the evaluated model answers the built-in
questions, a judge model (`--judge DIR`) grades them or compares them with a reference's.

The reference of alpacaeval is a model dir's answers (`--reference DIR`, decoded the same way) or,
by default, the hand-written reference answers of danlu.eval.judged_data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from danlu.errors import ConfigError
from danlu.eval.judged import ModelJudge, grade_answers, pairwise_win_rate, truncate
from danlu.eval.judged_data import QUESTIONS, JudgedQuestion
from danlu.eval.task_context import TaskContext

MAX_ANSWER_TOKENS = 200  # of the judge's tokens, per answer in a judge prompt
N_EXAMPLES = 3  # answers kept in the results, to read beside the scores


def _questions(ctx: TaskContext) -> list[JudgedQuestion]:
    return list(QUESTIONS[: ctx.cfg.limit] if ctx.cfg.limit else QUESTIONS)


def _judge(ctx: TaskContext) -> ModelJudge:
    if not ctx.cfg.judge:
        raise ConfigError("the judged tasks (mtbench, alpacaeval) need a judge model: pass --judge MODEL_DIR")
    return ModelJudge.from_dir(ctx.cfg.judge, device=str(ctx.device))


def _answers(ctx: TaskContext, questions: list[JudgedQuestion]) -> list[str]:
    return [ctx.reply(q.question, ctx.cfg.max_new_tokens, seed=ctx.cfg.seed) for q in questions]


def evaluate_mtbench(ctx: TaskContext) -> dict[str, Any]:
    questions = _questions(ctx)
    answers = _answers(ctx, questions)
    judge = _judge(ctx)
    shown = [truncate(judge.tok, a, MAX_ANSWER_TOKENS) for a in answers]
    res = grade_answers(judge.rate, [q.question for q in questions], shown, [q.category for q in questions])
    per_item = res.pop("per_item")
    res["examples"] = [
        {"question": q.question, "answer": a, **g}
        for q, a, g in list(zip(questions, answers, per_item, strict=True))[:N_EXAMPLES]
    ]
    return {"n": len(questions), "judge": str(ctx.cfg.judge), **res}


def evaluate_alpacaeval(ctx: TaskContext) -> dict[str, Any]:
    questions = _questions(ctx)
    answers = _answers(ctx, questions)
    if ctx.cfg.reference:
        from danlu.model_dir import load_model

        model, tok, _ = load_model(ctx.cfg.reference, device=str(ctx.device))
        ref_ctx = TaskContext(model, tok, ctx.cfg, Path(ctx.cfg.reference), ctx.device)
        references = _answers(ref_ctx, questions)
        reference = str(ctx.cfg.reference)
    else:
        references = [q.reference for q in questions]
        reference = "built-in reference answers"
    judge = _judge(ctx)
    cut = [truncate(judge.tok, a, MAX_ANSWER_TOKENS) for a in answers]
    refs = [truncate(judge.tok, r, MAX_ANSWER_TOKENS) for r in references]
    res = pairwise_win_rate(judge, [q.question for q in questions], cut, refs)
    per_item = res.pop("per_item")
    res["examples"] = [
        {"question": q.question, "answer": a, "reference": r, **p}
        for q, a, r, p in list(zip(questions, answers, references, per_item, strict=True))[:N_EXAMPLES]
    ]
    return {"n": len(questions), "judge": str(ctx.cfg.judge), "reference": reference, **res}
