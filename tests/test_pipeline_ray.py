"""The Ray executor: the same pipeline on a local Ray instance gives byte-identical output.

Ray starts in about 8 s on 2 cores (under the 20 s that would make this a slow test).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from danlu.data.config import DataConfig
from danlu.data.documents import run_data

WORDS = ["the", "king", "and", "queen", "of", "a", "river", "town", "went", "to", "see", "that", "lord"]


def _corpus(root: Path, n: int) -> Path:
    """jsonl with varied documents, exact duplicates up to case, and short ones."""
    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        text = " ".join(WORDS[(i * 7 + j * (i % 5 + 1)) % len(WORDS)] for j in range(80)) + "."
        rows.append({"text": "tiny" if i % 9 == 0 else text.upper() if i % 11 == 0 else text})
    (root / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_ray_executor_gives_byte_identical_output(tmp_path):
    ray = pytest.importorskip("ray")
    corpus = _corpus(tmp_path / "corpus", n=80)
    specs = [
        {"block": "normalize"},
        {"block": "min_chars", "min_chars": 20},
        {"block": "exact_dedup"},
        {"block": "toxicity"},
        {"block": "minhash_dedup", "threshold": 0.8},
        {"block": "substring_dedup", "min_length": 100},
        {"block": "pii"},
    ]
    outs = {}
    try:
        for executor in ("local", "ray"):
            cfg = DataConfig(
                sources=[str(corpus)], pipeline=specs, shard_docs=9, executor=executor, workers=2
            )
            outs[executor] = run_data(cfg, tmp_path / executor)
    finally:
        ray.shutdown()  # later tests fork worker pools: no Ray threads in the parent then
    for split in ("train", "val"):
        a = (tmp_path / "local" / f"{split}.parquet").read_bytes()
        assert a == (tmp_path / "ray" / f"{split}.parquet").read_bytes()
    assert outs["local"]["blocks"] == outs["ray"]["blocks"]
    assert outs["local"]["blocks"]["minhash_dedup"]["documents_out"] >= 5
    assert outs["local"]["blocks"]["substring_dedup"]["counts"]["documents_changed"] >= 1
