"""The substring_dedup pipeline block: suffix-array exact-substring removal across every shard."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from danlu.cli import main
from danlu.data.block import Stats
from danlu.data.config import DataConfig
from danlu.data.dedup import remove_repeated_substrings
from danlu.data.documents import read_documents, run_data
from danlu.data.pipeline import SubstringDedupBlock, build_block
from danlu.errors import ConfigError, DataError
from test_pipeline import kill_data_run_midway, resume_and_compare_with_clean

# 300 characters, planted in five documents; the characters around it differ per document, so the
# repeated span is exactly the paragraph
PARA = (
    "The harbour master kept a ledger of every ship that came in, its cargo, its crew and the weather, "
    "and on winter evenings he read the old pages aloud to anyone who would listen at the inn by the "
    "quay, where the fire was warm and the stories grew longer with every telling of the tale, until the night."
)
assert len(PARA) == 300
PLANTED = [1, 3, 5, 7, 9]


def _unique(rng: np.random.Generator, n_words: int) -> str:
    """Random lowercase words: no 20-byte repeat anywhere, so only what a test plants repeats."""
    return " ".join("".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 6)) for _ in range(n_words))


def _planted_docs(n: int = 12, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        before, after = _unique(rng, 30), _unique(rng, 30)
        planted = f"{chr(65 + i)}{PARA}{chr(48 + i)}"  # letters that differ per document around it
        text = f"{before} {planted} {after}" if i in PLANTED else f"{before} {after}"
        docs.append({"id": f"d{i}", "text": text, "k": i})  # k: kept in meta by the jsonl reader
    return docs


def _write(root: Path, docs: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "c.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return root / "c.jsonl"


def _output(out: Path) -> dict[str, dict]:
    return {d["id"]: d for split in ("train", "val") for d in read_documents(out, split)}


def _run(docs: list[dict], tmp_path: Path, name: str, spec: dict | None = None, **cfg) -> dict:
    src = _write(tmp_path / f"{name}-in", docs)
    pipeline = [{"block": "substring_dedup", **(spec or {})}]
    return run_data(DataConfig(sources=[str(src)], pipeline=pipeline, **cfg), tmp_path / name)


def test_planted_paragraph_is_cut_from_every_repeat_and_the_rest_is_intact(tmp_path):
    docs = _planted_docs()
    m = _run(docs, tmp_path, "out", shard_docs=4)  # the repeats span three shards
    got = _output(tmp_path / "out")
    (source,) = m["sources"]
    assert len(got) == 12
    for i, d in enumerate(docs):
        out = got[f"d{i}"]
        assert out["source"] == source
        meta = {"file": source, "k": i}
        if i in PLANTED[1:]:
            assert out["text"] == d["text"].replace(PARA, "")
            assert out["meta"] == {**meta, "substring_removed_chars": 300}
        else:  # the first occurrence and every unplanted document are untouched
            assert out["text"] == d["text"] and out["meta"] == meta
    block = m["blocks"]["substring_dedup"]
    assert block["counts"] == {
        "bytes_removed": 1200,
        "chars_removed": 1200,
        "documents_changed": 4,
        "spans_removed": 4,
    }
    assert block["documents_in"] == block["documents_out"] == 12 and block["removed_by_reason"] == {}


def test_the_block_cuts_what_the_library_cuts():
    texts = [d["text"] for d in _planted_docs(seed=3)]
    texts += ["short shared tail: " + PARA[:120], "x" + PARA[60:200] + "y"]  # partial, overlapping repeats
    expected, _ = remove_repeated_substrings(texts, min_len=50)
    block = build_block({"block": "substring_dedup"})
    shards = [texts[i : i + 5] for i in range(0, len(texts), 5)]
    decisions = block.decide([block.keys(s) for s in shards])
    got = []
    for shard, decision in zip(shards, decisions, strict=True):
        docs = [{"id": str(i), "text": t, "source": "s", "meta": {}} for i, t in enumerate(shard)]
        got += [d["text"] for d in block.apply(docs, decision, Stats(), Counter())]
    assert got == [t for t in expected if t.strip()]


def test_repeats_shorter_than_min_length_are_untouched(tmp_path):
    rng = np.random.default_rng(1)
    phrase = "a forty character phrase, repeated here."  # 40 bytes
    docs = [{"id": f"d{i}", "text": f"{_unique(rng, 20)} {phrase} {_unique(rng, 20)}"} for i in range(6)]
    _run(docs, tmp_path, "long", {"min_length": 50})
    assert [d["text"] for d in _output(tmp_path / "long").values()] == [d["text"] for d in docs]
    m = _run(docs, tmp_path, "short", {"min_length": 30})  # the same corpus with a lower bar: cut
    assert m["blocks"]["substring_dedup"]["counts"]["documents_changed"] == 5
    got = _output(tmp_path / "short")
    assert phrase in got["d0"]["text"] and all(phrase not in got[f"d{i}"]["text"] for i in range(1, 6))


def test_documents_left_too_short_are_dropped_with_a_counted_reason(tmp_path):
    docs = _planted_docs()
    docs.append({"id": "only_para", "text": PARA})  # emptied
    docs.append({"id": "nearly", "text": PARA + " and tail"})  # 9 characters left, below min_chars
    docs.append({"id": "short_kept", "text": "tiny"})  # short but untouched: not this block's business
    m = _run(docs, tmp_path, "out", {"min_chars": 20}, shard_docs=5)
    got = _output(tmp_path / "out")
    assert "only_para" not in got and "nearly" not in got and got["short_kept"]["text"] == "tiny"
    block = m["blocks"]["substring_dedup"]
    assert block["removed_by_reason"] == {"too_short_after_dedup": 2}
    assert [e["id"] for e in block["examples"]["too_short_after_dedup"]] == ["only_para", "nearly"]
    assert block["examples"]["too_short_after_dedup"][0]["text"] == PARA  # shown as it was before the cut
    source = next(iter(m["sources"].values()))
    assert source["too_short_after_dedup"] == 2 and source["documents_out"] == 13


def test_two_workers_give_the_same_output_as_one(tmp_path):
    src = _write(tmp_path / "in", _planted_docs(n=20, seed=5))  # one input: its path is in the output
    outs = {}
    for workers in (1, 2):
        cfg = DataConfig(
            sources=[str(src)], pipeline=[{"block": "substring_dedup"}], shard_docs=3, workers=workers
        )
        outs[workers] = run_data(cfg, tmp_path / f"w{workers}")
    for split in ("train", "val"):
        a = (tmp_path / "w1" / f"{split}.parquet").read_bytes()
        assert a == (tmp_path / "w2" / f"{split}.parquet").read_bytes()
    assert outs[1]["blocks"] == outs[2]["blocks"]
    assert outs[1]["blocks"]["substring_dedup"]["counts"]["documents_changed"] == 4


def test_a_corpus_over_max_mb_fails_clearly_before_building_the_suffix_array(tmp_path):
    docs = _planted_docs()
    with pytest.raises(DataError, match=r"MiB of text, over max_mb=0\.001.*Raise max_mb"):
        _run(docs, tmp_path, "out", {"max_mb": 0.001})
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()
    block = SubstringDedupBlock()
    block.BYTES_PER_BYTE = 2**50  # as if the machine were far too small for the suffix array
    with pytest.raises(DataError, match="more than this machine's"):
        block.decide([block.keys(["some text", "more text"])])


def test_options_are_validated():
    with pytest.raises(ConfigError, match="min_length must be >= 1 byte, got 0"):
        build_block({"block": "substring_dedup", "min_length": 0})
    with pytest.raises(ConfigError, match="backend must be one of auto, divsufsort, numpy"):
        build_block({"block": "substring_dedup", "backend": "sais"})
    with pytest.raises(ConfigError, match="valid options: min_length, min_chars, max_mb, backend"):
        build_block({"block": "substring_dedup", "min_len": 50})


def test_report_shows_what_was_cut(tmp_path):
    _run(_planted_docs(), tmp_path, "out")
    assert main(["data", "report", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "| substring_dedup | 12 | 12 |  | {'bytes_removed': 1200, 'chars_removed': 1200," in md


def test_killed_run_resumes_from_the_saved_decision(tmp_path, monkeypatch):
    src = _write(tmp_path / "in", _planted_docs(n=16, seed=7))
    specs = [{"block": "substring_dedup"}, {"block": "slow"}]
    # killed in the pass that applies the decision
    done_before = kill_data_run_midway(tmp_path, src, specs, shard_docs=2, stage=1, done=2, sleep=0.1)
    assert (tmp_path / "out.work" / "stage-0" / "decision.npz").exists()
    assert 2 <= done_before < 8  # killed midway: 8 shards in all
    _, clean = resume_and_compare_with_clean(tmp_path, monkeypatch, src, specs, shard_docs=2)
    assert clean["blocks"]["substring_dedup"]["counts"]["documents_changed"] == 4
