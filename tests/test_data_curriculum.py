"""Curriculum order in the pack stage (data.mix.order) and the loader that reads it in that order."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from danlu.data.config import DataConfig
from danlu.data.curriculum import meta_value, order_phase, parse_order
from danlu.data.documents import document_texts, run_data
from danlu.data.loader import TokenDataset, TrainLoader
from danlu.data.mixing import parse_mix
from danlu.data.pack import run_pack
from danlu.errors import ConfigError
from danlu.tokenizer import train_tokenizer
from danlu.tokenizer.config import TokenizerConfig


def test_order_phase_sorts_stably_with_missing_scores_last():
    keys = np.array([3.0, np.nan, 1.0, 3.0, 2.0])
    docs = np.array([0, 1, 2, 3, 4, 2])  # a repeat of document 2
    assert order_phase(docs, keys).tolist() == [2, 2, 4, 0, 3, 1]
    assert order_phase(docs, keys, descending=True).tolist() == [0, 3, 4, 2, 2, 1]
    assert math.isnan(meta_value({"s": "high"}, "s")) and math.isnan(meta_value({}, "s"))
    assert meta_value({"s": 2}, "s") == 2.0 and math.isnan(meta_value({"s": True}, "s"))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("length", r"expected \{by"),
        ({"descending": True}, r"expected \{by"),
        ({"by": "length", "reverse": True}, "unknown key reverse"),
        ({"by": 3}, "order.by"),
        ({"by": "length", "descending": "yes"}, "order.descending"),
    ],
)
def test_bad_orders_name_the_key(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_order(raw)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, word_lines):
    """Documents whose meta holds a `difficulty` (from the JSONL source), and a tokenizer for them."""
    root = tmp_path_factory.mktemp("curriculum")
    lines = word_lines(120, seed=4, min_words=3, max_words=30)
    rows = [{"text": f"doc {i}: {t}", "difficulty": (i * 37) % 101} for i, t in enumerate(lines)]
    rows[5].pop("difficulty")  # one document without the score
    src = root / "a.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_data(DataConfig(sources=[str(src)], val_fraction=0.1), root / "docs")
    tok = train_tokenizer(document_texts(root / "docs"), TokenizerConfig(vocab_size=300), root / "tok")
    return root, tok, str(src)


def _stream_docs(tok, out):
    stream = np.fromfile(out / "train.bin", dtype=np.uint16)
    starts = np.load(out / "train.docs.npy")
    ends = [*starts[1:], len(stream)]
    return [(tok.decode(stream[s + 1 : e - 1].tolist()), e - s) for s, e in zip(starts, ends, strict=True)]


def test_meta_score_order_within_each_phase(scored, tmp_path):
    root, tok, src = scored
    raw = {"phases": [{"until": 0.5}, {"until": 1.0}], "order": {"by": "difficulty", "descending": True}}
    index = run_pack(root / "docs", tok, tmp_path / "t", parse_mix(raw, [src], default_seed=0))
    mix = index["splits"]["train"]["mix"]
    assert mix["order"] == {"by": "difficulty", "descending": True}
    difficulty = {f"doc {i}:": (i * 37) % 101 for i in range(120)}
    docs = _stream_docs(tok, tmp_path / "t")
    starts = np.cumsum([0, *(n for _, n in docs)])
    for phase in mix["phases"]:
        inside = [d for (d, _), s in zip(docs, starts, strict=False) if phase["start"] <= s < phase["end"]]
        scores = [difficulty[" ".join(d.split()[:2])] for d in inside]
        unscored = [i for i, d in enumerate(inside) if d.startswith("doc 5:")]
        if unscored:  # the document without a score is last of its phase
            assert unscored == [len(inside) - 1]
            scores = scores[:-1]
        assert scores == sorted(scores, reverse=True) and len(set(scores)) > 5
    plain = run_pack(root / "docs", tok, tmp_path / "p", parse_mix({"phases": raw["phases"]}, [src], 0))
    assert sorted(_stream_docs(tok, tmp_path / "p")) == sorted(docs)  # the same documents, reordered
    assert plain["splits"]["train"]["mix"]["order"] is None


def test_length_order_and_the_loader_reads_it_in_order(scored, tmp_path):
    root, tok, src = scored
    run_pack(root / "docs", tok, tmp_path / "t", parse_mix({"order": {"by": "length"}}, [src], 0))
    lengths = [n for _, n in _stream_docs(tok, tmp_path / "t")]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    ds = TokenDataset(tmp_path / "t", "train")
    assert ds.ordered
    loader = TrainLoader(ds, batch_size=2, seq_len=8, seed=1)
    firsts = [int(v) for _ in range(5) for v in loader.next_batch()[0][:, 0]]
    assert firsts == [int(ds.tokens[i * 8]) for i in range(10)]  # windows in stream order
    assert loader.state_dict()["ordered"] is True
