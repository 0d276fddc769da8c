"""Pairwise LLM-as-judge: rubric prompt, position swapping, win rates, Elo and Bradley-Terry ratings.

Judges prefer whichever answer they see first (or second) more often than chance, so every pair is
judged in both orders and a win counts only when both orders agree; any disagreement is a tie
(Zheng et al. 2023, MT-Bench). The judge is any callable prompt -> text that ends its reply with a
verdict "[[A]]", "[[B]]" or "[[C]]" (tie).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from danlu.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Judge = Callable[[str], str]

RUBRIC = """[System]
Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants \
to the user question displayed below. Choose the assistant that follows the user's instructions and \
answers the user's question better. Consider helpfulness, relevance, accuracy, depth, creativity and \
level of detail. Begin with a short explanation comparing the two responses. Avoid any position bias: \
the order in which the responses appear must not influence your decision. Do not let the length of the \
responses or the names of the assistants influence you. Be as objective as possible. After your \
explanation, output your final verdict strictly in this format: "[[A]]" if assistant A is better, \
"[[B]]" if assistant B is better, and "[[C]]" for a tie.

[User Question]
{question}

[The Start of Assistant A's Answer]
{answer_a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{answer_b}
[The End of Assistant B's Answer]
"""

_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def judge_prompt(question: str, answer_a: str, answer_b: str, rubric: str = RUBRIC) -> str:
    return rubric.format(question=question, answer_a=answer_a, answer_b=answer_b)


def parse_verdict(text: str) -> str | None:
    """ "A", "B" or "C" from the last [[X]] in the judge's reply; None when it gave no verdict."""
    found = _VERDICT.findall(text)
    return found[-1] if found else None


@dataclass(frozen=True)
class Match:
    """One judged comparison: score is model_a's result (1 win, 0.5 tie, 0 loss)."""

    model_a: str
    model_b: str
    score: float


def judge_both_orders(
    judge: Judge, question: str, answer_1: str, answer_2: str, rubric: str = RUBRIC
) -> tuple[str | None, str | None]:
    """The verdicts on (answer_1, answer_2) and on the swapped order (None: no verdict given)."""
    first = parse_verdict(judge(judge_prompt(question, answer_1, answer_2, rubric)))
    swapped = parse_verdict(judge(judge_prompt(question, answer_2, answer_1, rubric)))
    if first is None or swapped is None:
        log.warning("judge gave no [[A]]/[[B]]/[[C]] verdict; counting the pair as a tie")
    return first, swapped


def pair_score(first: str | None, swapped: str | None) -> float:
    """answer_1's score from both orders' verdicts: a win must hold in both, anything else is a tie."""
    if first == "A" and swapped == "B":
        return 1.0
    if first == "B" and swapped == "A":
        return 0.0
    return 0.5


def swap_consistent(first: str | None, swapped: str | None) -> bool:
    """Whether the two orders name the same answer (or both a tie)."""
    return (first, swapped) in {("A", "B"), ("B", "A"), ("C", "C")}


def judge_pair(judge: Judge, question: str, answer_1: str, answer_2: str, rubric: str = RUBRIC) -> float:
    """Score of answer_1 against answer_2: judged in both positions; a win must hold in both."""
    return pair_score(*judge_both_orders(judge, question, answer_1, answer_2, rubric))


def run_tournament(
    judge: Judge, questions: Sequence[str], answers: Mapping[str, Sequence[str]], rubric: str = RUBRIC
) -> list[Match]:
    """Judge every pair of models on every question; answers[model][i] answers questions[i]."""
    if len(answers) < 2:
        raise DataError(f"a tournament needs at least two models, got {list(answers)}")
    for model, ans in answers.items():
        if len(ans) != len(questions):
            raise DataError(f"model '{model}' has {len(ans)} answers for {len(questions)} questions")
    matches = []
    for a, b in itertools.combinations(answers, 2):
        for i, q in enumerate(questions):
            matches.append(Match(a, b, judge_pair(judge, q, answers[a][i], answers[b][i], rubric)))
    return matches


def _models(matches: Sequence[Match]) -> list[str]:
    if not matches:
        raise DataError("no matches to rate")
    return sorted({m.model_a for m in matches} | {m.model_b for m in matches})


def win_rates(matches: Sequence[Match]) -> dict[str, float]:
    """(wins + ties / 2) / games of each model."""
    points: dict[str, float] = defaultdict(float)
    games: dict[str, int] = defaultdict(int)
    for m in matches:
        points[m.model_a] += m.score
        points[m.model_b] += 1 - m.score
        games[m.model_a] += 1
        games[m.model_b] += 1
    return {name: points[name] / games[name] for name in _models(matches)}


def elo(
    matches: Sequence[Match],
    k: float = 32.0,
    initial: float = 1000.0,
    scale: float = 400.0,
    n_shuffles: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """Sequential Elo, averaged over n_shuffles seeded orderings (plain Elo depends on game order)."""
    if k <= 0 or n_shuffles < 1:
        raise ConfigError(f"elo needs k > 0 and n_shuffles >= 1; got k={k}, n_shuffles={n_shuffles}")
    names = _models(matches)
    index = {n: i for i, n in enumerate(names)}
    a = np.array([index[m.model_a] for m in matches])
    b = np.array([index[m.model_b] for m in matches])
    s = np.array([m.score for m in matches])
    rng = np.random.default_rng(seed)
    total = np.zeros(len(names))
    for _ in range(n_shuffles):
        r = np.full(len(names), initial)
        for j in rng.permutation(len(matches)):
            expected = 1.0 / (1.0 + 10 ** ((r[b[j]] - r[a[j]]) / scale))
            delta = k * (s[j] - expected)
            r[a[j]] += delta
            r[b[j]] -= delta
        total += r
    return {n: float(total[i] / n_shuffles) for n, i in index.items()}


def bradley_terry(
    matches: Sequence[Match],
    max_iter: int = 10_000,
    tol: float = 1e-10,
    prior: float = 0.0,
    scale: float = 400.0,
    anchor: float = 1000.0,
) -> dict[str, float]:
    """Bradley-Terry maximum likelihood by Hunter's (2004) MM iteration, on the Elo scale.

    P(i beats j) = p_i / (p_i + p_j); a tie counts half a win to each side. Ratings are
    anchor + scale * log10(p_i), centred so that they average to `anchor`. `prior` adds that many
    virtual ties between every pair, which keeps the MLE finite when a model won or lost everything.
    """
    names = _models(matches)
    index = {n: i for i, n in enumerate(names)}
    m = len(names)
    wins = np.zeros((m, m))  # wins[i, j]: points of i against j
    for x in matches:
        i, j = index[x.model_a], index[x.model_b]
        wins[i, j] += x.score
        wins[j, i] += 1 - x.score
    if prior > 0:
        wins += prior / 2 * (1 - np.eye(m))
    games = wins + wins.T
    w = wins.sum(axis=1)
    if np.any(w <= 0) or np.any(w >= games.sum(axis=1)):
        raise DataError(
            "Bradley-Terry ratings diverge: some model won or lost every game "
            f"({[n for n in names if w[index[n]] <= 0 or w[index[n]] >= games.sum(axis=1)[index[n]]]}); "
            "pass prior > 0 (e.g. 1.0) or collect more games"
        )
    p = np.ones(m)
    for _ in range(max_iter):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = w / denom
        new /= math.exp(np.log(new).mean())  # fix the free scale: geometric mean 1
        done = np.max(np.abs(np.log(new) - np.log(p))) < tol
        p = new
        if done:
            break
    else:
        log.warning("Bradley-Terry MM did not converge in %d iterations", max_iter)
    ratings = scale * np.log10(p)
    return {n: float(anchor + ratings[i] - ratings.mean()) for n, i in index.items()}
