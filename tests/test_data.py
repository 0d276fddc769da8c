"""Readers, cleaning, the data stage's split and manifest, and the registry sources."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.data.clean import ExactDedup, normalize
from danlu.data.config import DataConfig
from danlu.data.documents import read_documents, run_data, split_documents
from danlu.data.readers import read_path
from danlu.data.sources import CHAT_LABELS, chat_transcript
from danlu.errors import DataError

PROSE = "The quick brown fox jumps over the lazy dog, and then it runs far away into the woods."


def _file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _write_corpus(root: Path, n: int = 30) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"doc{i:02d}.txt").write_text(f"Document {i}. {PROSE}\n", encoding="utf-8")
    return root


# --- cleaning ---------------------------------------------------------------------------------------


def test_normalize_examples():
    assert normalize("Cafe\u0301\r\nline two  \r\n\n\n\nend\x00\u200b") == "Café\nline two\n\nend"
    assert normalize("a\u00a0b\tc") == "a b\tc"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_normalize_is_idempotent_and_nfc(text):
    once = normalize(text)
    assert normalize(once) == once
    assert unicodedata.is_normalized("NFC", once)
    assert "\r" not in once and "\n\n\n" not in once


def test_exact_dedup_folds_case_and_whitespace():
    d = ExactDedup()
    assert d.keep("Hello   World") and not d.keep("hello world\n") and d.keep("hello, world")


# --- readers ----------------------------------------------------------------------------------------


def test_readers_txt_jsonl_parquet_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("plain text file")
    (tmp_path / "b.jsonl").write_text('{"text": "one", "lang": "en"}\n\n{"id": "x", "text": "two"}\n')
    pq.write_table(pa.table({"text": ["three", None, "four"]}), tmp_path / "c.parquet")
    (tmp_path / "ignored.csv").write_text("not read")
    docs = list(read_path(tmp_path))
    assert [d["text"] for d in docs] == ["plain text file", "one", "two", "three", "four"]
    assert docs[1]["meta"] == {"file": str(tmp_path / "b.jsonl"), "lang": "en"} and docs[2]["id"] == "x"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.jsonl", '{"text": "ok"}\n{"text": \n', "bad.jsonl:2: not valid JSON"),
        ("bad.jsonl", '{"body": "no text"}\n', 'string "text" field'),
        ("bad.txt", b"\xff\xfe\x00binary", "not UTF-8"),
        ("bad.parquet", b"PAR1 this is not parquet", "not a readable parquet file"),
        ("bad.csv", "a,b", "unsupported file type"),
    ],
)
def test_unreadable_inputs_raise_data_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message):
        list(read_path(path))


def test_permission_denied_is_a_data_error(tmp_path, monkeypatch):
    path = tmp_path / "locked.txt"
    path.write_text("secret")

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", deny)  # tests may run as root, where chmod 000 still reads
    with pytest.raises(DataError, match="not readable"):
        list(read_path(path))


# --- the data stage ---------------------------------------------------------------------------------


def test_run_data_writes_splits_and_manifest(tmp_path):
    corpus = _write_corpus(tmp_path / "corpus")
    (corpus / "dup.txt").write_text(f"document 0.   {PROSE}")  # duplicate of doc00 up to case/space
    (corpus / "short.txt").write_text("tiny")
    out = tmp_path / "docs"
    manifest = run_data(DataConfig(sources=[str(corpus)], val_fraction=0.1, min_chars=20), out)
    s = manifest["sources"][str(corpus)]
    assert (s["documents_in"], s["duplicates"], s["too_short"], s["documents_out"]) == (32, 1, 1, 30)
    assert manifest["splits"]["val"]["documents"] == 3 and manifest["splits"]["train"]["documents"] == 27
    train = list(read_documents(out, "train"))
    val = list(read_documents(out, "val"))
    assert {d["id"] for d in train}.isdisjoint(d["id"] for d in val)
    assert len(train) + len(val) == 30
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs left


def test_split_is_deterministic_stratified_and_stable():
    docs = [{"id": f"a{i}", "source": "a", "text": ""} for i in range(100)]
    docs += [{"id": f"b{i}", "source": "b", "text": ""} for i in range(3)]
    s1 = split_documents(docs, 0.05, seed=1)
    assert s1 == split_documents(docs, 0.05, seed=1)
    assert [d["source"] for d in s1["val"]].count("a") == 5
    assert [d["source"] for d in s1["val"]].count("b") == 1  # every source is represented
    # adding documents never moves an existing one from val to train or back
    more = split_documents(
        docs + [{"id": f"a{i}", "source": "a", "text": ""} for i in range(100, 120)], 0.05, 1
    )
    moved = {d["id"] for d in s1["val"]} - {d["id"] for d in more["val"]}
    assert all(d["id"] in {m["id"] for m in more["train"]} for d in s1["val"] if d["id"] in moved)
    assert split_documents(docs, 0.05, seed=2) != s1


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: root / "missing", "neither a registry name"),
        (lambda root: (root / "empty").mkdir() or root / "empty", "holds no .txt/.jsonl/.parquet"),
        (lambda root: _file(root / "e.txt", ""), "usable document"),
        (lambda root: _file(root / "s.jsonl", '{"text": "too short"}\n'), "usable"),
    ],
)
def test_missing_or_empty_corpus_fails_cleanly(tmp_path, setup, message):
    src = setup(tmp_path)
    out = tmp_path / "docs"
    with pytest.raises(DataError, match=message):
        run_data(DataConfig(sources=[str(src)]), out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".docs")]


def test_failure_in_a_later_source_leaves_previous_output_untouched(tmp_path):
    corpus = _write_corpus(tmp_path / "corpus")
    out = tmp_path / "docs"
    run_data(DataConfig(sources=[str(corpus)]), out)
    before = (out / "train.parquet").read_bytes()
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    with pytest.raises(DataError):
        run_data(DataConfig(sources=[str(corpus), str(tmp_path / "bad.jsonl")]), out)
    assert (out / "train.parquet").read_bytes() == before


def test_read_documents_reports_missing_stage(tmp_path):
    with pytest.raises(DataError, match="run the data stage"):
        list(read_documents(tmp_path, "train"))


def test_chat_transcript_alternates_labels():
    a, b = CHAT_LABELS
    assert chat_transcript(["hi", "hello", "bye"]) == f"{a}: hi\n{b}: hello\n{a}: bye"


# --- the real registry sources ----------------------------------------------------------------------


@pytest.mark.needs_data
def test_shakespeare_source_has_the_42_works(shakespeare_docs):
    assert len(shakespeare_docs) == 42
    ids = {d["id"] for d in shakespeare_docs}
    assert "shakespeare/hamlet" in ids and "shakespeare/sonnets" in ids
    hamlet = next(d["text"] for d in shakespeare_docs if d["id"] == "shakespeare/hamlet")
    assert "To be, or not to be" in hamlet
    assert 4_900_000 < sum(len(d["text"]) for d in shakespeare_docs) < 5_200_000


@pytest.mark.needs_data
def test_chitchat_source_is_transcripts():
    from danlu.data.sources import read_source

    docs = list(read_source("chitchat"))
    assert len(docs) == 7168
    first_lines = [d["text"].split("\n")[0] for d in docs[:50]]
    assert all(line.startswith(f"{CHAT_LABELS[0]}: ") for line in first_lines)
    assert all(d["meta"]["turns"] == d["text"].count("\n") + 1 for d in docs[:200])
