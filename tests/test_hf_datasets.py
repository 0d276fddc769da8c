"""Hugging Face datasets as a streamed source: spec parsing, and the real streaming path on a local file."""

from __future__ import annotations

import json

import pytest

from danlu.data.hf_datasets import parse_spec, read_hf_dataset
from danlu.data.readers import ReadReport
from danlu.errors import DataError

pytest.importorskip("datasets")


def test_spec_parsing():
    assert parse_spec("hf:roneneldan/TinyStories") == {
        "name": "roneneldan/TinyStories",
        "config": None,
        "split": "train",
    }
    assert parse_spec("hf:HuggingFaceFW/fineweb-edu:sample-10BT@train[:1%]") == {
        "name": "HuggingFaceFW/fineweb-edu",
        "config": "sample-10BT",
        "split": "train[:1%]",
    }
    with pytest.raises(DataError, match="hf:OWNER/NAME"):
        parse_spec("hf:a/b/c")


def test_streams_documents_and_counts_records_without_text(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [
        {"text": "first document", "lang": "en"},
        {"body": "no text field"},
        {"text": "second", "lang": "fr"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = ReadReport()
    docs = list(read_hf_dataset("json", data_files=str(path), report=report))
    assert [d["text"] for d in docs] == ["first document", "second"]
    assert docs[1]["meta"] == {"lang": "fr"} and docs[0]["source"] == "hf:json"
    assert report.problems == {"missing_text": 1}
    with pytest.raises(DataError, match="no string field"):
        list(read_hf_dataset("json", data_files=str(path)))  # strict without a report
