"""The pipeline framework: block registry, sharded executors, resume after a kill, malformed input."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.data.clean import ExactDedup, normalize
from danlu.data.config import DataConfig
from danlu.data.dedup import MinHashDedup, SimHashDedup
from danlu.data.documents import read_documents, read_source_or_path, run_data, split_documents
from danlu.data.pipeline import (
    BLOCKS,
    ExactDedupBlock,
    MinHashDedupBlock,
    SimHashDedupBlock,
    build_pipeline,
    segments,
)
from danlu.errors import ConfigError
from danlu.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]

WORDS = [
    "the",
    "king",
    "and",
    "queen",
    "of",
    "a",
    "river",
    "town",
    "went",
    "to",
    "see",
    "that",
    "lord",
    "with",
    "his",
    "sword",
    "at",
    "night",
]


def _prose(i: int, n_words: int = 80) -> str:
    # deterministic, varied text: each document a different walk through WORDS
    return " ".join(WORDS[(i * 7 + j * (i % 5 + 1)) % len(WORDS)] for j in range(n_words)) + "."


def _corpus(root: Path, n: int = 60) -> Path:
    """jsonl files with duplicates (up to case/space), short documents and reused ids."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        text = _prose(i) if i % 9 else "tiny"
        if i % 11 == 0 and i:
            text = "  " + _prose(i - 1).upper() + "  "  # a duplicate of the previous document
        rows.append({"id": f"doc{i % 17}", "text": text, "k": i})  # ids repeat across the corpus
    for part in range(3):
        (root / f"part{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[part::3]))
    return root


def _reference_run_data(cfg: DataConfig) -> dict[str, list[dict]]:
    """The data stage before the pipeline framework: normalize, min_chars, exact dedup, unique ids."""
    dedup, kept, seen = ExactDedup(), [], set()
    for spec in cfg.sources:
        for n, doc in enumerate(read_source_or_path(spec), 1):
            text = normalize(doc["text"])
            if len(text) < cfg.min_chars or not dedup.keep(text):
                continue
            doc_id = doc["id"] if doc["id"] not in seen else f"{doc['id']}#{n}"
            seen.add(doc_id)
            kept.append({**doc, "id": doc_id, "text": text, "source": spec})
    return split_documents(kept, cfg.val_fraction, cfg.seed)


def test_default_pipeline_matches_the_reference_stage_on_any_sharding(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    base = DataConfig(sources=[str(corpus)], val_fraction=0.1)
    ref = _reference_run_data(base)
    outputs = {}
    for name, extra in [
        ("one", {}),
        ("sharded", {"shard_docs": 4}),
        ("pool", {"shard_docs": 5, "workers": 2}),
    ]:
        cfg = DataConfig(**{**base.__dict__, **extra})
        m = run_data(cfg, tmp_path / name)
        for split in ("train", "val"):
            got = list(read_documents(tmp_path / name, split))
            assert got == ref[split]
        outputs[name] = [(tmp_path / name / f"{s}.parquet").read_bytes() for s in ("train", "val")]
        s = m["sources"][str(corpus)]
        assert s["documents_in"] == 60 and s["too_short"] == 7 and s["duplicates"] == 4
        assert s["documents_out"] == len(ref["train"]) + len(ref["val"])
        assert not (tmp_path / f"{name}.work").exists()  # the work directory goes once the output is done
    assert outputs["one"] == outputs["sharded"] == outputs["pool"]


def _write_reference_parquet(docs: list[dict], path: Path) -> None:
    # the data stage's writer before the pipeline framework: one pyarrow.parquet.write_table call
    table = pa.table(
        {
            "id": [d["id"] for d in docs],
            "text": [d["text"] for d in docs],
            "source": [d["source"] for d in docs],
            "meta": [json.dumps(d.get("meta", {}), sort_keys=True) for d in docs],
        }
    )
    pq.write_table(table, path, compression="zstd")


@pytest.mark.needs_data
def test_default_recipe_output_is_byte_identical_to_the_reference_stage(tmp_path):
    cfg = load_recipe(ROOT / "recipes" / "tiny-cpu.yaml").data
    assert cfg.pipeline is None
    ref = _reference_run_data(cfg)
    run_data(cfg, tmp_path / "out")
    for split in ("train", "val"):
        _write_reference_parquet(ref[split], tmp_path / f"ref-{split}.parquet")
        got = (tmp_path / "out" / f"{split}.parquet").read_bytes()
        assert got == (tmp_path / f"ref-{split}.parquet").read_bytes()


def test_registry_rejects_unknown_blocks_and_options_naming_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown block 'gopher'.*gopher_quality.*minhash_dedup"):
        build_pipeline([{"block": "gopher"}])
    with pytest.raises(ConfigError, match="no option thresh; valid options: threshold, num_perm"):
        build_pipeline([{"block": "minhash_dedup", "thresh": 0.8}])
    with pytest.raises(ConfigError, match="needs a 'block' name"):
        build_pipeline([{"threshold": 0.8}])
    with pytest.raises(ConfigError, match="min_words"):
        build_pipeline([{"block": "gopher_quality", "min_words": 10, "max_words": 5}])
    blocks = build_pipeline(
        [{"block": "normalize"}, {"block": "min_chars", "min_chars": 5}, {"block": "min_chars"}]
    )
    assert [b.name for b in blocks] == ["normalize", "min_chars", "min_chars#2"]


def test_recipe_pipeline_is_read_from_yaml_and_split_at_global_blocks(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data:\n  pipeline:\n    - {block: normalize}\n    - {block: gopher_quality, min_words: 10}\n"
        "    - {block: minhash_dedup, threshold: 0.7}\n    - {block: pii}\n"
    )
    cfg = load_recipe(recipe, ["--data.executor=local", "--data.workers=2"])
    assert cfg.data.pipeline[2] == {"block": "minhash_dedup", "threshold": 0.7}
    segs = segments(build_pipeline(cfg.data.pipeline))
    assert [([b.name for b in docs], g.name if g else None) for docs, g in segs] == [
        (["normalize", "gopher_quality"], "minhash_dedup"),
        (["pii"], None),
    ]
    with pytest.raises(ConfigError, match=r"data\.executor"):
        load_recipe(recipe, ["--data.executor=spark"])


@pytest.mark.parametrize(
    "block, reference",
    [
        (ExactDedupBlock(), None),
        (MinHashDedupBlock(threshold=0.7), MinHashDedup(threshold=0.7)),
        (SimHashDedupBlock(k=3), SimHashDedup(k=3)),
    ],
)
def test_global_blocks_over_shards_keep_what_the_whole_corpus_reference_keeps(block, reference):
    texts = [_prose(i, 60) for i in range(40)]
    texts += [t.replace("king", "knight", 1) for t in texts[:10]]  # near-duplicates of early documents
    texts += [t.upper() for t in texts[5:8]]  # exact duplicates up to case
    shards = [texts[i : i + 7] for i in range(0, len(texts), 7)]
    masks = block.decide([block.keys(s) for s in shards])
    kept = [t for s, m in zip(shards, masks, strict=True) for t, k in zip(s, m, strict=True) if k]
    if reference is None:
        dedup = ExactDedup()
        expected = [t for t in texts if dedup.keep(t)]
    else:
        expected = [d["text"] for d in reference.run({"id": str(i), "text": t} for i, t in enumerate(texts))]
    assert kept == expected and len(kept) < len(texts)


def _malformed_corpus(root: Path) -> Path:
    import zstandard

    root.mkdir()
    good = [{"text": _prose(i)} for i in range(3)]
    lines = [json.dumps(r) for r in good]
    (root / "a.jsonl").write_text("\n".join([lines[0], "{not json", '{"body": "no text"}', "[1, 2]"]) + "\n")
    (root / "b.jsonl.gz").write_bytes(gzip.compress((lines[1] + "\n").encode()))
    (root / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress((lines[2] + "\n").encode()))
    # one latin-1 byte in over 100 characters: kept (with U+FFFD); a binary file would be dropped
    (root / "d.txt").write_bytes(
        b"caf\xe9 " + b"latin-1 text that is long enough to keep as a document. " * 2
    )
    (root / "e.txt").write_text("")
    (root / "f.jsonl").write_text("")
    (root / "g.jsonl.gz").write_bytes(gzip.compress(b'{"text": "truncated stream"}\n' * 50)[:30])
    pq.write_table(pa.table({"text": [_prose(7), None]}), root / "h.parquet")
    (root / "i.parquet").write_bytes(b"PAR1 not parquet")
    return root


def test_malformed_input_is_counted_and_reported_never_fatal(tmp_path):
    corpus = _malformed_corpus(tmp_path / "in")
    m = run_data(DataConfig(sources=[str(corpus)], val_fraction=0.2), tmp_path / "out")
    s = m["sources"][str(corpus)]
    assert s["malformed_input"]["problems"] == {
        "bad_encoding": 1,
        "bad_json": 1,
        "corrupt_file": 2,
        "empty_file": 2,
        "missing_text": 3,
    }
    assert any("a.jsonl:2" in e for e in s["malformed_input"]["examples"]["bad_json"])
    texts = [d["text"] for split in ("train", "val") for d in read_documents(tmp_path / "out", split)]
    assert len(texts) == s["documents_out"] == 5  # 3 jsonl (plain, gz, zst) + the latin-1 txt + parquet
    assert any(t.startswith("caf\ufffd latin-1") for t in texts)


def test_manifest_counts_every_block_with_examples(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    pipeline = [
        {"block": "clean"},
        {"block": "min_chars", "min_chars": 20},
        {"block": "exact_dedup"},
        {"block": "gopher_quality", "min_words": 50},
        {"block": "pii"},
    ]
    m = run_data(DataConfig(sources=[str(corpus)], pipeline=pipeline, shard_docs=7), tmp_path / "out")
    blocks = m["blocks"]
    assert list(blocks) == ["clean", "min_chars", "exact_dedup", "gopher_quality", "pii"]
    assert blocks["min_chars"]["removed_by_reason"] == {"too_short": 7}
    assert blocks["exact_dedup"]["removed_by_reason"] == {"duplicates": 4}
    for a, b in zip(list(blocks.values()), list(blocks.values())[1:], strict=False):
        assert a["documents_out"] == b["documents_in"]  # no document appears or vanishes between blocks
    assert [e["text"] for e in blocks["min_chars"]["examples"]["too_short"]] == ["tiny"] * 5
    assert m["sources"][str(corpus)]["documents_out"] == blocks["pii"]["documents_out"]


_KILL_SCRIPT = """
import json, sys, time
from danlu.data.config import DataConfig
from danlu.data import pipeline
from danlu.data.documents import run_data

class Slow:
    name = "slow"
    def filter(self, doc):
        time.sleep(float(sys.argv[5]))
        return True, None

pipeline.BLOCKS["slow"] = Slow
cfg = DataConfig(sources=[sys.argv[1]], shard_docs=int(sys.argv[3]), workers=int(sys.argv[4]),
                 pipeline=json.loads(sys.argv[6]))
run_data(cfg, sys.argv[2])
"""


class _Slow:
    name = "slow"

    def filter(self, doc):
        return True, None


def kill_data_run_midway(
    tmp_path: Path, corpus: Path, specs: list[dict], shard_docs: int, stage: int, done: int,
    workers: int = 1, sleep: float = 0.05,
) -> int:  # fmt: skip
    """Runs the data stage of `corpus` into tmp_path/out in a subprocess, a `slow` block (sleeping
    `sleep` s per document) among `specs`, and SIGKILLs it once `done` shards of pass `stage` are
    finished; returns how many were."""
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = [str(corpus), str(tmp_path / "out"), str(shard_docs), str(workers), str(sleep), json.dumps(specs)]
    proc = subprocess.Popen([sys.executable, str(script), *args], env=env, start_new_session=True)
    markers = tmp_path / "out.work" / f"stage-{stage}"
    deadline = time.monotonic() + 60
    while len(list(markers.glob("*.done.json"))) < done and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, pool workers included
    proc.wait()
    assert not (tmp_path / "out").exists()
    return len(list(markers.glob("*.done.json")))


def resume_and_compare_with_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corpus: Path, specs: list[dict], shard_docs: int
) -> tuple[dict, dict]:
    """Finishes the killed run in tmp_path/out, runs the same pipeline afresh into tmp_path/clean, and
    asserts identical files and manifests; returns both manifests."""
    monkeypatch.setitem(BLOCKS, "slow", _Slow)
    cfg = DataConfig(sources=[str(corpus)], shard_docs=shard_docs, pipeline=specs)
    resumed = run_data(cfg, tmp_path / "out")
    clean = run_data(cfg, tmp_path / "clean")
    for split in ("train", "val"):
        assert (tmp_path / "out" / f"{split}.parquet").read_bytes() == (
            tmp_path / "clean" / f"{split}.parquet"
        ).read_bytes()
    assert resumed["blocks"] == clean["blocks"]
    return resumed, clean


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_run_resumes_with_no_document_lost_or_duplicated(tmp_path, monkeypatch, workers):
    corpus = _corpus(tmp_path / "corpus", n=60)
    specs = [
        {"block": "clean"},
        {"block": "slow"},
        {"block": "exact_dedup"},
        {"block": "min_chars", "min_chars": 20},
    ]
    done_before = kill_data_run_midway(
        tmp_path, corpus, specs, shard_docs=4, stage=0, done=3, workers=workers
    )
    assert 3 <= done_before < 15  # killed midway: 15 shards in all
    _, clean = resume_and_compare_with_clean(tmp_path, monkeypatch, corpus, specs, shard_docs=4)
    out = tmp_path / "out"
    ids = [d["id"] for s in ("train", "val") for d in read_documents(out, s)]
    assert len(ids) == len(set(ids)) == clean["sources"][str(corpus)]["documents_out"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(min_size=1, max_size=30).map(lambda t: ("ok", json.dumps({"text": t}))),
            st.sampled_from([("bad_json", "{oops"), ("bad_json", '{"text": "x"'), ("missing_text", "[1]")]),
            st.sampled_from([("missing_text", '{"text": 3}'), ("missing_text", '{"body": "x"}')]),
        ),
        max_size=20,
    )
)
def test_lenient_jsonl_reading_accounts_for_every_line(lines):
    import tempfile

    from danlu.data.readers import ReadReport, read_path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.jsonl"
        path.write_text("".join(line + "\n" for _, line in lines))
        report = ReadReport()
        docs = list(read_path(path, report))
    kinds = [k for k, _ in lines]
    assert [d["text"] for d in docs] == [json.loads(line)["text"] for k, line in lines if k == "ok"]
    expected = {k: kinds.count(k) for k in ("bad_json", "missing_text") if kinds.count(k)}
    if not lines:
        expected = {"empty_file": 1}
    assert dict(report.problems) == expected
    assert report.records == len(docs)
