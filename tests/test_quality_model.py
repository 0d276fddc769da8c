"""Model-based quality filters: hashed-n-gram classifier (vs sklearn), n-gram LM (vs formulas), blocks."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.data.config import DataConfig
from danlu.data.documents import read_documents, run_data
from danlu.data.pipeline import DocBlock, GlobalBlock, build_block, build_pipeline
from danlu.data.quality_model import (
    FastTextLikeClassifier,
    NgramLM,
    chunk_texts,
    hashed_features,
    reference_texts,
    train_quality_classifier,
)
from danlu.errors import ConfigError, DataError

BUCKETS = 2**16  # small tables keep the tests fast; the default (2**20) is exercised once


def _synthetic(n: int, seed: int, overlap: float = 0.0) -> tuple[list[str], list[str]]:
    """Two topics of words; each document draws a fraction `overlap` of its words from the other topic."""
    rng = np.random.default_rng(seed)
    good = [f"good{i}" for i in range(60)] + ["the", "of", "and"]
    bad = [f"bad{i}" for i in range(60)] + ["the", "of", "and"]

    def doc(own: list[str], other: list[str]) -> str:
        return " ".join(rng.choice(other) if rng.random() < overlap else rng.choice(own) for _ in range(30))

    return [doc(good, bad) for _ in range(n)], [doc(bad, good) for _ in range(n)]


def test_hashed_features_are_crc32_counts_of_uni_and_bigrams_l2_normalized():
    x = hashed_features(["The cat, the CAT sat"], buckets=1000)
    grams = ["the", "cat", "the", "cat", "sat", "the cat", "cat the", "the cat", "cat sat"]
    expected = np.zeros(1000)
    for g in grams:
        expected[zlib.crc32(g.encode()) % 1000] += 1
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(x.toarray()[0], expected)
    assert hashed_features([""], buckets=1000).nnz == 0


def test_separable_sets_reach_high_held_out_accuracy_and_default_buckets_work():
    pos, neg = _synthetic(150, seed=1)
    clf = FastTextLikeClassifier(epochs=3).fit(pos[:100], neg[:100])  # default 2**20 buckets
    assert clf.weights is not None and clf.weights.shape == (2**20,)
    p, n = clf.score_many(pos[100:]), clf.score_many(neg[100:])
    assert ((p > 0.5).mean() + (n < 0.5).mean()) / 2 == 1.0
    assert 0.0 <= n.max() < 0.5 < p.min() <= 1.0
    assert clf.score(pos[100]) == pytest.approx(p[0])


def test_scores_are_deterministic_for_a_seed_and_change_with_it():
    pos, neg = _synthetic(60, seed=2, overlap=0.3)
    a = FastTextLikeClassifier(buckets=BUCKETS, seed=7).fit(pos, neg).score_many(pos + neg)
    b = FastTextLikeClassifier(buckets=BUCKETS, seed=7).fit(pos, neg).score_many(pos + neg)
    c = FastTextLikeClassifier(buckets=BUCKETS, seed=8).fit(pos, neg).score_many(pos + neg)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_matches_sklearn_logistic_regression_on_the_same_features():
    from scipy.stats import pearsonr
    from sklearn.linear_model import LogisticRegression

    pos, neg = _synthetic(400, seed=3, overlap=0.42)  # overlapping topics: neither model is perfect
    tr_pos, tr_neg, te = pos[:300], neg[:300], pos[300:] + neg[300:]
    y_te = np.r_[np.ones(100), np.zeros(100)]
    l2 = 1e-3
    ours = FastTextLikeClassifier(buckets=BUCKETS, epochs=20, l2=l2, lr=0.02, seed=0).fit(tr_pos, tr_neg)
    x_tr = hashed_features(tr_pos + tr_neg, BUCKETS)
    # sklearn minimizes C * sum(log loss) + |w|^2 / 2, i.e. our mean log loss + l2/2 |w|^2 with C = 1/(l2 n)
    ref = LogisticRegression(C=1 / (l2 * 600), max_iter=2000).fit(x_tr, np.r_[np.ones(300), np.zeros(300)])
    x_te = hashed_features(te, BUCKETS)
    p_ours = ours.score_many(te)
    p_ref = ref.predict_proba(x_te)[:, 1]
    acc_ours = ((p_ours > 0.5) == y_te).mean()
    acc_ref = ((p_ref > 0.5) == y_te).mean()
    assert 0.7 < acc_ref < 1.0  # the task is learnable but not trivial
    assert abs(acc_ours - acc_ref) <= 0.04
    assert pearsonr(ours.decision_function(te), ref.decision_function(x_te))[0] > 0.95
    assert np.abs(p_ours - p_ref).mean() < 0.08


def test_save_load_round_trip_and_damaged_files(tmp_path):
    pos, neg = _synthetic(40, seed=4, overlap=0.2)
    clf = FastTextLikeClassifier(buckets=BUCKETS).fit(pos, neg)
    path = clf.save(tmp_path / "q.npz")
    back = FastTextLikeClassifier.load(path)
    np.testing.assert_array_equal(back.score_many(pos + neg), clf.score_many(pos + neg))
    assert back.buckets == BUCKETS and back.ngrams == 2
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file
    (tmp_path / "trunc.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="damaged"):
        FastTextLikeClassifier.load(tmp_path / "trunc.npz")
    with pytest.raises(ConfigError, match="does not exist"):
        FastTextLikeClassifier.load(tmp_path / "missing.npz")
    NgramLM(2).fit(["abc"]).save(tmp_path / "lm.npz")
    with pytest.raises(DataError, match="not a danlu-fasttext-like"):
        FastTextLikeClassifier.load(tmp_path / "lm.npz")
    with pytest.raises(DataError, match="positive and negative"):
        FastTextLikeClassifier().fit(pos, [])
    with pytest.raises(ConfigError, match="not trained"):
        FastTextLikeClassifier().score("x")


# --- n-gram LM -----------------------------------------------------------------------------------


def test_kneser_ney_bigram_matches_hand_computation():
    # "aab" padded: ^a aa ab b$ (each once). Continuation counts: a:2 b:1 $:1 over 4 bigram types;
    # V = {a, b, $} + unknown = 4; d = 0.75.
    lm = NgramLM(order=2, discount=0.75).fit(["aab"])
    p1_a = (2 - 0.75) / 4 + 0.75 * 3 / 4 * (1 / 4)
    assert lm.prob("", "a") == pytest.approx(p1_a)  # an empty context queries the unigram level
    p_aa = (1 - 0.75) / 2 + 0.75 * 2 / 2 * p1_a
    assert lm.prob("a", "a") == pytest.approx(p_aa)
    # unseen context "b" -> only "b$" follows b: (1-.75)/1 + .75*1/1*P1($), P1($) = .25/4 + .75*3/4/4
    p1_end = (1 - 0.75) / 4 + 0.75 * 3 / 4 / 4
    assert lm.prob("b", "\x03") == pytest.approx(0.25 + 0.75 * p1_end)
    # an unknown character gets only the uniform share
    assert lm.prob("a", "z") == pytest.approx(0.75 * 2 / 2 * (0.75 * 3 / 4 / 4))
    lp = lm.log_probs("ab")
    assert lm.perplexity("ab") == pytest.approx(math.exp(-lp.mean()))
    assert len(lp) == 3  # a, b and the end symbol


def test_add_k_matches_its_formula():
    lm = NgramLM(order=2, smoothing="add_k", k=0.5).fit(["abab"])
    # bigrams of ^abab$: ^a ab ba ab b$ ; context "a" seen twice, both followed by b; V = 3 + 1
    assert lm.prob("a", "b") == pytest.approx((2 + 0.5) / (2 + 0.5 * 4))
    assert lm.prob("a", "a") == pytest.approx(0.5 / (2 + 0.5 * 4))
    assert lm.prob("q", "a") == pytest.approx(1 / 4)  # unseen context: uniform


@settings(max_examples=25, deadline=None)
@given(
    texts=st.lists(st.text(alphabet="abcde ", min_size=1, max_size=30), min_size=1, max_size=5),
    context=st.text(alphabet="abcdez ", max_size=6),
    order=st.integers(1, 5),
    smoothing=st.sampled_from(["kneser_ney", "add_k"]),
)
def test_every_conditional_distribution_sums_to_one(texts, context, order, smoothing):
    lm = NgramLM(order=order, smoothing=smoothing).fit(texts)
    ctx = "\x02" * order + context
    total = sum(lm.prob(ctx, c) for c in lm.vocab) + lm.prob(ctx, "\x07")  # "\x07": the unknown symbol
    assert total == pytest.approx(1.0, abs=1e-9)


def test_perplexity_separates_reference_like_text_from_chat(shakespeare_text, tmp_path):
    chunks = chunk_texts([shakespeare_text], 800)
    chat = reference_texts(["chitchat"], 800)[:40]
    lm = NgramLM(order=5).fit(chunks[:300])
    path = lm.save(tmp_path / "lm.npz")
    back = NgramLM.load(path)
    held_out = chunks[-40:]
    assert back.perplexity(held_out[0]) == pytest.approx(lm.perplexity(held_out[0]))
    ppl_good = np.median([back.perplexity(t) for t in held_out])
    ppl_chat = np.median([back.perplexity(t) for t in chat])
    assert 2 < ppl_good < ppl_chat
    assert lm.perplexity("") > 1  # an empty document still predicts its end


class _UniformModel(torch.nn.Module):
    """Logits all equal: every token has probability 1/vocab, so perplexity is exactly vocab."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, self.vocab)


class _ByteTok:
    bos_id = eos_id = pad_id = 0
    vocab_size = 257

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return [b + 1 for b in text.encode()]


def test_model_perplexity_is_exp_mean_token_loss():
    from danlu.eval.perplexity import text_perplexity
    from danlu.eval.scoring import Scorer

    scorer = Scorer(_UniformModel(257), _ByteTok(), batch_size=2, max_length=16)
    ppl = text_perplexity(scorer, "hello there, a text longer than one window")
    assert ppl == pytest.approx(257, rel=1e-5)


# --- pipeline blocks -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quality_files(tmp_path_factory, shakespeare_text):
    root = tmp_path_factory.mktemp("quality")
    good = chunk_texts([shakespeare_text], 600)
    (root / "good.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in good[:400]))
    clf = train_quality_classifier(
        [root / "good.jsonl"], ["chitchat"], root / "clf.npz", chunk_chars=600, buckets=BUCKETS, epochs=3
    )
    NgramLM(order=4).fit(good[:200]).save(root / "lm.npz")
    chat = reference_texts(["chitchat"], 600)
    corpus = [{"id": f"g{i}", "text": t} for i, t in enumerate(good[-30:])]
    corpus += [{"id": f"c{i}", "text": t} for i, t in enumerate(chat[-30:])]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    return root, clf, good, chat


def test_trained_classifier_ranks_held_out_shakespeare_above_chat(quality_files):
    _, clf, good, chat = quality_files
    p, n = clf.score_many(good[-30:]), clf.score_many(chat[-30:])
    assert ((p > 0.5).mean() + (n < 0.5).mean()) / 2 >= 0.95


def test_blocks_are_registered_and_validated(quality_files):
    root = quality_files[0]
    annotate = build_block(
        {"block": "quality_classifier", "model": str(root / "clf.npz"), "annotate_only": True}
    )
    assert isinstance(annotate, DocBlock) and annotate.reasons == ("low_quality",)
    assert isinstance(
        build_block({"block": "perplexity", "model": str(root / "lm.npz"), "annotate_only": True}), DocBlock
    )
    top = build_block({"block": "quality_classifier", "model": str(root / "clf.npz"), "keep_top": 0.5})
    assert isinstance(top, GlobalBlock)
    assert isinstance(
        build_block({"block": "perplexity", "model": str(root / "lm.npz"), "keep_bottom": 0.2}), GlobalBlock
    )
    with pytest.raises(
        ConfigError, match=r"exactly one of threshold, keep_top, annotate_only.*got threshold, keep_top"
    ):
        build_block(
            {"block": "quality_classifier", "model": str(root / "clf.npz"), "threshold": 0.5, "keep_top": 0.2}
        )
    with pytest.raises(
        ConfigError, match=r"exactly one of max_perplexity, keep_bottom, annotate_only.*got none"
    ):
        build_block(
            {"block": "perplexity", "model": str(root / "lm.npz")}
        )  # nothing chosen: no silent keep-all
    with pytest.raises(ConfigError, match="got keep_bottom, annotate_only"):
        build_block(
            {"block": "perplexity", "model": str(root / "lm.npz"), "keep_bottom": 0.5, "annotate_only": True}
        )
    with pytest.raises(ConfigError, match="annotate_only is true or false, got 'yes'"):
        build_block({"block": "perplexity", "model": str(root / "lm.npz"), "annotate_only": "yes"})
    # a threshold of 0 is a choice (keeps everything scoring >= 0), not a missing one
    assert isinstance(
        build_block({"block": "quality_classifier", "model": str(root / "clf.npz"), "threshold": 0.0}),
        DocBlock,
    )
    with pytest.raises(ConfigError, match="keep_bottom must be a fraction"):
        build_block({"block": "perplexity", "model": str(root / "lm.npz"), "keep_bottom": 1.5})
    with pytest.raises(ConfigError, match="does not exist"):
        build_block({"block": "perplexity", "model": str(root / "nope.npz"), "annotate_only": True})
    with pytest.raises(ConfigError, match="valid options: model, threshold, keep_top"):
        build_block({"block": "quality_classifier", "model": "x", "top": 3})


def test_percentile_blocks_keep_the_exact_fraction_across_shards(quality_files):
    root, clf, good, chat = quality_files
    texts = good[-30:] + chat[-30:]
    top = build_block({"block": "quality_classifier", "model": str(root / "clf.npz"), "keep_top": 0.25})
    shards = [texts[i : i + 7] for i in range(0, len(texts), 7)]
    decisions = top.decide([top.keys(s) for s in shards])
    keep = np.concatenate(decisions)["keep"]
    scores = clf.score_many(texts)
    assert keep.sum() == 15 and [len(m) for m in decisions] == [len(s) for s in shards]
    assert scores[keep].min() >= scores[~keep].max()  # exactly the 15 best
    # the decision carries each document's score, for the kept documents' meta
    np.testing.assert_allclose(np.concatenate(decisions)["quality_score"], scores)
    lm = NgramLM.load(root / "lm.npz")
    low = build_block({"block": "perplexity", "model": str(root / "lm.npz"), "keep_bottom": 0.1})
    decision = np.concatenate(low.decide([low.keys(s) for s in shards]))
    keep = decision["keep"]
    ppl = np.array([lm.perplexity(t) for t in texts])
    assert keep.sum() == 6 and ppl[keep].max() <= ppl[~keep].min()
    np.testing.assert_allclose(decision["perplexity"], ppl)


def test_pipeline_run_writes_scores_and_filters_by_threshold_and_percentile(quality_files, tmp_path):
    root, clf, _, _ = quality_files
    specs = [
        {"block": "quality_classifier", "model": str(root / "clf.npz"), "annotate_only": True},
        {"block": "perplexity", "model": str(root / "lm.npz"), "max_perplexity": 1e6},
        {"block": "quality_classifier", "model": str(root / "clf.npz"), "keep_top": 0.5},
        {"block": "quality_classifier", "model": str(root / "clf.npz"), "threshold": 0.5},
    ]
    assert [b.name for b in build_pipeline(specs)][-1] == "quality_classifier#3"
    cfg = DataConfig(sources=[str(root / "corpus.jsonl")], pipeline=specs, val_fraction=0.1, shard_docs=8)
    manifest = run_data(cfg, tmp_path / "out")
    docs = list(read_documents(tmp_path / "out", "train")) + list(read_documents(tmp_path / "out", "val"))
    assert len(docs) == 30 and all(d["id"].startswith("g") for d in docs)  # the Shakespeare half
    for d in docs:
        assert d["meta"]["quality_score"] == pytest.approx(clf.score(d["text"]))
        assert 1 < d["meta"]["perplexity"] < 1e6
    assert "low_quality" in json.dumps(manifest)


def _run_quality(root, tmp_path, specs, name):
    cfg = DataConfig(sources=[str(root / "corpus.jsonl")], pipeline=specs, val_fraction=0.1, shard_docs=8)
    manifest = run_data(cfg, tmp_path / name)
    docs = [d for split in ("train", "val") for d in read_documents(tmp_path / name, split)]
    return manifest, docs


def test_percentile_modes_write_scores_into_the_documents_they_keep(quality_files, tmp_path):
    root, clf, _, _ = quality_files
    lm = NgramLM.load(root / "lm.npz")
    specs = [
        {"block": "quality_classifier", "model": str(root / "clf.npz"), "keep_top": 0.5},
        {"block": "perplexity", "model": str(root / "lm.npz"), "keep_bottom": 0.8},
    ]
    manifest, docs = _run_quality(root, tmp_path, specs, "out")
    assert manifest["blocks"]["quality_classifier"]["removed_by_reason"] == {"low_quality": 30}
    assert manifest["blocks"]["perplexity"]["removed_by_reason"] == {"high_perplexity": 6}
    assert len(docs) == 24 and all(d["id"].startswith("g") for d in docs)
    for d in docs:  # no annotate block before them: the percentile cuts wrote the scores themselves
        assert d["meta"]["quality_score"] == pytest.approx(clf.score(d["text"]))
        assert d["meta"]["perplexity"] == pytest.approx(lm.perplexity(d["text"]))


def test_annotate_only_keeps_every_document_and_scores_each(quality_files, tmp_path):
    root, clf, _, _ = quality_files
    lm = NgramLM.load(root / "lm.npz")
    specs = [
        {"block": "quality_classifier", "model": str(root / "clf.npz"), "annotate_only": True},
        {"block": "perplexity", "model": str(root / "lm.npz"), "annotate_only": True},
    ]
    manifest, docs = _run_quality(root, tmp_path, specs, "out")
    assert len(docs) == 60 and {b["documents_out"] for b in manifest["blocks"].values()} == {60}
    for d in docs:
        assert d["meta"]["quality_score"] == pytest.approx(clf.score(d["text"]))
        assert d["meta"]["perplexity"] == pytest.approx(lm.perplexity(d["text"]))
    scores = [d["meta"]["quality_score"] for d in docs]
    assert min(scores) < 0.5 < max(scores)  # the chat half scored low and was kept anyway
