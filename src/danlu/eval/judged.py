"""Judged evals: MT-Bench-style single-answer grading and AlpacaEval-style win rates against a reference.

The judge is a danlu model dir (a chat model such as the imported SmolLM2-135M-Instruct; a base model
is prompted as a transcript). Rather than generating an explanation and parsing its verdict, the
judge's reply is prefilled up to the verdict and the verdict is read off its log-probabilities:
"Rating: [[" followed by "1]]" .. "10]]" (MT-Bench's single-v1 prompt; the expected rating over the
renormalized ten is the score, the argmax the integer grade), and "[[" followed by "A]]", "B]]" or
"C]]" for a pairwise comparison (danlu.eval.judge's rubric, judged in both orders). One forward per
option, deterministic, and usable with judges too small to follow the explain-then-rate format.

The length-controlled win rate follows AlpacaEval 2.0's idea with one model against one reference:
a logistic regression of the preference on tanh(length difference / its standard deviation), whose
prediction at zero length difference is the win rate with the length preference taken out (AlpacaEval
also fits a per-instruction difficulty across many models; with one model it is left out).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from danlu.errors import ConfigError
from danlu.eval.metrics import bootstrap_ci
from danlu.eval.scoring import Scorer

# MT-Bench's single-answer grading prompt (FastChat judge_prompts.jsonl, "single-v1")
SINGLE_PROMPT = """[Instruction]
Please act as an impartial judge and evaluate the quality of the response provided by an AI \
assistant to the user question displayed below. Your evaluation should consider factors such as the \
helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your \
evaluation by providing a short explanation. Be as objective as possible. After providing your \
explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: \
"[[rating]]", for example: "Rating: [[5]]".

[Question]
{question}

[The Start of Assistant's Answer]
{answer}
[The End of Assistant's Answer]"""

RATINGS = tuple(range(1, 11))


class ModelJudge:
    """A danlu model as a judge: `rate(prompt)` for single grading, and a pairwise `Judge` (prompt ->
    "[[A]]"/"[[B]]"/"[[C]]") for danlu.eval.judge."""

    def __init__(self, model: Any, tok: Any, chat: bool, batch_size: int = 4, device: str = "cpu"):
        self.tok = tok
        self.chat = chat
        self.scorer = Scorer(model, tok, batch_size=batch_size, device=device)

    @classmethod
    def from_dir(cls, path: str | Path, device: str = "cpu") -> ModelJudge:
        from danlu.model_dir import load_model, read_metadata

        model, tok, _ = load_model(path, device=device)
        return cls(model, tok, bool(read_metadata(path).get("chat")), device=device)

    def _ids(self, prompt: str, prefill: str) -> list[int]:
        messages = [{"role": "user", "content": prompt}]
        if self.chat:
            text = self.tok.apply_chat_template(messages, add_generation_prompt=True)
            return self.tok.encode(text, allowed_special="all") + self.tok.encode(prefill)
        from danlu.transcript import transcript_ids

        return transcript_ids(self.tok, messages) + self.tok.encode(" " + prefill)

    def option_logprobs(self, prompt: str, prefill: str, options: Sequence[str]) -> np.ndarray:
        """Log-probability of each option continuing the judge's reply after `prefill`."""
        ctx = self._ids(prompt, prefill)
        scores = self.scorer.loglikelihood_tokens([(ctx, self.tok.encode(o)) for o in options])
        return np.array([s.logprob for s in scores])

    def rate(self, prompt: str) -> tuple[float, int]:
        """(expected rating, most likely rating) of a single-grading prompt, on 1..10."""
        lp = self.option_logprobs(prompt, "Rating: [[", [f"{r}]]" for r in RATINGS])
        p = np.exp(lp - lp.max())
        p /= p.sum()
        return float(p @ np.array(RATINGS)), RATINGS[int(lp.argmax())]

    def __call__(self, prompt: str) -> str:
        lp = self.option_logprobs(prompt, "[[", ["A]]", "B]]", "C]]"])
        return f"[[{'ABC'[int(lp.argmax())]}]]"


def truncate(tok: Any, text: str, max_tokens: int) -> str:
    """text cut to its first max_tokens tokens (a judge prompt must fit the judge's context)."""
    ids = tok.encode(text)
    return text if len(ids) <= max_tokens else tok.decode(ids[:max_tokens])


def single_prompt(question: str, answer: str) -> str:
    return SINGLE_PROMPT.format(question=question, answer=answer)


def _sigmoid(x: np.ndarray | float) -> Any:
    return 1.0 / (1.0 + np.exp(-x))


def fit_length_glm(scores: Sequence[float], length_diff: Sequence[float], l2: float = 1e-2) -> np.ndarray:
    """(intercept, length weight) of P(win) = sigmoid(b0 + b1 * tanh(d / sd(d))), fitted by maximum
    likelihood on soft labels (a tie counts half); a small L2 keeps separable data finite."""
    from scipy.optimize import minimize

    y = np.asarray(scores, dtype=np.float64)
    d = np.asarray(length_diff, dtype=np.float64)
    sd = d.std()
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)

    def loss(b: np.ndarray) -> tuple[float, np.ndarray]:
        z = b[0] + b[1] * x
        p = _sigmoid(z)
        eps = 1e-12
        nll = -np.sum(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)) + l2 * float(b @ b)
        g = p - y
        return float(nll), np.array([g.sum(), (g * x).sum()]) + 2 * l2 * b

    return minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B").x


def length_controlled_win_rate(
    scores: Sequence[float], length_diff: Sequence[float], n_resamples: int = 200, seed: int = 0
) -> tuple[float, list[float]]:
    """The win rate predicted at zero length difference, with a percentile-bootstrap 95% interval
    (items resampled, the regression refitted on each resample)."""
    y = np.asarray(scores, dtype=np.float64)
    d = np.asarray(length_diff, dtype=np.float64)
    point = float(_sigmoid(fit_length_glm(y, d)[0]))
    rng = np.random.default_rng(seed)
    boots = [
        float(_sigmoid(fit_length_glm(y[i], d[i])[0])) for i in rng.integers(0, len(y), (n_resamples, len(y)))
    ]
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return point, [float(lo), float(hi)]


def _mean_ci(name: str, values: Sequence[float]) -> dict[str, Any]:
    from danlu.eval.scoring import mean_stderr

    return {
        name: sum(values) / len(values),
        f"{name}_stderr": mean_stderr(values),
        f"{name}_ci95": list(bootstrap_ci(values)),
    }


def grade_answers(
    rate: Callable[[str], tuple[float, int]],
    questions: Sequence[str],
    answers: Sequence[str],
    categories: Sequence[str],
) -> dict[str, Any]:
    """MT-Bench-style single grading: mt_score (mean expected rating, 1..10), by category too."""
    graded = [rate(single_prompt(q, a)) for q, a in zip(questions, answers, strict=True)]
    scores = [g[0] for g in graded]
    by_cat: dict[str, list[float]] = {}
    for c, s in zip(categories, scores, strict=True):
        by_cat.setdefault(c, []).append(s)
    return {
        **_mean_ci("mt_score", scores),
        "mt_grade": sum(g[1] for g in graded) / len(graded),
        "categories": {c: sum(v) / len(v) for c, v in by_cat.items()},
        "per_item": [{"score": s, "grade": g} for s, g in graded],
    }


def pairwise_win_rate(
    judge: Callable[[str], str],
    questions: Sequence[str],
    answers: Sequence[str],
    references: Sequence[str],
) -> dict[str, Any]:
    """AlpacaEval-style: each answer against the reference's, judged in both orders (a win must hold
    in both); win_rate (ties half), swap_consistency, and the length-controlled win rate."""
    from danlu.eval.judge import judge_both_orders, pair_score, swap_consistent

    if not len(questions) == len(answers) == len(references) or not questions:
        raise ConfigError("pairwise_win_rate needs one answer and one reference per question")
    verdicts = [
        judge_both_orders(judge, q, a, r) for q, a, r in zip(questions, answers, references, strict=True)
    ]
    scores = [pair_score(*v) for v in verdicts]
    consistent = [float(swap_consistent(*v)) for v in verdicts]
    diff = [len(a) - len(r) for a, r in zip(answers, references, strict=True)]
    lc, lc_ci = length_controlled_win_rate(scores, diff)
    return {
        **_mean_ci("win_rate", scores),
        "lc_win_rate": lc,
        "lc_win_rate_ci95": lc_ci,
        **_mean_ci("swap_consistency", consistent),
        "wins": sum(s == 1.0 for s in scores),
        "ties": sum(s == 0.5 for s in scores),
        "losses": sum(s == 0.0 for s in scores),
        "mean_length": sum(map(len, answers)) / len(answers),
        "reference_mean_length": sum(map(len, references)) / len(references),
        "per_item": [{"verdicts": list(v), "score": s} for v, s in zip(verdicts, scores, strict=True)],
    }
