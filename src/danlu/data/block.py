"""The block contract of the data pipeline: what a block is, what it counts, how documents go through it.

A block is one of two kinds (datatrove's shape: blocks take and yield documents):
  DocBlock     decides per document by a DocFilter (filters, normalizers, PII, decontamination, scores);
               runs inside each shard. `DocBlock.run` is the one per-document loop.
  GlobalBlock  decides from the whole corpus (dedup, percentile cuts). It runs in three steps around a
               barrier: `keys` computes a small per-document summary inside each shard (a hash, a MinHash
               signature, a score); `decide` sees the summaries of every shard, in shard order, and
               returns one decision per shard (saved, so a resumed run reuses it); `apply` carries a
               shard's decision out in the next pass.
Every block counts what it kept and removed, per reason, in a `Stats`; removals per source go into a
Counter keyed by `removal_key`. The blocks themselves live in danlu.data.filters, .pipeline, .pii,
.langid, .decontam and .quality_model; the registry that builds them from a recipe is in .pipeline.
"""

from __future__ import annotations

import itertools
import json
import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from danlu.data.sources import Document
from danlu.errors import DataError

log = logging.getLogger(__name__)

# Scores documents with a model directory, for blocks that name one (perplexity): the run layer passes a
# module-level (so picklable, for worker processes) factory, model_scorer(path, device) -> score, with
# score(texts) -> one perplexity per text. danlu.data loads no models itself.
ModelScorer = Callable[[str, str], Callable[[Sequence[str]], Sequence[float]]]


class DocFilter(Protocol):
    """A block that decides whether to keep a document, and may rewrite its text and meta."""

    name: str

    def filter(self, doc: Document) -> tuple[bool, str | None]: ...


@dataclass
class Stats:
    """What one block kept and removed, and a few removed documents per reason to look at."""

    name: str = ""
    n_in: int = 0
    n_out: int = 0
    removed_by_reason: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    max_examples: int = 5
    example_chars: int = 300
    counts: Counter[str] = field(default_factory=Counter)  # a block's own totals (substring_dedup: bytes cut)

    def record(self, doc: Document, keep: bool, reason: str | None, text: str | None = None) -> None:
        """Count one decision; `text` is the document's text before the block rewrote it."""
        self.n_in += 1
        if keep:
            self.n_out += 1
            return
        reason = reason or "removed"
        self.removed_by_reason[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self.max_examples:
            shown_text = doc.get("text", "") if text is None else text
            shown.append({"id": str(doc.get("id", "")), "text": shown_text[: self.example_chars]})

    @property
    def n_removed(self) -> int:
        return self.n_in - self.n_out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for a manifest."""
        return {
            "name": self.name,
            "documents_in": self.n_in,
            "documents_out": self.n_out,
            "removed_by_reason": dict(self.removed_by_reason.most_common()),
            "examples": self.examples,
            **({"counts": dict(sorted(self.counts.items()))} if self.counts else {}),
        }


def removal_key(source: str, reason: str) -> str:
    """A JSON-safe key for per-source removal counts."""
    return json.dumps([source, reason])


class DocBlock:
    """A per-document block: wraps a DocFilter and streams documents through it, counting in `stats`."""

    kind = "doc"

    def __init__(self, name: str, filt: DocFilter) -> None:
        self.name = name
        self.filt = filt
        self.reasons: tuple[str, ...] = getattr(filt, "reasons", ())

    def run(
        self, docs: Iterable[Document], stats: Stats, by_source: Counter[str] | None = None
    ) -> Iterator[Document]:
        """Kept documents; counts go into `stats`, and removals per (source, reason) into `by_source`.

        Each document is shallow-copied with its own meta dict first, so the caller's documents are never
        modified by a filter that rewrites text or writes scores. A filter with `expand(doc)` (an
        augmentation block keeping originals) adds the documents it returns right after `doc`; they count
        in documents_out and in counts["documents_added"]. A filter with `prefetch(docs)` and a
        `batch_size` above 1 (paraphrase) sees each batch of documents before they go through it.
        """
        stats.name = self.name
        expand = getattr(self.filt, "expand", None)  # augmentation: documents added after each one
        take_counts = getattr(self.filt, "take_counts", None)
        prefetch, batch = getattr(self.filt, "prefetch", None), getattr(self.filt, "batch_size", 1)
        if prefetch is not None and batch > 1:
            docs = _prefetched(docs, batch, prefetch)
        for doc in docs:
            original = doc.get("text")
            if not isinstance(original, str):
                raise DataError(
                    f"document {doc.get('id')!r} has no string 'text' field; documents are "
                    "{id, text, source, meta} dicts (see danlu.data.documents)"
                )
            doc = {**doc, "meta": dict(doc.get("meta") or {})}
            keep, reason = self.filt.filter(doc)
            stats.record(doc, keep, reason, original)
            added = expand(doc) if keep and expand is not None else []
            if take_counts is not None:
                stats.counts.update(take_counts())
            if keep:
                yield doc
            elif by_source is not None:
                by_source[removal_key(doc["source"], reason or "removed")] += 1
            for extra in added:
                stats.n_out += 1
                stats.counts["documents_added"] += 1
                yield extra


def _prefetched(
    docs: Iterable[Document], batch: int, prefetch: Callable[[list[Document]], None]
) -> Iterator[Document]:
    """`docs` again, `batch` at a time, each batch shown to `prefetch` first (a model batches them)."""
    it = iter(docs)
    while chunk := list(itertools.islice(it, batch)):
        prefetch(chunk)
        yield from chunk


def run_filter(filt: DocFilter, docs: Iterable[Document], stats: Stats | None = None) -> Iterator[Document]:
    """One filter on its own, outside a pipeline: the documents `filt` keeps; counts go into `stats`
    (pass one in to read them afterwards)."""
    stats = stats if stats is not None else Stats()
    yield from DocBlock(stats.name or filt.name, filt).run(docs, stats)
    log.info(
        "%s: kept %d of %d, removed %s", stats.name, stats.n_out, stats.n_in, dict(stats.removed_by_reason)
    )


class GlobalBlock(ABC):
    """A corpus-wide block: per-shard `keys`, `decide` over all shards' keys, `apply` per shard.

    A decision is, by default, a keep mask; or a record array with a `keep` field whose other fields
    are per-document values that `apply` writes into each kept document's meta (a percentile cut
    stores the scores it ranked by). A block may use its own form and override `apply`.
    """

    kind = "global"
    name = "global"
    reason = "duplicate"
    reasons: tuple[str, ...] = ()

    @abstractmethod
    def keys(self, texts: Sequence[str]) -> np.ndarray:
        """A summary of a shard's texts, usually one row per text (computed inside a shard, in a worker)."""

    @abstractmethod
    def decide(self, keys: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Decisions, one per shard, from every shard's keys in shard order."""

    def apply(
        self, docs: Iterable[Document], decision: np.ndarray, stats: Stats, by_source: Counter[str]
    ) -> Iterator[Document]:
        """One shard's documents after its decision; counts go into `stats` and `by_source`."""
        stats.name = self.name
        keep = decision["keep"] if decision.dtype.names else decision
        values = [f for f in decision.dtype.names or () if f != "keep"]
        n = 0
        for i, doc in enumerate(docs):
            n = i + 1
            if i >= len(keep):
                break
            k = bool(keep[i])
            stats.record(doc, k, None if k else self.reason)
            if not k:
                by_source[removal_key(doc["source"], self.reason)] += 1
                continue
            for f in values:
                doc["meta"][f] = decision[f][i].item()
            yield doc
        if n != len(keep):
            raise stale_decision(n, len(keep))


def stale_decision(docs: int, decided: int) -> RuntimeError:
    """The error of a shard whose saved decision does not fit its documents."""
    # the plan fingerprint of the work directory rules this out unless the directory was damaged
    return RuntimeError(
        f"a shard's documents ({docs} read) and its saved decision (for {decided}) disagree; "
        "delete the .work directory and rerun"
    )


def split_per_shard(values: np.ndarray, keys: Sequence[np.ndarray]) -> list[np.ndarray]:
    """A corpus-wide decision (one row per document) cut back into one piece per shard's keys."""
    bounds = np.cumsum([len(k) for k in keys])[:-1]
    return np.split(values, bounds) if len(keys) else []
