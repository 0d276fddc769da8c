"""Noise augmentation: each edit kind keeps what it must keep; seeded per document; marked in lineage."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.data.augment import NoiseAugmenter
from danlu.data.config import DataConfig
from danlu.data.documents import read_documents, run_data
from danlu.data.pipeline import build_block
from danlu.errors import ConfigError

texts = st.lists(st.text(alphabet="abcé xy\n\t", min_size=0, max_size=8), max_size=20).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(text=texts, seed=st.integers(0, 99))
def test_each_edit_kind_keeps_what_it_must(text, seed):
    words = text.split()
    same, n = NoiseAugmenter(0, 0, 0).augment(text, random.Random(seed))
    assert (same, n) == (text, 0)
    out, n = NoiseAugmenter(char_swap=1.0, word_swap=0, word_delete=0).augment(text, random.Random(seed))
    got = out.split()
    assert len(got) == len(words) and all(Counter(a) == Counter(b) for a, b in zip(got, words, strict=True))
    assert n == sum(len(w) > 1 for w in words)
    out, n = NoiseAugmenter(char_swap=0, word_swap=0.5, word_delete=0).augment(text, random.Random(seed))
    assert Counter(out.split()) == Counter(words)
    out, n = NoiseAugmenter(char_swap=0, word_swap=0, word_delete=0.5).augment(text, random.Random(seed))
    it = iter(words)
    assert all(w in it for w in out.split())  # a subsequence of the input's words
    assert len(out.split()) == len(words) - n


def test_deletion_keeps_the_spacing_around_the_words_left():
    block = NoiseAugmenter(char_swap=0, word_swap=0, word_delete=0.4)
    out, n = block.augment("  one two\tthree\nfour five  ", random.Random(3))
    assert n > 0 and out.startswith("  ") and out.endswith("  ") and "  " not in out.strip()


def test_edits_are_seeded_by_document_id_not_by_order():
    block = NoiseAugmenter(char_swap=0.3, word_swap=0.3, word_delete=0.2, seed=7)
    docs = [
        {"id": f"d{i}", "text": f"the quick brown fox number {i} jumps over the lazy dog", "meta": {}}
        for i in range(5)
    ]
    first = {d["id"]: (block.filter(d), d["text"])[1] for d in [dict(x, meta={}) for x in docs]}
    again = {d["id"]: (block.filter(d), d["text"])[1] for d in [dict(x, meta={}) for x in reversed(docs)]}
    assert first == again and any(first[d["id"]] != d["text"] for d in docs)
    other = NoiseAugmenter(char_swap=0.3, word_swap=0.3, word_delete=0.2, seed=8)
    assert any(other.augment(d["text"], other._rng(d["id"]))[0] != first[d["id"]] for d in docs)


def test_the_block_marks_documents_and_lineage(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text(
        "".join(json.dumps({"text": f"document {i} with a few words to edit here"}) + "\n" for i in range(10))
    )
    # every word of two or more characters gets one swap: edits > 0 whatever ids the documents get
    spec = {"block": "noise", "char_swap": 1.0, "word_swap": 0.0, "word_delete": 0.0}
    m = run_data(DataConfig(sources=[str(src)], pipeline=[spec], val_fraction=0.2), tmp_path / "out")
    assert m["lineage"]["blocks"][0]["augments"] is True and m["blocks"]["noise"]["documents_out"] == 10
    docs = [d for s in ("train", "val") for d in read_documents(tmp_path / "out", s)]
    assert all(
        d["meta"]["augmented"]["block"] == "noise" and d["meta"]["augmented"]["edits"] > 0 for d in docs
    )
    with pytest.raises(ConfigError, match="word_delete"):
        build_block({"block": "noise", "word_delete": 1.5})
