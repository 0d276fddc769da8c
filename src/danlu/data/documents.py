"""The data stage: sources -> a pipeline of blocks -> documents split into train and val parquet files.

The recipe's `data.pipeline` (default: clean, min_chars, exact_dedup, which is the stage's original
behaviour, byte for byte) runs over input shards on the local or Ray executor (danlu.data.executors);
a killed run resumes from its per-shard markers. Output directory (written in one atomic rename, so it
is either complete or absent):
  train.parquet, val.parquet   columns id, text, source, meta (a JSON string)
  manifest.json                per-source counts (removals by reason, malformed input), per-block
                               counts with examples of removed documents, PII counts, split sizes, hashes
The validation split holds out whole documents, chosen per source by a seeded hash of the document id,
so every source is represented and adding documents does not reshuffle the others. A document that an
augmentation block added beside its source goes with its source: into train, or, if the source is held
out, nowhere (validation holds original text); the manifest's `augmented_added` counts both. Splitting and
writing stream the documents (only ids are held), so memory stays bounded on large inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from danlu.data.block import ModelScorer
from danlu.data.config import DataConfig
from danlu.data.corpora import CORPORA, read_corpus
from danlu.data.edu_head import EmbedderFactory
from danlu.data.executors import ShardTask, make_executor, merge_stats, read_shard, run_shard, write_shard
from danlu.data.hf_datasets import PREFIX as HF_PREFIX
from danlu.data.hf_datasets import read_hf_spec
from danlu.data.lineage import input_lineage, lineage
from danlu.data.paraphrase import ModelGenerator
from danlu.data.pipeline import build_pipeline, default_pipeline, pipeline_fingerprint, segments
from danlu.data.readers import ReadReport, input_files, read_path
from danlu.data.sources import SOURCES, Document, read_source
from danlu.errors import DataError
from danlu.io import atomic_dir, atomic_path, atomic_write_json, sha256_file

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


def read_source_or_path(spec: str, report: ReadReport | None = None) -> Iterator[Document]:
    """A registry name, or else a local path (malformed input counted in `report` when given)."""
    if spec in SOURCES:
        return read_source(spec)
    if spec in CORPORA:
        return read_corpus(spec)
    if spec.startswith(HF_PREFIX):  # a Hugging Face dataset, streamed
        return read_hf_spec(spec, report)
    if not Path(spec).expanduser().exists():
        raise DataError(
            f"data source '{spec}' is neither a registry name ({', '.join([*SOURCES, *CORPORA])}) "
            "nor an existing path"
        )
    return read_path(spec, report)


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


class _SplitWriter:
    """Streams documents into one parquet file, a row group per 24 M characters of text (bounded memory).

    A split smaller than one row group gives the same bytes as pyarrow.parquet.write_table (the default
    recipe's 18 M-character train split is one).
    """

    def __init__(self, path: Path, rows: int = 100_000, chars: int = 24_000_000) -> None:
        self.path, self.rows, self.chars = path, rows, chars
        self.writer: Any = None
        self.buf: list[Document] = []
        self.buf_chars = 0
        self.documents = 0
        self.total_chars = 0

    def add(self, doc: Document) -> None:
        self.buf.append(doc)
        self.buf_chars += len(doc["text"])
        self.documents += 1
        self.total_chars += len(doc["text"])
        if len(self.buf) >= self.rows or self.buf_chars >= self.chars:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "id": [d["id"] for d in self.buf],
                "text": [d["text"] for d in self.buf],
                "source": [d["source"] for d in self.buf],
                "meta": [json.dumps(d.get("meta", {}), sort_keys=True) for d in self.buf],
            }
        )
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self.writer.write_table(table)
        self.buf, self.buf_chars = [], 0

    def close(self) -> None:
        if self.buf or self.writer is None:
            self._flush()
        self.writer.close()


def _ingest(cfg: DataConfig, work: Path) -> dict[str, Any]:
    """Read every source once and cut the stream into shard files; return the ingest marker."""
    done = work / "ingest" / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    max_chars = int(cfg.shard_mb * (1 << 20))
    shard = 0
    buf: list[Document] = []
    buf_chars = 0
    sources: dict[str, Any] = {}

    def flush() -> None:
        nonlocal shard, buf, buf_chars
        write_shard(buf, work / "ingest" / f"shard-{shard:05d}.parquet")
        shard, buf, buf_chars = shard + 1, [], 0

    for spec in cfg.sources:
        report = ReadReport()
        n = 0
        for doc in tqdm(
            read_source_or_path(spec, report), desc=f"data {spec}", unit="doc", mininterval=1.0, leave=False
        ):
            n += 1
            # the source is the recipe's entry, so the split stratifies by it, not by file; `ord` is the
            # document's position in its source, used to make reused ids unique
            buf.append({**doc, "source": spec, "ord": n})
            buf_chars += len(doc["text"])
            if len(buf) >= cfg.shard_docs or buf_chars >= max_chars:
                flush()
        if n == 0:
            raise DataError(
                f"data source '{spec}' holds no usable documents (malformed input: "
                f"{dict(report.problems) or 'none'}); check the files or remove the source"
            )
        bad = sum(report.problems.values())
        if bad:
            log.warning("source %s: %d malformed input item(s): %s", spec, bad, dict(report.problems))
        sources[spec] = {"documents_in": n, "read": report.as_dict()}
    if buf:
        flush()
    # hashed once here, so a resumed run does not read the inputs again
    inputs = {spec: input_lineage(spec) for spec in cfg.sources}
    marker = {"shards": shard, "sources": sources, "inputs": inputs}
    atomic_write_json(done, marker)
    return marker


def _inputs(cfg: DataConfig, ingest: dict[str, Any]) -> dict[str, Any]:
    """The ingest marker's input hashes; a marker written before they were kept is hashed now."""
    if "inputs" in ingest:
        return ingest["inputs"]
    return {spec: input_lineage(spec) for spec in cfg.sources}


def _plan_fingerprint(cfg: DataConfig, specs: list[dict[str, Any]]) -> str:
    """Config and inputs (files by size and mtime; registry sources are pinned by hash)."""
    parts: list[Any] = [specs, cfg.sources, cfg.shard_docs, cfg.shard_mb]
    for spec in cfg.sources:
        # a streamed Hugging Face dataset is named by its spec alone: there are no local files to stat
        if spec not in SOURCES and spec not in CORPORA and not spec.startswith(HF_PREFIX):
            parts.append([[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in input_files(spec)])
    return pipeline_fingerprint(parts)


def _work_dir(out_dir: Path, fingerprint: str) -> Path:
    work = out_dir.with_name(f"{out_dir.name}.work")
    plan = work / "plan.json"
    if plan.exists() and json.loads(plan.read_text()).get("fingerprint") != fingerprint:
        log.info("%s belongs to another config or input; starting over", work)
        shutil.rmtree(work)
    if not plan.exists():
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_json(plan, {"fingerprint": fingerprint})
    return work


def run_pipeline(
    cfg: DataConfig,
    work: Path,
    specs: list[dict[str, Any]],
    model_scorer: ModelScorer | None = None,
    model_generator: ModelGenerator | None = None,
    model_embedder: EmbedderFactory | None = None,
) -> tuple[list[Path], dict[str, Any]]:
    """Ingest, then run each segment over all shards with a barrier (global decision) between them.

    Returns the final shard files (in order) and the counts for the manifest.
    """
    blocks = build_pipeline(specs, model_scorer, model_generator, model_embedder)
    segs = segments(blocks)
    ingest = _ingest(cfg, work)
    executor = make_executor(cfg.executor, cfg.workers, cfg.ray_address)
    block_stats: dict[str, dict[str, Any]] = {}
    removed: Counter[str] = Counter()
    pii: Counter[str] = Counter()
    markers: list[dict[str, Any]] = []
    for s, (_, global_block) in enumerate(segs):
        tasks = [
            ShardTask(tuple(specs), s, i, str(work), model_scorer, model_generator, model_embedder)
            for i in range(ingest["shards"])
        ]
        markers = executor.map(run_shard, tasks)
        for m in markers:
            for st in m["blocks"]:
                merge_stats(block_stats.setdefault(st["name"], {}), st)
            removed.update(m["removed_by_source"])
        if s == len(segs) - 1:
            for m in markers:  # PII placeholders in the documents that made it to the output
                pii.update(m["pii"])
        if global_block is not None:
            decision = work / f"stage-{s}" / "decision.npz"
            if not decision.exists():
                keys = [np.load(t.path(f"stage-{s}", ".keys.npy")) for t in tasks]
                masks = global_block.decide(keys)
                with atomic_path(decision) as tmp, open(tmp, "wb") as f:
                    np.savez(f, **{f"shard{i}": m for i, m in enumerate(masks)})
        log.info("segment %d of %d done on %d shard(s)", s + 1, len(segs), len(tasks))
    last = len(segs) - 1
    files = [work / f"stage-{last}" / f"shard-{i:05d}.parquet" for i in range(ingest["shards"])]
    reasons = [r for b in blocks for r in b.reasons]
    sources: dict[str, Any] = {}
    for spec, info in ingest["sources"].items():
        s_stats: dict[str, Any] = {"documents_in": info["documents_in"], **dict.fromkeys(reasons, 0)}
        for key, n in removed.items():
            src, reason = json.loads(key)
            if src == spec:
                s_stats[reason] = s_stats.get(reason, 0) + n
        s_stats["documents_out"] = sum(m["out_by_source"].get(spec, 0) for m in markers)
        s_stats["chars_out"] = sum(m["chars_by_source"].get(spec, 0) for m in markers)
        if info["read"]["problems"]:
            s_stats["malformed_input"] = info["read"]
        log.info("source %s: %s", spec, s_stats)
        sources[spec] = s_stats
    # blocks in pipeline order, global blocks included (their counts come from the applying pass)
    ordered = {b.name: block_stats.get(b.name, {}) for b in blocks}
    return files, {
        "sources": sources,
        "blocks": ordered,
        "pii": dict(sorted(pii.items())),
        "lineage": lineage(_inputs(cfg, ingest), specs, [b.name for b in blocks]),
    }


def _is_added(doc: Document) -> bool:
    """A document an augmentation block added beside its source (danlu.data.augment)."""
    mark = doc["meta"].get("augmented")
    return isinstance(mark, dict) and mark.get("added") is True


def _final_ids(files: list[Path]) -> Iterator[Document]:
    """The pipeline's output in order, with ids made unique (two local files may reuse ids).

    `group` is the id the split decides by: a document's own, or for an added (augmented) document
    its source's, so the two always land in the same split."""
    seen_ids: set[str] = set()
    group_of: dict[str, str] = {}  # id in the shards -> the group of the last document with it
    for f in files:
        for doc in read_shard(f):
            doc_id = doc["id"]
            if doc_id in seen_ids:
                doc_id = f"{doc_id}#{doc['ord']}"
            seen_ids.add(doc_id)
            group = doc_id
            if _is_added(doc):  # a copy of a copy joins the first one's group
                source_id = str(doc["meta"]["augmented"].get("source_id", doc_id))
                group = group_of.get(source_id, source_id)
            group_of[doc["id"]] = group
            yield {
                "id": doc_id,
                "text": doc["text"],
                "source": doc["source"],
                "meta": doc["meta"],
                "group": group,
            }


def _val_ids(files: list[Path], val_fraction: float, seed: int) -> set[str]:
    """split_documents' choice, computed from ids alone so texts need not be held in memory: the
    groups held out (an original with the documents augmentation added beside it is one group)."""
    by_source: dict[str, dict[str, None]] = {}
    for d in _final_ids(files):
        by_source.setdefault(d["source"], {})[d["group"]] = None
    val: set[str] = set()
    for groups in by_source.values():
        ids = list(groups)
        n_val = min(max(round(val_fraction * len(ids)), 1), len(ids) - 1)
        val.update(sorted(ids, key=lambda i: _split_rank(i, seed))[:n_val])
    return val


def _check_splittable(cfg: DataConfig, sources: dict[str, Any]) -> None:
    """The validation split holds out whole documents of each source, leaving it at least one: a source
    needs 2 documents to give one. Fail here, saying what to change, rather than leave an empty split."""
    counts = {spec: s["documents_out"] for spec, s in sources.items()}
    if any(n >= 2 for n in counts.values()):
        return
    raise DataError(
        f"the corpus has {sum(counts.values())} usable document(s) after the pipeline "
        f"({', '.join(f'{k}: {n}' for k, n in counts.items())}), too few for a validation split: it holds "
        "out whole documents of a source, so some source needs at least 2: add documents (or more text "
        f"per source), or keep more of them (lower data.min_chars={cfg.min_chars}, or loosen the "
        "filters in data.pipeline)"
    )


def run_data(
    cfg: DataConfig,
    out_dir: str | Path,
    model_scorer: ModelScorer | None = None,
    model_generator: ModelGenerator | None = None,
    model_embedder: EmbedderFactory | None = None,
) -> dict[str, Any]:
    """Build the documents directory with the recipe's pipeline; return its manifest.

    `model_scorer` scores documents with a model dir where a block names one (`perplexity`); the run
    layer passes danlu.eval.perplexity.model_dir_scorer. `model_generator` generates text with one
    (`paraphrase`); the run layer passes danlu.run_paraphrase.model_dir_generator. `model_embedder`
    embeds documents for an `edu_score` head on model embeddings (danlu.eval.edu_embed.model_dir_embedder).
    """
    out_dir = Path(out_dir)
    specs = cfg.pipeline if cfg.pipeline is not None else default_pipeline(cfg.min_chars)
    build_pipeline(specs, model_scorer, model_generator, model_embedder)  # validate before reading anything
    for spec in cfg.sources:
        if spec not in SOURCES and spec not in CORPORA and not Path(spec).expanduser().exists():
            read_source_or_path(spec)  # raises the not-found error
    work = _work_dir(out_dir, _plan_fingerprint(cfg, specs))
    try:
        files, counts = run_pipeline(cfg, work, specs, model_scorer, model_generator, model_embedder)
        _check_splittable(cfg, counts["sources"])
    except DataError:
        # bad input, not an interruption: nothing worth resuming from
        shutil.rmtree(work, ignore_errors=True)
        raise
    val_ids = _val_ids(files, cfg.val_fraction, cfg.seed)
    manifest: dict[str, Any] = {
        # the mix shapes the pack stage only (changing it does not rerun this one): the token index holds it
        "config": {k: v for k, v in cfg.__dict__.items() if k != "mix"},
        "pipeline": specs,
        "executor": cfg.executor,
        "sources": counts["sources"],
        "blocks": counts["blocks"],
        "pii": counts["pii"],
        "lineage": counts["lineage"],
        "splits": {},
    }
    with atomic_dir(out_dir) as tmp:
        writers = {name: _SplitWriter(tmp / f"{name}.parquet") for name in SPLITS}
        added: Counter[str] = Counter()
        for doc in _final_ids(files):
            split = "val" if doc["group"] in val_ids else "train"
            if _is_added(doc):
                # validation measures the original text: an added document of a held-out one is dropped
                added["dropped_from_val" if split == "val" else "train"] += 1
                if split == "val":
                    continue
            writers[split].add(doc)
        if added:
            manifest["augmented_added"] = {k: added[k] for k in ("train", "dropped_from_val")}
        for name, w in writers.items():
            w.close()
            manifest["splits"][name] = {
                "file": w.path.name,
                "documents": w.documents,
                "chars": w.total_chars,
                "sha256": sha256_file(w.path),
            }
        atomic_write_json(tmp / "manifest.json", manifest)
    shutil.rmtree(work, ignore_errors=True)
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


def document_texts(docs_dir: str | Path, split: str = "train") -> Iterator[str]:
    """The texts of one split, in order: what the tokenizer stage trains on."""
    return (d["text"] for d in read_documents(docs_dir, split))
