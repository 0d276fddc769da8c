"""The trained toxicity classifier on crafted labelled lines: precision/recall, the toxicity block with
`classifier_model` after its word list, and the teacher's scores on real lines (needs the PyPI sdist)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from danlu.data.block import Stats, run_filter
from danlu.data.pipeline import block_options, build_block
from danlu.data.toxicity_model import load_toxicity_model, precision_recall, train_toxicity_model
from danlu.errors import ConfigError, DataError

INSULTS = ["idiot", "moron", "loser", "stupid", "pathetic", "worthless"]
PLAIN = ["garden", "train", "book", "evening", "tomatoes", "music", "river", "coffee"]


def crafted_lines(n: int = 400, seed: int = 0) -> tuple[list[str], list[bool]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        toxic = i % 5 == 0
        words = [rng.choice(PLAIN) for _ in range(6)]
        if toxic:
            words[rng.randrange(6)] = rng.choice(INSULTS)
            words.insert(0, "you")
        texts.append(" ".join(words))
        labels.append(toxic)
    return texts, labels


def test_precision_recall_counts():
    got = precision_recall([True, True, False, False, True], [True, False, False, True, True])
    assert (got.n, got.positives) == (5, 3)
    assert got.precision == pytest.approx(2 / 3) and got.recall == pytest.approx(2 / 3)
    nothing = precision_recall([False, False], [False, True])
    assert np.isnan(nothing.precision) and nothing.recall == 0.0
    with pytest.raises(DataError):
        precision_recall([True], [True, False])


def test_trained_model_separates_held_out_crafted_lines(tmp_path):
    texts, labels = crafted_lines()
    clf, held = train_toxicity_model(texts, labels, tmp_path / "tox.npz", held_out=0.25, epochs=20, lr=0.2)
    assert len(held.labels) == 100 and held.labels.sum() > 10
    assert held.at(0.5).precision >= 0.9 and held.at(0.5).recall >= 0.9
    again = load_toxicity_model(tmp_path / "tox.npz")
    np.testing.assert_allclose(again.score_many(texts[:5]), clf.score_many(texts[:5]), rtol=1e-6)
    with pytest.raises(ConfigError):
        train_toxicity_model(texts, labels, held_out=1.0)
    with pytest.raises(DataError):
        train_toxicity_model(texts, labels[:-1])


def test_toxicity_block_runs_the_word_list_then_the_model(tmp_path):
    texts, labels = crafted_lines()
    train_toxicity_model(texts, labels, tmp_path / "tox.npz", held_out=0.25, epochs=20, lr=0.2)
    assert "classifier_model" in block_options("toxicity")
    block = build_block({"block": "toxicity", "classifier_model": str(tmp_path / "tox.npz")})
    docs = [
        {"id": "insult", "text": "you pathetic worthless moron garden", "source": "s", "meta": {}},
        {"id": "plain", "text": "the river garden book and coffee", "source": "s", "meta": {}},
        {"id": "swear", "text": "fuck " * 5 + "garden", "source": "s", "meta": {}},
    ]
    stats = Stats()
    kept = list(run_filter(block.filt, docs, stats))
    assert [d["id"] for d in kept] == ["plain"]
    assert kept[0]["meta"]["toxicity"]["classifier_score"] < 0.5
    # the word list removed the swearing first; the model removed the insult, which has no listed word
    assert dict(stats.removed_by_reason) == {"toxic_words": 1, "toxic_classifier": 1}
    words_only = build_block({"block": "toxicity"})
    assert [d["id"] for d in run_filter(words_only.filt, docs)] == ["insult", "plain"]
    with pytest.raises(ConfigError):
        build_block({"block": "toxicity", "classifier_model": str(tmp_path / "missing.npz")})


@pytest.mark.needs_data
def test_teacher_flags_insults_not_plain_lines():
    from danlu.data.toxicity_model import teacher_scores

    p = teacher_scores(["you are a stupid idiot", "have a lovely evening, my friend"])
    assert p[0] > 0.9 and p[1] < 0.1


def test_the_eval_toxicity_task_scores_with_the_trained_model(tmp_path):
    from danlu.eval.safety import toxicity_scores

    texts, labels = crafted_lines()
    clf, _ = train_toxicity_model(texts, labels, tmp_path / "tox.npz", held_out=0.25, epochs=20, lr=0.2)
    got = toxicity_scores(["you stupid loser", "coffee by the river"], str(tmp_path / "tox.npz"))
    assert got == pytest.approx(clf.score_many(["you stupid loser", "coffee by the river"]).tolist())
    assert got[0] > 0.5 > got[1] and toxicity_scores(["x"], None) is None
