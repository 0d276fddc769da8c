"""Educational-value scores: a fast regressor trained on judge annotations, and the `edu_score` block.

FineWeb-Edu's recipe: a large judge scores a sample of documents 0-5 with an additive rubric (here
danlu.eval.edu_judge; data loads no model), a cheap model learns those scores, and that model scores
the whole corpus, which is then cut by a threshold. The cheap model here is ridge regression on the
quality classifier's hashed word n-grams (danlu.data.quality_model.hashed_features), solved in its dual
form: with n annotations and 2**20 features the n x n system (X X^T + l2 I) a = y - mean(y) is tiny,
and w = X^T a. `spearman` is the agreement figure FineWeb-Edu reports for its classifier.

The `edu_score` block writes doc["meta"]["edu_score"] and keeps documents with a score >= threshold,
the top `keep_top` fraction of the corpus, or (`annotate_only: true`) every document.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from danlu.data.quality_model import (
    DocScore,
    ScoreFilter,
    ScoreRankBlock,
    _check_modes,
    _load_npz,
    hashed_features,
    save_npz,
    score_block,
)
from danlu.errors import ConfigError, DataError

log = logging.getLogger(__name__)

_FORMAT = "danlu-edu-ridge-1"


_LINKS = ("identity", "logit")
_EDGE = 1e-4  # logit link: scores are kept this far inside (0, 5)


class EduRegressor:
    """Ridge regression of a 0-5 score on hashed word n-grams; predictions are clipped to [0, 5].

    link="logit" fits logit(score / 5) and predicts 5 * sigmoid(.): for a judge whose score is a
    sigmoid of a per-token mean (the contrast judge), the fitted target is then linear in n-gram
    frequencies (norm="l1"). norm is the feature rows' normalization (quality_model.hashed_features).
    """

    def __init__(
        self, buckets: int = 2**20, ngrams: int = 2, l2: float = 1.0, norm: str = "l2", link: str = "identity"
    ) -> None:
        if buckets < 2 or ngrams < 1 or l2 <= 0 or norm not in ("l1", "l2") or link not in _LINKS:
            raise ConfigError(
                "EduRegressor: need buckets >= 2, ngrams >= 1, l2 > 0, norm l1|l2, link identity|logit; got "
                f"{buckets=}, {ngrams=}, {l2=}, {norm=}, {link=}"
            )
        self.buckets, self.ngrams, self.l2, self.norm, self.link = buckets, ngrams, l2, norm, link
        self.weights: np.ndarray | None = None
        self.bias = 0.0

    def fit(self, texts: Sequence[str], scores: Sequence[float]) -> EduRegressor:
        y = np.asarray(scores, np.float64)
        if len(texts) != len(y) or len(y) < 2:
            raise DataError(
                f"the edu regressor needs at least 2 annotated texts with one score each; got "
                f"{len(texts)} texts and {len(y)} scores"
            )
        if self.link == "logit":
            p = np.clip(y / 5.0, _EDGE, 1.0 - _EDGE)
            y = np.log(p / (1.0 - p))
        x = hashed_features(texts, self.buckets, self.ngrams, self.norm)
        gram = (x @ x.T).toarray()
        alpha = np.linalg.solve(gram + self.l2 * np.eye(len(y)), y - y.mean())
        self.weights = np.asarray(x.T @ alpha, np.float64).ravel().astype(np.float32)
        self.bias = float(y.mean())
        return self

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        if self.weights is None:
            raise ConfigError("the edu regressor is not trained: call fit() or load() first")
        x = hashed_features(texts, self.buckets, self.ngrams, self.norm)
        z = x @ self.weights.astype(np.float64) + self.bias
        if self.link == "logit":
            return 5.0 / (1.0 + np.exp(-z))
        return np.clip(z, 0.0, 5.0)

    def save(self, path: str | Path) -> Path:
        if self.weights is None:
            raise ConfigError("the edu regressor is not trained: call fit() first")
        return save_npz(
            path,
            _FORMAT,
            weights=self.weights,
            bias=self.bias,
            buckets=self.buckets,
            ngrams=self.ngrams,
            l2=self.l2,
            norm=self.norm,
            link=self.link,
        )

    @classmethod
    def load(cls, path: str | Path) -> EduRegressor:
        z = _load_npz(path, _FORMAT, ("weights", "bias", "buckets", "ngrams", "l2"))
        # files written before norm and link existed used the defaults
        norm, link = str(z.get("norm", "l2")), str(z.get("link", "identity"))
        reg = cls(int(z["buckets"]), int(z["ngrams"]), float(z["l2"]), norm, link)
        if z["weights"].shape != (reg.buckets,):
            raise DataError(f"{path}: weights do not match {reg.buckets} buckets; the file is damaged")
        reg.weights, reg.bias = z["weights"].astype(np.float32), float(z["bias"])
        return reg


def read_annotations(path: str | Path) -> list[dict[str, Any]]:
    """Judge annotations, JSONL rows with at least {text, score} (danlu.eval.edu_judge writes them)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"annotations file {path} does not exist; annotate documents with a judge first")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                float(row["score"]), str(row["text"])
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}:{n}: not an annotation row {{text, score}}") from None
            rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no annotations")
    return rows


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank), as scipy.stats.spearmanr."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if len(ra) != len(rb) or len(ra) < 2:
        raise DataError(f"spearman needs two equal-length sequences of at least 2; got {len(ra)}, {len(rb)}")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def spearman_ci(
    a: Sequence[float], b: Sequence[float], boots: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """A percentile bootstrap interval of spearman(a, b): rows resampled with replacement."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) != len(b) or len(a) < 3 or boots < 1 or not 0 < level < 1:
        raise DataError(f"spearman_ci needs two equal-length sequences of at least 3; got {len(a)}, {len(b)}")
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(boots):
        pick = rng.integers(0, len(a), len(a))
        rho = spearman(a[pick], b[pick])
        if not np.isnan(rho):  # a resample of one repeated row has no ranks to correlate
            rhos.append(rho)
    lo, hi = np.quantile(rhos, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def spearman_brown(r: float, factor: float = 2.0) -> float:
    """The reliability of a measure `factor` times as long as one whose parts correlate r (split-half)."""
    return factor * r / (1 + (factor - 1) * r)


def train_edu_regressor(
    annotations: str | Path | Sequence[dict[str, Any]], out: str | Path | None = None, **options: Any
) -> EduRegressor:
    """Fit an EduRegressor on annotation rows (or a JSONL file of them); saved to `out` if given."""
    rows = read_annotations(annotations) if isinstance(annotations, str | Path) else list(annotations)
    reg = EduRegressor(**options).fit([r["text"] for r in rows], [float(r["score"]) for r in rows])
    if out is not None:
        reg.save(out)
        log.info("edu regressor: %d annotations -> %s", len(rows), out)
    return reg


def edu_score_block(
    model: str, threshold: float | None = None, keep_top: float | None = None, annotate_only: bool = False
) -> ScoreFilter | ScoreRankBlock:
    """The `edu_score` pipeline block over an EduRegressor .npz."""
    options = {"threshold": threshold, "keep_top": keep_top, "annotate_only": annotate_only}
    _check_modes("edu_score", options, "a score", 5.0)
    reg = EduRegressor.load(model)
    return score_block(
        DocScore("edu_score", "edu_score", "low_edu_score", True, reg.predict), threshold, keep_top
    )
