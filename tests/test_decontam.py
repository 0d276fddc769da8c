"""Decontamination: word n-gram overlap with evaluation sets, against a plain-Python reference."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.data.block import Stats
from danlu.data.config import DataConfig
from danlu.data.decontam import Decontaminator, NgramIndex
from danlu.data.documents import read_documents, run_data
from danlu.data.pipeline import build_block
from danlu.errors import ConfigError

EVAL = [
    "Which gas do plants absorb from the air during photosynthesis? Carbon dioxide. Oxygen. Nitrogen.",
    "A ball is dropped from a tall building; which force pulls it toward the ground? Gravity. Friction.",
]


def _reference_matches(text: str, evals: list[str], n: int) -> int:
    def grams(t: str) -> list[tuple[str, ...]]:
        w = re.findall(r"\w+", t.lower())
        return [tuple(w)] if 0 < len(w) < n else [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]

    index = {g for e in evals for g in grams(e)}
    return sum(g in index for g in grams(text))


def _doc(text: str) -> dict:
    return {"id": "d", "text": text, "source": "s", "meta": {}}


def test_planted_contamination_is_found_whatever_the_case_and_punctuation():
    block = Decontaminator(texts=EVAL)
    planted = "Notes from class. WHICH gas do plants absorb -- from the air, during photosynthesis?? carbon DIOXIDE. oxygen!"
    near_miss = "which gas do plants absorb from the air during photosynthesis? We never said."  # 9 words
    clean = "The quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat."
    for text, contaminated in [(planted, True), (near_miss, False), (clean, False), (EVAL[1], True)]:
        doc = _doc(text)
        keep, reason = block.filter(doc)
        assert (not keep, reason == "contaminated") == (contaminated, contaminated), text
        assert block.index.matches(text) == _reference_matches(text, EVAL, 13)


def test_flag_mode_keeps_documents_and_marks_them():
    block = build_block({"block": "decontaminate", "mode": "flag", "texts": EVAL, "min_matches": 2})
    docs = [_doc(EVAL[0]), _doc("Carbon dioxide is what plants absorb from the air during photosynthesis.")]
    out = list(block.run(docs, Stats()))
    assert len(out) == 2
    assert out[0]["meta"]["decontaminate"]["matches"] == _reference_matches(EVAL[0], EVAL, 13) >= 2
    assert "decontaminate" not in out[1]["meta"]
    with pytest.raises(ConfigError, match="mode"):
        Decontaminator(mode="drop", texts=EVAL)


@settings(max_examples=80, deadline=None)
@given(
    words=st.lists(st.sampled_from(["a", "b", "c", "Gas", "air", "plants", "x1"]), min_size=0, max_size=40),
    n=st.integers(1, 6),
    seps=st.sampled_from([" ", ", ", "\n", " -- "]),
)
def test_match_counts_equal_the_reference(words, n, seps):
    evals = ["a b c gas air plants a b", "plants x1 c c b a gas"]
    text = seps.join(words)
    assert NgramIndex.from_texts(evals, n).matches(text) == _reference_matches(text, evals, n)


def test_decontamination_in_the_data_stage_removes_and_counts(tmp_path):
    src = tmp_path / "c.jsonl"
    rows = [f"Ordinary document number {i} about rivers, towns and the weather of spring." for i in range(6)]
    rows.insert(3, "Homework: " + EVAL[1] + " Answer below.")
    src.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    pipeline = [{"block": "clean"}, {"block": "decontaminate", "texts": EVAL}]
    m = run_data(DataConfig(sources=[str(src)], pipeline=pipeline, val_fraction=0.2), tmp_path / "out")
    assert m["blocks"]["decontaminate"]["removed_by_reason"] == {"contaminated": 1}
    assert m["sources"][str(src)]["contaminated"] == 1
    kept = [d["text"] for s in ("train", "val") for d in read_documents(tmp_path / "out", s)]
    assert len(kept) == 6 and not any("Homework" in t for t in kept)


@pytest.mark.needs_data
def test_real_eval_sets_catch_a_planted_arc_question():
    from danlu.data.evalsets import example_texts, list_eval_splits, read_eval_split

    assert ("ai2_arc", "ARC-Challenge", "validation") in list_eval_splits()
    table = read_eval_split("ai2_arc", "ARC-Challenge", "validation")
    assert table.num_rows == 299 and "question" in table.column_names
    question = table.column("question")[0].as_py()
    assert question in next(example_texts(table))
    block = Decontaminator(eval_sets=["ai2_arc"])
    keep, _ = block.filter(_doc(f"Study guide, unit 4. {question} Discuss with a partner."))
    assert not keep
    ok, _ = block.filter(_doc("Romeo, Romeo, wherefore art thou Romeo? Deny thy father and refuse thy name."))
    assert ok
    with pytest.raises(ConfigError, match="unknown eval sets"):
        _ = Decontaminator(eval_sets=["no_such_set"]).index
