"""Scores for evaluation outputs: accuracy, SQuAD EM/F1, BLEU, chrF, ROUGE, pass@k, and their uncertainty.

BLEU and chrF are computed by sacrebleu and ROUGE by rouge-score (the `eval` extra) so that the numbers
are the ones the field publishes; this module only adapts their inputs and outputs. ROUGE-L is also
implemented here from the LCS definition (`rouge_l_lcs`) so the wrapper can be checked against it.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from danlu.errors import ConfigError, DataError

_EXTRA = "pip install 'danlu[eval]' (or pip install sacrebleu rouge-score)"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

# --- accuracy, exact match and token F1 (SQuAD v2 evaluation script) ------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation, drop articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def accuracy(predictions: Sequence[Any], targets: Sequence[Any]) -> float:
    """Fraction of predictions equal to their target."""
    _check_lengths(predictions, targets)
    return sum(p == t for p, t in zip(predictions, targets, strict=True)) / len(predictions)


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 if the normalized prediction equals any normalized reference, else 0.0."""
    refs = _as_refs(references)
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in refs))


def token_f1(prediction: str, references: str | Sequence[str]) -> float:
    """SQuAD token-overlap F1 against the best-matching reference."""
    return max(_f1_one(prediction, r) for r in _as_refs(references))


def _f1_one(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        # SQuAD v2: an empty answer scores 1 only against an empty reference
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def _as_refs(references: str | Sequence[str]) -> list[str]:
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise DataError("no reference answers given: pass at least one reference string")
    return refs


def _check_lengths(predictions: Sequence[Any], targets: Sequence[Any]) -> None:
    if len(predictions) != len(targets):
        raise DataError(
            f"{len(predictions)} predictions but {len(targets)} targets: pass one target per prediction"
        )
    if not predictions:
        raise DataError("no predictions to score: the evaluation produced an empty list")


# --- BLEU and chrF (sacrebleu) ----------------------------------------------------------------------


def _sacrebleu() -> Any:
    try:
        import sacrebleu
    except ImportError:
        raise ConfigError(f"BLEU and chrF need the sacrebleu package: {_EXTRA}") from None
    return sacrebleu


def _ref_streams(references: Sequence[str] | Sequence[Sequence[str]], n: int) -> list[list[str]]:
    """sacrebleu wants one stream per reference *position*: refs[j][i] is the j-th reference of item i."""
    if len(references) != n:
        raise DataError(f"{n} hypotheses but {len(references)} reference entries: pass one per hypothesis")
    per_item = [[r] if isinstance(r, str) else list(r) for r in references]
    counts = {len(r) for r in per_item}
    if len(counts) != 1 or 0 in counts:
        raise DataError(
            "every hypothesis needs the same (non-zero) number of references for corpus BLEU/chrF; "
            f"got counts {sorted(counts)}"
        )
    return [list(col) for col in zip(*per_item, strict=True)]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """sacrebleu corpus BLEU (0-100) with its default 13a tokenization; references[i] is a str or list."""
    _check_lengths(hypotheses, references)
    return float(_sacrebleu().corpus_bleu(list(hypotheses), _ref_streams(references, len(hypotheses))).score)


def sentence_bleu(hypothesis: str, references: str | Sequence[str]) -> float:
    """sacrebleu sentence BLEU (0-100, exponential smoothing as sacrebleu defaults to)."""
    return float(_sacrebleu().sentence_bleu(hypothesis, _as_refs(references)).score)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """sacrebleu corpus chrF (0-100; character 6-grams, beta 2, no word n-grams)."""
    _check_lengths(hypotheses, references)
    return float(_sacrebleu().corpus_chrf(list(hypotheses), _ref_streams(references, len(hypotheses))).score)


def sentence_chrf(hypothesis: str, references: str | Sequence[str]) -> float:
    """sacrebleu sentence chrF (0-100)."""
    return float(_sacrebleu().sentence_chrf(hypothesis, _as_refs(references)).score)


# --- ROUGE (rouge-score) ----------------------------------------------------------------------------


def _rouge_scorer(types: Sequence[str], use_stemmer: bool) -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ConfigError(f"ROUGE needs the rouge-score package: {_EXTRA}") from None
    bad = [t for t in types if t not in ROUGE_TYPES]
    if bad:
        raise ConfigError(f"unknown ROUGE type(s) {bad}: use any of {list(ROUGE_TYPES)}")
    return rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)


def rouge(
    prediction: str,
    reference: str,
    types: Sequence[str] = ROUGE_TYPES,
    use_stemmer: bool = False,
) -> dict[str, dict[str, float]]:
    """rouge-score's ROUGE of one pair: {type: {"precision", "recall", "fmeasure"}} in [0, 1]."""
    scores = _rouge_scorer(types, use_stemmer).score(reference, prediction)
    return {
        t: {"precision": s.precision, "recall": s.recall, "fmeasure": s.fmeasure} for t, s in scores.items()
    }


def corpus_rouge(
    predictions: Sequence[str],
    references: Sequence[str],
    types: Sequence[str] = ROUGE_TYPES,
    use_stemmer: bool = False,
) -> dict[str, float]:
    """Mean ROUGE F-measure over pairs (how rouge-score's users and most papers report a corpus)."""
    _check_lengths(predictions, references)
    scorer = _rouge_scorer(types, use_stemmer)
    totals = dict.fromkeys(types, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        for t, s in scorer.score(ref, pred).items():
            totals[t] += s.fmeasure
    return {t: v / len(predictions) for t, v in totals.items()}


def rouge_tokenize(text: str) -> list[str]:
    """rouge-score's default tokenizer without stemming: lowercase alphanumeric runs."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_lcs(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-L from its definition (Lin 2004): LCS precision, recall and F1 over rouge-score tokens."""
    pred, ref = rouge_tokenize(prediction), rouge_tokenize(reference)
    if not pred or not ref:
        return {"precision": 0.0, "recall": 0.0, "fmeasure": 0.0}
    lcs = lcs_length(ref, pred)
    p, r = lcs / len(pred), lcs / len(ref)
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"precision": p, "recall": r, "fmeasure": f}


# --- pass@k (Chen et al. 2021) -------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials.
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ConfigError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every k-subset contains a passing sample
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(results: Sequence[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems given (n, c) per problem; problems with n < k are an error."""
    if not results:
        raise DataError("no problems to score for pass@k")
    short = [n for n, _ in results if n < k]
    if short:
        raise ConfigError(f"pass@{k} needs at least {k} samples per problem; some have only {min(short)}")
    return sum(pass_at_k(n, c, k) for n, c in results) / len(results)


# --- uncertainty ---------------------------------------------------------------------------------


def stderr_of_mean(values: Sequence[float]) -> float:
    """Standard error of the sample mean: sample std (ddof=1) / sqrt(n); 0 for a single value."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise DataError("standard error of an empty list: no scores were produced")
    if x.size == 1:
        return 0.0
    return float(x.std(ddof=1) / math.sqrt(x.size))


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over resamples of `values` (seeded, reproducible)."""
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be >= 1, got {n_resamples}")
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise DataError("bootstrap of an empty list: no scores were produced")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    # vectorized fast path for the common case
    stats = x[idx].mean(axis=1) if statistic is np.mean else np.array([statistic(x[row]) for row in idx])
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(lo), float(hi)
