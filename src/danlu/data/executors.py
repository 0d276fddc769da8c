"""Run a pipeline over shards: locally (a process pool) or on Ray, resumably, with identical output.

Work directory layout (one per output directory, removed once the output is complete):
  plan.json                         fingerprint of the config and inputs; a mismatch starts over
  ingest/shard-NNNNN.parquet        the input, read once and cut into shards
  ingest/done.json                  marker: shard count, per-source counts and malformed-input reports
  stage-S/shard-NNNNN.parquet       segment S's output of shard N
  stage-S/shard-NNNNN.keys.npy      the next global block's keys for shard N (substring_dedup: its text)
  stage-S/shard-NNNNN.done.json     marker: shard N of segment S is complete (its counts inside)
  stage-S/decision.npz              the global block's decisions (keep masks, scores, spans), per shard
Every file is written to a temp name and renamed, and a marker is written only after the files it
vouches for, so a run killed at any point and rerun redoes only unfinished shards: no document is
lost or duplicated. Shards are processed independently and merged in shard order, so the output
does not depend on the executor, the number of workers, or the order in which shards finish.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from danlu.data.block import ModelScorer, Stats
from danlu.data.edu_head import EmbedderFactory
from danlu.data.paraphrase import ModelGenerator
from danlu.data.pipeline import build_pipeline, segments
from danlu.data.sources import Document
from danlu.errors import ConfigError
from danlu.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

_COLUMNS = ("id", "text", "source", "meta", "ord")
_BATCH = 1000


# --- shard files ---------------------------------------------------------------------------------


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("text", pa.string()),
            ("source", pa.string()),
            ("meta", pa.string()),
            ("ord", pa.int64()),
        ]
    )


def write_shard(docs: Iterable[Document], path: Path) -> int:
    """Write documents to a shard file atomically, in batches (bounded memory); return how many."""
    import pyarrow.parquet as pq

    n = 0
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, _schema(), compression="zstd")
        try:
            batch: list[Document] = []
            for d in docs:
                batch.append(d)
                if len(batch) >= _BATCH:
                    writer.write_table(_to_table(batch))
                    n += len(batch)
                    batch = []
            if batch or n == 0:
                writer.write_table(_to_table(batch))
                n += len(batch)
        finally:
            writer.close()
    return n


def _to_table(docs: list[Document]) -> Any:
    import pyarrow as pa

    return pa.table(
        {
            "id": [d["id"] for d in docs],
            "text": [d["text"] for d in docs],
            "source": [d["source"] for d in docs],
            "meta": [json.dumps(d.get("meta") or {}, sort_keys=True) for d in docs],
            "ord": [int(d.get("ord", 0)) for d in docs],
        },
        schema=_schema(),
    )


def read_shard(path: Path) -> Iterator[Document]:
    """Stream a shard file's documents back, batch by batch."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(columns=list(_COLUMNS), batch_size=_BATCH):
        for row in batch.to_pylist():
            row["meta"] = json.loads(row["meta"])
            yield row


# --- per-shard work ------------------------------------------------------------------------------


def merge_stats(into: dict[str, Any], part: dict[str, Any], max_examples: int = 5) -> dict[str, Any]:
    """Add one shard's Stats.as_dict() to a running total (examples in shard order, at most a few)."""
    if not into:
        into.update(name=part["name"], documents_in=0, documents_out=0, removed_by_reason={}, examples={})
    into["documents_in"] += part["documents_in"]
    into["documents_out"] += part["documents_out"]
    for reason, n in part["removed_by_reason"].items():
        into["removed_by_reason"][reason] = into["removed_by_reason"].get(reason, 0) + n
    for key, n in part.get("counts", {}).items():
        counts = into.setdefault("counts", {})
        counts[key] = counts.get(key, 0) + n
    for reason, shown in part["examples"].items():
        have = into["examples"].setdefault(reason, [])
        have.extend(shown[: max_examples - len(have)])
    return into


@dataclass(frozen=True)
class ShardTask:
    """Segment `segment` of the pipeline on shard `shard`: everything a worker needs, picklable (the
    model scorer and generator factories are module-level functions, pickled by name)."""

    specs: tuple[dict[str, Any], ...]
    segment: int
    shard: int
    work: str
    model_scorer: ModelScorer | None = None
    model_generator: ModelGenerator | None = None
    model_embedder: EmbedderFactory | None = None

    def path(self, stage: str, suffix: str) -> Path:
        return Path(self.work) / stage / f"shard-{self.shard:05d}{suffix}"


_BLOCK_CACHE: dict[str, list[Any]] = {}


def _blocks(
    specs: tuple[dict[str, Any], ...],
    model_scorer: ModelScorer | None,
    model_generator: ModelGenerator | None = None,
    model_embedder: EmbedderFactory | None = None,
) -> list[Any]:
    # one build per worker process: language, PII, scoring and generating models load once, not per shard
    factories = (model_scorer, model_generator, model_embedder)
    names = [f"{f.__module__}.{f.__qualname__}" if f else None for f in factories]
    key = json.dumps([list(specs), *names], sort_keys=True, default=str)
    if key not in _BLOCK_CACHE:
        _BLOCK_CACHE[key] = build_pipeline(list(specs), model_scorer, model_generator, model_embedder)
    return _BLOCK_CACHE[key]


def run_shard(task: ShardTask) -> dict[str, Any]:
    """Run one segment on one shard; return its marker (read back if the shard was already done)."""
    stage = f"stage-{task.segment}"
    done = task.path(stage, ".done.json")
    if done.exists():
        return json.loads(done.read_text())
    blocks = _blocks(task.specs, task.model_scorer, task.model_generator, task.model_embedder)
    doc_blocks, global_block = segments(blocks)[task.segment]
    src = (
        task.path("ingest", ".parquet")
        if task.segment == 0
        else task.path(f"stage-{task.segment - 1}", ".parquet")
    )
    all_stats: list[Stats] = []
    by_source: Counter[str] = Counter()
    docs: Iterable[Document] = read_shard(src)
    if task.segment > 0:
        prev = segments(blocks)[task.segment - 1][1]
        assert prev is not None
        with np.load(Path(task.work) / f"stage-{task.segment - 1}" / "decision.npz") as z:
            decision = z[f"shard{task.shard}"]
        st = Stats()
        all_stats.append(st)
        docs = prev.apply(docs, decision, st, by_source)
    for b in doc_blocks:
        st = Stats()
        all_stats.append(st)
        docs = b.run(docs, st, by_source)
    texts: list[str] = []
    keys: list[np.ndarray] = []
    out_by_source: Counter[str] = Counter()
    chars_by_source: Counter[str] = Counter()
    pii: Counter[str] = Counter()

    def tap(stream: Iterable[Document]) -> Iterator[Document]:
        for d in stream:
            pii.update(d["meta"].get("pii") or {})
            out_by_source[d["source"]] += 1
            chars_by_source[d["source"]] += len(d["text"])
            if global_block is not None:
                texts.append(d["text"])
                if len(texts) >= _BATCH:
                    keys.append(global_block.keys(texts))
                    texts.clear()
            yield d

    n_out = write_shard(tap(docs), task.path(stage, ".parquet"))
    if global_block is not None:
        if texts or not keys:
            keys.append(global_block.keys(texts))
        with atomic_path(task.path(stage, ".keys.npy")) as tmp, open(tmp, "wb") as f:
            np.save(f, np.concatenate(keys))
    marker = {
        "segment": task.segment,
        "shard": task.shard,
        "documents_out": n_out,
        "blocks": [s.as_dict() for s in all_stats],
        "removed_by_source": {k: v for k, v in sorted(by_source.items())},
        "out_by_source": dict(sorted(out_by_source.items())),
        "chars_by_source": dict(sorted(chars_by_source.items())),
        "pii": dict(sorted(pii.items())),
    }
    atomic_write_json(done, marker)
    return marker


# --- executors -----------------------------------------------------------------------------------


class LocalExecutor:
    """A process pool over shards (workers=1 runs them in this process)."""

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers or os.cpu_count() or 1

    def map(
        self, fn: Callable[[ShardTask], dict[str, Any]], tasks: Sequence[ShardTask]
    ) -> list[dict[str, Any]]:
        if self.workers == 1 or len(tasks) <= 1:
            return [fn(t) for t in tasks]
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # fork: workers need no importable __main__ (scripts, notebooks) and start in milliseconds;
        # tasks carry only paths and block specs, so nothing of the parent's state leaks into them
        ctx = mp.get_context("fork")
        # each worker builds its own blocks: a model built here, with its thread pools, does not survive fork
        pool = ProcessPoolExecutor(min(self.workers, len(tasks)), ctx, initializer=_BLOCK_CACHE.clear)
        with pool:
            return list(pool.map(fn, tasks))


class RayExecutor:
    """Shards as Ray tasks; the work directory must be on a filesystem every Ray node sees."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int = 0) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "data.executor=ray needs Ray: pip install 'danlu[ray]' (or pip install ray)"
            ) from None
        self.ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            elif workers:
                kwargs["num_cpus"] = workers
            ray.init(**kwargs)

    def map(
        self, fn: Callable[[ShardTask], dict[str, Any]], tasks: Sequence[ShardTask]
    ) -> list[dict[str, Any]]:
        remote = self.ray.remote(num_cpus=1)(fn)
        return self.ray.get([remote.remote(t) for t in tasks])


def make_executor(kind: str, workers: int = 1, address: str | None = None) -> LocalExecutor | RayExecutor:
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(address, workers)
    raise ConfigError(f"data.executor must be 'local' or 'ray', got {kind!r}")
