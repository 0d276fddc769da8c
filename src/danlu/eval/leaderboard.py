"""A judged leaderboard over several models: every pair compared on every built-in question in both
orders (danlu.eval.judge's tournament), rated by Bradley-Terry and Elo, with bootstrap intervals.

Bradley-Terry is fitted by danlu.eval.judge's MM iteration with a prior of one virtual tie per pair
(finite ratings even when one model wins everything) and cross-checked by a direct scipy fit of the
same likelihood; intervals resample the questions (all of a question's games together) and refit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from danlu.errors import ConfigError
from danlu.eval.judge import Match, bradley_terry, elo, run_tournament, win_rates

PRIOR = 1.0  # virtual ties between every pair


def bradley_terry_scipy(matches: Sequence[Match], prior: float = PRIOR) -> dict[str, float]:
    """The same prior-smoothed Bradley-Terry MLE by L-BFGS on log-strengths (Elo scale, mean 1000)."""
    from scipy.optimize import minimize

    names = sorted({m.model_a for m in matches} | {m.model_b for m in matches})
    index = {n: i for i, n in enumerate(names)}
    k = len(names)
    wins = np.zeros((k, k))
    for m in matches:
        wins[index[m.model_a], index[m.model_b]] += m.score
        wins[index[m.model_b], index[m.model_a]] += 1 - m.score
    wins += prior / 2 * (1 - np.eye(k))

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        diff = theta[:, None] - theta[None, :]
        logp = -np.logaddexp(0.0, -diff)  # log sigmoid(theta_i - theta_j)
        p = np.exp(logp)
        grad = (wins * (1 - p)).sum(axis=1) - (wins * (1 - p)).sum(axis=0)
        return float(-(wins * logp).sum()), -grad

    theta = minimize(nll, np.zeros(k), jac=True, method="L-BFGS-B").x
    ratings = 400 / np.log(10) * (theta - theta.mean())
    return {n: float(1000 + ratings[i]) for n, i in index.items()}


def rate_tournament(
    matches: Sequence[Match], n_questions: int, n_resamples: int = 200, seed: int = 0
) -> list[dict[str, Any]]:
    """One row per model, best first: BT rating with its 95% interval, Elo, win rate, games."""
    per_q = len(matches) // n_questions  # run_tournament: pairs outermost, questions innermost
    if per_q * n_questions != len(matches):
        raise ConfigError(f"{len(matches)} matches do not split into {n_questions} questions")
    bt = bradley_terry(matches, prior=PRIOR)
    rng = np.random.default_rng(seed)
    boots: dict[str, list[float]] = {n: [] for n in bt}
    for _ in range(n_resamples):
        qs = rng.integers(0, n_questions, n_questions)
        sample = [matches[p * n_questions + q] for p in range(per_q) for q in qs]
        for n, r in bradley_terry(sample, prior=PRIOR).items():
            boots[n].append(r)
    ratings_elo = elo(matches)
    wr = win_rates(matches)
    games = {n: sum(n in (m.model_a, m.model_b) for m in matches) for n in bt}
    rows = [
        {
            "model": n,
            "bt": bt[n],
            "bt_ci95": [float(x) for x in np.quantile(boots[n], [0.025, 0.975])],
            "elo": ratings_elo[n],
            "win_rate": wr[n],
            "games": games[n],
        }
        for n in bt
    ]
    return sorted(rows, key=lambda r: -r["bt"])


def leaderboard(
    answers: Mapping[str, Sequence[str]], questions: Sequence[str], judge: Callable[[str], str]
) -> dict[str, Any]:
    matches = run_tournament(judge, questions, answers)
    return {
        "rows": rate_tournament(matches, len(questions)),
        "bt_scipy": bradley_terry_scipy(matches),
        "matches": [m.__dict__ for m in matches],
        "questions": len(questions),
    }


def model_answers(
    model_dir: str | Path, questions: Sequence[str], max_new_tokens: int, seed: int, device: str = "cpu"
) -> list[str]:
    """A model dir's greedy replies (chat template for chat models, transcript otherwise)."""
    from danlu.eval.task_context import TaskContext
    from danlu.model_dir import load_model

    model, tok, _ = load_model(model_dir, device=device)
    ctx = TaskContext(model, tok, None, Path(model_dir), device)
    return [ctx.reply(q, max_new_tokens, seed=seed) for q in questions]


def format_leaderboard(board: dict[str, Any]) -> str:
    lines = [
        "| rank | model | Bradley-Terry | 95% CI (bootstrap over questions) | Elo | win rate | games |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(board["rows"], 1):
        lo, hi = r["bt_ci95"]
        lines.append(
            f"| {i} | {r['model']} | {r['bt']:.0f} | {lo:.0f} – {hi:.0f} | {r['elo']:.0f} | "
            f"{100 * r['win_rate']:.1f} | {r['games']} |"
        )
    lines.append(f"\n{board['questions']} questions, every pair judged in both orders; ties count half")
    return "\n".join(lines)


def run_leaderboard(
    model_dirs: Sequence[str | Path],
    judge_dir: str | Path,
    limit: int | None = None,
    max_new_tokens: int = 128,
    seed: int = 1234,
    device: str = "cpu",
    with_reference: bool = False,
) -> dict[str, Any]:
    """Answers of every model dir (and the built-in reference answers, if asked) on the built-in
    questions, judged pairwise by the judge model dir, rated."""
    from danlu.eval.judged import ModelJudge, truncate
    from danlu.eval.judged_data import QUESTIONS
    from danlu.eval.judged_tasks import MAX_ANSWER_TOKENS

    names = [str(d) for d in model_dirs]
    if len(set(names)) != len(names):
        raise ConfigError(f"a model dir is listed twice: {names}")
    if len(names) + with_reference < 2:
        raise ConfigError("a leaderboard needs at least two models (or one and --with-reference)")
    questions = list(QUESTIONS[:limit] if limit else QUESTIONS)
    texts = [q.question for q in questions]
    answers = {n: model_answers(n, texts, max_new_tokens, seed, device) for n in names}
    if with_reference:
        answers["reference"] = [q.reference for q in questions]
    judge = ModelJudge.from_dir(judge_dir, device=device)
    cut = {n: [truncate(judge.tok, a, MAX_ANSWER_TOKENS) for a in ans] for n, ans in answers.items()}
    board = leaderboard(cut, texts, judge)
    board["judge"] = str(judge_dir)
    board["examples"] = {n: ans[:2] for n, ans in answers.items()}
    return board
