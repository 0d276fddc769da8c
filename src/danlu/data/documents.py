"""The data stage: sources -> normalized, deduplicated documents split into train and val parquet files.

Output directory (written in one atomic rename, so it is either complete or absent):
  train.parquet, val.parquet   columns id, text, source, meta (a JSON string)
  manifest.json                per-source counts, what was dropped and why, split sizes, file hashes
The validation split holds out whole documents, chosen per source by a seeded hash of the document id,
so every source is represented and adding documents does not reshuffle the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from danlu.config import DataConfig
from danlu.data.clean import ExactDedup, normalize
from danlu.data.readers import read_path
from danlu.data.sources import SOURCES, Document, read_source
from danlu.errors import DataError
from danlu.io import atomic_dir, atomic_write_json, sha256_file

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


def read_source_or_path(spec: str) -> Iterator[Document]:
    """A registry name, or else a local path."""
    if spec in SOURCES:
        return read_source(spec)
    if not Path(spec).expanduser().exists():
        raise DataError(
            f"data source '{spec}' is neither a registry name ({', '.join(SOURCES)}) nor an existing path"
        )
    return read_path(spec)


def _split_rank(doc_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{doc_id}".encode()).hexdigest()


def split_documents(docs: list[Document], val_fraction: float, seed: int) -> dict[str, list[Document]]:
    """Hold out round(val_fraction * n) whole documents of each source (at least one if it has two)."""
    by_source: dict[str, list[Document]] = {}
    for d in docs:
        by_source.setdefault(d["source"], []).append(d)
    val_ids: set[str] = set()
    for group in by_source.values():
        n_val = min(max(round(val_fraction * len(group)), 1), len(group) - 1)
        ranked = sorted(group, key=lambda d: _split_rank(d["id"], seed))
        val_ids.update(d["id"] for d in ranked[:n_val])
    return {
        "train": [d for d in docs if d["id"] not in val_ids],
        "val": [d for d in docs if d["id"] in val_ids],
    }


def _write_parquet(docs: list[Document], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": [d["id"] for d in docs],
            "text": [d["text"] for d in docs],
            "source": [d["source"] for d in docs],
            "meta": [json.dumps(d.get("meta", {}), sort_keys=True) for d in docs],
        }
    )
    pq.write_table(table, path, compression="zstd")


def collect_documents(cfg: DataConfig) -> tuple[list[Document], dict[str, Any]]:
    """Read, normalize and dedup every source; return the kept documents and per-source statistics."""
    dedup = ExactDedup()
    kept: list[Document] = []
    stats: dict[str, Any] = {}
    seen_ids: set[str] = set()
    for spec in cfg.sources:
        s = {"documents_in": 0, "too_short": 0, "duplicates": 0, "documents_out": 0, "chars_out": 0}
        for doc in tqdm(
            read_source_or_path(spec), desc=f"data {spec}", unit="doc", mininterval=1.0, leave=False
        ):
            s["documents_in"] += 1
            text = normalize(doc["text"])
            if len(text) < cfg.min_chars:
                s["too_short"] += 1
                continue
            if not dedup.keep(text):
                s["duplicates"] += 1
                continue
            doc_id = doc["id"]
            if doc_id in seen_ids:  # two local files may reuse ids; keep ids unique for the split
                doc_id = f"{doc_id}#{s['documents_in']}"
            seen_ids.add(doc_id)
            # the source is the recipe's entry, so the split stratifies by it, not by file
            kept.append({**doc, "id": doc_id, "text": text, "source": spec})
            s["documents_out"] += 1
            s["chars_out"] += len(text)
        if s["documents_in"] == 0:
            raise DataError(f"data source '{spec}' holds no documents")
        log.info("source %s: %s", spec, s)
        stats[spec] = s
    return kept, stats


def run_data(cfg: DataConfig, out_dir: str | Path) -> dict[str, Any]:
    """Build the documents directory; return its manifest."""
    docs, stats = collect_documents(cfg)
    if len(docs) < 2:
        raise DataError(
            f"the corpus has {len(docs)} usable document(s) after cleaning (min_chars={cfg.min_chars}); "
            "at least 2 are needed to hold out a validation split: add data or lower data.min_chars"
        )
    splits = split_documents(docs, cfg.val_fraction, cfg.seed)
    manifest: dict[str, Any] = {"config": {**cfg.__dict__}, "sources": stats, "splits": {}}
    with atomic_dir(out_dir) as tmp:
        for name in SPLITS:
            path = tmp / f"{name}.parquet"
            _write_parquet(splits[name], path)
            manifest["splits"][name] = {
                "file": path.name,
                "documents": len(splits[name]),
                "chars": sum(len(d["text"]) for d in splits[name]),
                "sha256": sha256_file(path),
            }
        atomic_write_json(tmp / "manifest.json", manifest)
    log.info("documents: %s", {k: v["documents"] for k, v in manifest["splits"].items()})
    return manifest


def read_documents(docs_dir: str | Path, split: str) -> Iterator[Document]:
    """Stream the documents of one split of a documents directory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; expected one of {', '.join(SPLITS)}")
    path = Path(docs_dir) / f"{split}.parquet"
    if not path.exists():
        raise DataError(f"{path} not found; run the data stage first (danlu data)")
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(columns=["id", "text", "source", "meta"]):
            for row in batch.to_pylist():
                yield {**row, "meta": json.loads(row["meta"] or "{}")}
    except pa.ArrowException as e:
        raise DataError(f"{path} is corrupt ({e}); re-run the data stage") from None
