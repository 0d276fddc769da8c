"""A trained toxicity classifier: danlu's hashed n-gram logistic model, distilled from a labelled teacher.

No package on PyPI ships labelled toxic / non-toxic text (hatecomp, toxic-comment-collection and the like
download it at run time from elsewhere). alt-profanity-check 1.9.1 (MIT) ships a model instead: a
calibrated linear SVM on TF-IDF words, trained on about 200k human-labelled comments (offensive or not).
It is the judge here, as the rubric judge is for edu scores: it labels lines of the corpus sources, and
danlu's FastTextLikeClassifier learns those labels. The result is one .npz that scores without sklearn
or a pickle, and that the `toxicity` block (after its word list, the cheap pre-filter) and the
toxicity eval task load with `load_toxicity_model`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from danlu.data.quality_model import FastTextLikeClassifier
from danlu.errors import ConfigError, DataError, MissingExtra
from danlu.fetch import Source, fetch_source

log = logging.getLogger(__name__)


def _no_documents(root: Path) -> Iterator[dict[str, Any]]:
    return iter(())  # the teacher is a model, not a corpus


TEACHER = Source(
    name="alt_profanity_check",
    package="alt-profanity-check",
    version="1.9.1",
    filename="alt_profanity_check-1.9.1.tar.gz",
    sha256="215fca893fa19cb4f7d474369593711646499dd230fad3d6cd449222a11c1fdf",
    members=lambda p: p.endswith(("model.joblib", "vectorizer.joblib", "LICENSE")),
    read=_no_documents,
    description="alt-profanity-check's offensive-language model (MIT), sdist from PyPI",
)


def teacher_scores(texts: Sequence[str]) -> np.ndarray:
    """P(offensive) of each text by the teacher (needs scikit-learn, which unpickles its model)."""
    try:
        import joblib
    except ImportError:
        raise MissingExtra("the toxicity teacher needs scikit-learn: pip install 'danlu[data]'") from None
    root = fetch_source(TEACHER)
    found = {p.name: p for p in root.rglob("*.joblib")}
    if {"model.joblib", "vectorizer.joblib"} - set(found):
        raise DataError(f"{root} lacks the teacher's model files; delete it to refetch")
    vectorizer, model = joblib.load(found["vectorizer.joblib"]), joblib.load(found["model.joblib"])
    return np.asarray(model.predict_proba(vectorizer.transform(list(texts)))[:, 1], np.float64)


def source_lines(sources: Sequence[str] = ("chitchat", "shakespeare"), min_chars: int = 20) -> list[str]:
    """Lines (chat turns, verse lines) of registry sources: the unit the teacher was trained on."""
    from danlu.data.sources import read_source

    out = []
    for name in sources:
        for doc in read_source(name):
            out.extend(s for line in doc["text"].split("\n") if len(s := line.strip()) >= min_chars)
    return out


@dataclass(frozen=True)
class Agreement:
    n: int
    positives: int  # by the labels
    precision: float
    recall: float

    def line(self, name: str) -> str:
        return (
            f"{name}: {self.n} lines, {self.positives} labelled toxic; precision {self.precision:.3f}, "
            f"recall {self.recall:.3f}"
        )


def precision_recall(predicted: Sequence[bool], labels: Sequence[bool]) -> Agreement:
    pred, gold = np.asarray(predicted, bool), np.asarray(labels, bool)
    if pred.shape != gold.shape:
        raise DataError(f"precision_recall: {len(pred)} predictions for {len(gold)} labels")
    tp = int((pred & gold).sum())
    precision = tp / int(pred.sum()) if pred.any() else float("nan")
    recall = tp / int(gold.sum()) if gold.any() else float("nan")
    return Agreement(len(gold), int(gold.sum()), precision, recall)


@dataclass(frozen=True)
class HeldOut:
    """The classifier's scores and the labels of the held-out lines."""

    scores: np.ndarray
    labels: np.ndarray

    def at(self, threshold: float) -> Agreement:
        return precision_recall(self.scores >= threshold, self.labels)


def train_toxicity_model(
    texts: Sequence[str],
    labels: Sequence[bool],
    out: str | Path | None = None,
    negatives_per_positive: float = 3.0,
    held_out: float = 0.2,
    seed: int = 0,
    **options: Any,
) -> tuple[FastTextLikeClassifier, HeldOut]:
    """Fit on labelled lines (positives and a sample of negatives, seeded); the held-out `held_out`
    fraction of all lines, at their natural toxic rate, gives precision and recall (HeldOut.at)."""
    if len(texts) != len(labels):
        raise DataError(f"{len(texts)} texts but {len(labels)} labels")
    if not 0.0 < held_out < 1.0 or negatives_per_positive <= 0:
        raise ConfigError(
            f"need 0 < held_out < 1 and negatives_per_positive > 0; got {held_out}, {negatives_per_positive}"
        )
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    cut = int(len(order) * (1.0 - held_out))
    train, test = order[:cut], order[cut:]
    pos = [texts[i] for i in train if labels[i]]
    neg_all = [texts[i] for i in train if not labels[i]]
    neg = random.Random(seed + 1).sample(neg_all, min(len(neg_all), int(len(pos) * negatives_per_positive)))
    clf = FastTextLikeClassifier(seed=seed, **options).fit(pos, neg)
    held = HeldOut(clf.score_many([texts[i] for i in test]), np.asarray([labels[i] for i in test], bool))
    if out is not None:
        clf.save(out)
        log.info("toxicity model: %d toxic, %d clean lines -> %s", len(pos), len(neg), out)
    return clf, held


def load_toxicity_model(path: str | Path) -> FastTextLikeClassifier:
    """A trained toxicity model (.npz); its score_many(texts) is P(toxic) of each text."""
    return FastTextLikeClassifier.load(path)
