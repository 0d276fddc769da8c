"""`danlu data report`: the manifest's counts and examples, and histograms, from a documents directory."""

from __future__ import annotations

import json

import pytest

from danlu.cli import main
from danlu.data.config import DataConfig
from danlu.data.documents import run_data
from danlu.data.report import find_docs_dir, write_report
from danlu.errors import DataError

TEXT = (
    "The river ran past the town and the mill, and the people of the town walked along it in the "
    "evening to watch the boats come home with the light of the sun low over the water. "
)


def _docs_dir(tmp_path):
    rows = [
        {"text": f"Letter {i}. " + TEXT * (i % 3 + 1) + f" Write to me at person{i}@example.com today."}
        for i in range(8)
    ]
    rows += [{"text": "too short"}, {"text": rows[0]["text"]}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    pipeline = [
        {"block": "clean"},
        {"block": "min_chars", "min_chars": 20},
        {"block": "exact_dedup"},
        {"block": "gopher_quality", "min_words": 10},
        {"block": "pii"},
    ]
    run_data(DataConfig(sources=[str(src)], pipeline=pipeline, val_fraction=0.2), tmp_path / "run" / "data")
    return tmp_path / "run"


def test_report_has_counts_examples_pii_and_histograms(tmp_path, capsys):
    run = _docs_dir(tmp_path)
    assert main(["data", "report", str(run)]) == 0
    report = run / "data" / "report" / "report.md"
    assert str(report) in capsys.readouterr().out
    md = report.read_text()
    assert "| min_chars | 10 | 9 | {'too_short': 1} |" in md
    assert "| exact_dedup | 9 | 8 | {'duplicates': 1} |" in md
    assert "### min_chars: too_short" in md and "too short" in md
    assert "| EMAIL | 8 |" in md  # one address per kept document, replaced by a placeholder
    assert "bad_json" in md and "in.jsonl:11" in md
    for name in ("length.chars", "gopher_quality.mean_word_length"):
        png = report.parent / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"![{name}]({name}.png)" in md


def test_report_needs_a_documents_or_run_directory(tmp_path):
    with pytest.raises(DataError, match=r"no manifest\.json"):
        find_docs_dir(tmp_path)
    with pytest.raises(DataError):
        write_report(tmp_path / "missing")
    assert main(["data", "report"]) == 2
