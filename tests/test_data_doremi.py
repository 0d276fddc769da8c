"""DoReMi domain reweighting on crafted per-domain losses, its mix in the pack stage, and per-source
losses of a model."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from danlu.data.config import DataConfig
from danlu.data.documents import document_texts, read_documents, run_data
from danlu.data.doremi import doremi_mix, doremi_weights
from danlu.data.mixing import parse_mix
from danlu.data.pack import run_pack
from danlu.errors import ConfigError
from danlu.eval.domain_loss import domain_losses
from danlu.eval.perplexity import perplexity
from danlu.eval.scoring import Scorer
from danlu.model import build_model
from danlu.model.config import ModelConfig
from danlu.tokenizer import train_tokenizer
from danlu.tokenizer.config import TokenizerConfig


def test_one_step_is_the_smoothed_exponentiated_excess():
    w = doremi_weights(
        [{"a": 3.0, "b": 2.0, "c": 1.0}], {"a": 2.0, "b": 2.5, "c": 0.5}, eta=1.0, smoothing=0.1
    )
    raw = np.exp([1.0, 0.0, 0.5])  # excess clipped at 0 for b
    want = 0.9 * raw / raw.sum() + 0.1 / 3
    assert [w["a"], w["b"], w["c"]] == pytest.approx(want.tolist(), abs=1e-12)


def test_weights_average_the_steps_and_follow_the_persistent_excess():
    proxy = [{"code": 2.0 - 0.1 * t, "chat": 1.0, "web": 1.5} for t in range(10)]
    ref = {"code": 1.0, "chat": 1.2, "web": 1.5}
    w = doremi_weights(proxy, ref, eta=1.0, smoothing=1e-3)
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["code"] > 0.9 and w["chat"] == pytest.approx(w["web"])  # no excess: the same share
    # the mean over steps, not the last step: replaying the updates by hand
    alpha, total = np.full(3, 1 / 3), np.zeros(3)
    for row in proxy:
        ex = np.maximum([row["chat"] - 1.2, row["code"] - 1.0, row["web"] - 1.5], 0)
        a = alpha * np.exp(ex)
        alpha = 0.999 * a / a.sum() + 0.001 / 3
        total += alpha
    assert [w["chat"], w["code"], w["web"]] == pytest.approx((total / 10).tolist(), rel=1e-9)
    assert doremi_weights(proxy, ref, eta=0.0) == pytest.approx({"chat": 1 / 3, "code": 1 / 3, "web": 1 / 3})
    per_step = doremi_weights(proxy, [ref] * len(proxy))
    assert per_step == pytest.approx(doremi_weights(proxy, ref))
    start = doremi_weights(proxy, ref, eta=0.0, smoothing=0.0, initial={"chat": 1, "code": 1, "web": 2})
    assert start == pytest.approx({"chat": 0.25, "code": 0.25, "web": 0.5})
    huge = doremi_weights([{"a": 1e4, "b": 0.0}] * 3, {"a": 0.0, "b": 0.0}, smoothing=0.0)
    assert math.isfinite(huge["a"]) and huge["a"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("proxy", "ref", "options", "match"),
    [
        ([], {"a": 1.0}, {}, "at one step or more"),
        ([{"a": 1.0, "b": 1.0}], {"a": 1.0}, {}, "same domains"),
        ([{"a": float("nan")}], {"a": 1.0}, {}, "finite"),
        ([{"a": 1.0}] * 2, [{"a": 1.0}] * 3, {}, "one per proxy row"),
        ([{"a": 1.0}], {"a": 1.0}, {"eta": -1}, "eta"),
        ([{"a": 1.0}], {"a": 1.0}, {"smoothing": 2}, "smoothing"),
        ([{"a": 1.0}], {"a": 1.0}, {"initial": {"b": 1}}, "initial"),
    ],
)
def test_bad_inputs_say_what_is_wrong(proxy, ref, options, match):
    with pytest.raises(ConfigError, match=match):
        doremi_weights(proxy, ref, **options)


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory, word_lines):
    root = tmp_path_factory.mktemp("doremi")
    paths = []
    for tag, seed in (("alpha", 1), ("beta", 2)):
        path = root / f"{tag}.jsonl"
        lines = word_lines(80, seed=seed)
        path.write_text("".join(json.dumps({"text": f"{tag} {i}: {t}"}) + "\n" for i, t in enumerate(lines)))
        paths.append(str(path))
    run_data(DataConfig(sources=paths, val_fraction=0.1), root / "docs")
    tok = train_tokenizer(document_texts(root / "docs"), TokenizerConfig(vocab_size=300), root / "tok")
    return root, tok, paths


def test_the_doremi_mix_is_what_the_pack_stage_lays_out(two_sources, tmp_path):
    root, tok, (a, b) = two_sources
    mix = doremi_mix([{a: 3.0, b: 1.0}] * 4, {a: 2.0, b: 1.0}, eta=0.5, smoothing=0.05)
    index = run_pack(root / "docs", tok, tmp_path / "t", parse_mix(mix, [a, b], default_seed=0))
    realized = index["splits"]["train"]["mix"]["phases"][0]["sources"]
    for src in (a, b):  # within a document of the asked share (documents are whole)
        assert realized[src]["share"] == pytest.approx(mix["weights"][src], abs=0.03)
    assert mix["weights"][a] > 0.5


def test_domain_losses_are_per_token_losses_of_each_source(two_sources):
    root, tok, (a, _) = two_sources
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=1, n_embd=32, n_head=2, vocab_size=tok.vocab_size, max_seq_len=64)
    scorer = Scorer(build_model(cfg).eval(), tok)
    docs = list(read_documents(root / "docs", "val"))[:12]
    got = domain_losses(scorer, docs)
    assert sorted(got) == sorted({d["source"] for d in docs})
    for src, loss in got.items():
        texts = [d["text"] for d in docs if d["source"] == src]
        assert loss == pytest.approx(perplexity(scorer, texts)["nll_per_token"], rel=1e-9)
    capped = domain_losses(scorer, docs, max_docs_per_source=1)
    first = {}
    for d in docs:
        first.setdefault(d["source"], d["text"])
    assert capped == pytest.approx({s: perplexity(scorer, [t])["nll_per_token"] for s, t in first.items()})
    assert Counter(d["source"] for d in docs)[a] > 1
