"""The edu-score regressor and block on crafted annotations; the judge's prompt parts on SmolLM2's template."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from scipy.stats import spearmanr

from danlu.data.block import run_filter
from danlu.data.edu import (
    EduRegressor,
    read_annotations,
    spearman,
    spearman_brown,
    spearman_ci,
    train_edu_regressor,
)
from danlu.data.pipeline import build_block
from danlu.errors import ConfigError, DataError

LESSON = tuple(
    [
        "students",
        "learn",
        "the",
        "lesson",
        "about",
        "{}",
        "and",
        "explain",
        "the",
        "{}",
        "with",
        "an",
        "exercise",
        "and",
        "its",
        "solution",
    ]
)
CHAT = tuple(
    [
        "hey",
        "lol",
        "what",
        "are",
        "you",
        "up",
        "to",
        "today",
        "i",
        "am",
        "just",
        "chilling",
        "with",
        "{}",
        "and",
        "my",
        "{}",
        "haha",
    ]
)
FILLER = ["plants", "water", "numbers", "maps", "cats", "music", "rivers", "stars", "games", "friends"]


def crafted(n: int, seed: int) -> list[dict]:
    """Texts mixing lesson words and chat words; the score is the lesson share times 5, plus noise."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        share = rng.random()
        words = [
            rng.choice(LESSON if rng.random() < share else CHAT).replace("{}", rng.choice(FILLER))
            for _ in range(40)
        ]
        rows.append({"id": str(i), "text": " ".join(words), "score": 5 * share + rng.gauss(0, 0.3)})
    return rows


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 50), rng.normal(size=50)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_regressor_learns_held_out_scores_and_round_trips(tmp_path):
    train, test = crafted(200, 0), crafted(100, 1)
    reg = train_edu_regressor(train, tmp_path / "edu.npz", l2=1.0)
    pred = reg.predict([r["text"] for r in test])
    assert pred.min() >= 0 and pred.max() <= 5
    assert spearman(pred, [r["score"] for r in test]) > 0.8
    again = EduRegressor.load(tmp_path / "edu.npz")
    np.testing.assert_allclose(again.predict([r["text"] for r in test]), pred, rtol=1e-5)


def test_annotations_file_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1"):
        read_annotations(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        read_annotations(tmp_path / "none.jsonl")
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in crafted(5, 0)) + "\n")
    assert len(read_annotations(good)) == 5
    with pytest.raises(DataError, match="at least 2"):
        EduRegressor().fit(["one"], [1.0])


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "edu.npz"
    train_edu_regressor(crafted(200, 0), path)
    return str(path)


def docs():
    lesson = " ".join(w.replace("{}", "plants") for w in LESSON * 3)
    chat = " ".join(w.replace("{}", "friends") for w in CHAT * 3)
    return [
        {"id": "lesson", "text": lesson, "source": "s", "meta": {}},
        {"id": "chat", "text": chat, "source": "s", "meta": {}},
    ]


def test_block_threshold_keeps_the_lesson_and_records_scores(model):
    block = build_block({"block": "edu_score", "model": model, "threshold": 2.5})
    kept = list(run_filter(block.filt, docs()))
    assert [d["id"] for d in kept] == ["lesson"]
    assert kept[0]["meta"]["edu_score"] > 2.5
    every = build_block({"block": "edu_score", "model": model, "annotate_only": True})
    scored = {d["id"]: d["meta"]["edu_score"] for d in run_filter(every.filt, docs())}
    assert scored["lesson"] > scored["chat"]


def test_block_keep_top_is_a_corpus_wide_cut(model):
    block = build_block({"block": "edu_score", "model": model, "keep_top": 0.5})
    keys = [block.keys([d["text"] for d in docs()])]
    decision = block.decide(keys)[0]
    assert decision["keep"].tolist() == [True, False]
    assert decision["edu_score"][0] > decision["edu_score"][1]


def test_block_options_are_checked(model):
    with pytest.raises(ConfigError, match="exactly one"):
        build_block({"block": "edu_score", "model": model})
    with pytest.raises(ConfigError, match=r"\[0, 5\]"):
        build_block({"block": "edu_score", "model": model, "threshold": 7})
    with pytest.raises(ConfigError, match="does not exist"):
        build_block({"block": "edu_score", "model": "nope.npz", "threshold": 1})


def test_logit_link_on_frequencies_learns_a_sigmoid_of_a_per_token_mean(tmp_path):
    # the contrast judge's form: score = 5 * sigmoid(mean over words of a per-word weight / temperature)
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(60)]
    weight = {w: rng.gauss(0.0, 1.0) for w in vocab}
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 40))) for _ in range(400)]
    scores = [5 / (1 + np.exp(-np.mean([weight[w] for w in t.split()]) / 0.3)) for t in texts]
    reg = EduRegressor(ngrams=1, l2=0.01, norm="l1", link="logit").fit(texts[:300], scores[:300])
    pred = reg.predict(texts[300:])
    assert spearman(pred, scores[300:]) > 0.95 and ((pred > 0) & (pred < 5)).all()
    plain = EduRegressor(ngrams=1, l2=0.01).fit(texts[:300], scores[:300]).predict(texts[300:])
    assert spearman(pred, scores[300:]) > spearman(plain, scores[300:])
    again = EduRegressor.load(reg.save(tmp_path / "r.npz"))
    assert (again.norm, again.link) == ("l1", "logit")
    np.testing.assert_allclose(again.predict(texts[300:]), pred, rtol=1e-5)
    with pytest.raises(ConfigError):
        EduRegressor(link="probit")


def test_spearman_ci_holds_the_estimate_and_narrows_with_more_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    y = x + rng.normal(size=400)  # true Spearman about 0.68
    lo, hi = spearman_ci(x, y, boots=500)
    assert lo < spearman(x, y) < hi and lo > 0.5 and hi < 0.8
    lo_small, hi_small = spearman_ci(x[:40], y[:40], boots=500)
    assert hi_small - lo_small > hi - lo
    assert spearman_ci(x, x, boots=50) == (1.0, 1.0)
    with pytest.raises(DataError):
        spearman_ci([1, 2], [1, 2])


def test_spearman_brown_doubles_a_half_length_reliability():
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    assert spearman_brown(1.0) == 1.0 and spearman_brown(0.0) == 0.0
    assert spearman_brown(0.25, factor=3) == pytest.approx(0.5)
