"""Pipeline blocks and their registry: a recipe's `data.pipeline` list becomes a list of blocks.

A block is one of two kinds (datatrove's shape: blocks take and yield documents):
  DocBlock     decides per document (filters, normalizers, PII, decontamination); runs inside each shard.
  GlobalBlock  decides from the whole corpus (dedup). It runs in two halves around a barrier: `keys`
               computes a small per-document summary inside each shard (a hash, a MinHash signature);
               `decide` sees the summaries of every shard, in shard order, and returns which documents
               to keep. Texts never need to be in memory together.
`build_pipeline(specs)` validates each spec ({"block": name, **options}) against the registry: an unknown
block or option is a ConfigError naming the valid ones.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from danlu.data.clean import normalize, text_hash
from danlu.data.filters import (
    C4QualityFilter,
    DocFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    Normalizer,
    Stats,
    ToxicityFilter,
)
from danlu.data.sources import Document
from danlu.errors import ConfigError

# --- per-document blocks -------------------------------------------------------------------------


class CleanText:
    """clean.normalize (NFC, newlines, control characters, spacing); never removes a document."""

    name = "clean"

    def filter(self, doc: Document) -> tuple[bool, str | None]:
        doc["text"] = normalize(doc["text"])
        return True, None


class MinChars:
    """Removes documents shorter than min_chars characters."""

    name = "min_chars"
    reasons = ("too_short",)

    def __init__(self, min_chars: int = 20) -> None:
        if min_chars < 0:
            raise ConfigError(f"min_chars must be >= 0, got {min_chars}")
        self.min_chars = min_chars

    def filter(self, doc: Document) -> tuple[bool, str | None]:
        return (True, None) if len(doc["text"]) >= self.min_chars else (False, "too_short")


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
        """Kept documents; counts go into `stats`, and removals per (source, reason) into `by_source`."""
        stats.name = self.name
        for doc in docs:
            original = doc["text"]
            # a private meta dict per document: a filter writing scores never touches the caller's copy
            doc = {**doc, "meta": dict(doc.get("meta") or {})}
            keep, reason = self.filt.filter(doc)
            stats.record(doc, keep, reason, original)
            if keep:
                yield doc
            elif by_source is not None:
                by_source[removal_key(doc["source"], reason or "removed")] += 1


def removal_key(source: str, reason: str) -> str:
    """A JSON-safe key for per-source removal counts."""
    return json.dumps([source, reason])


# --- global blocks -------------------------------------------------------------------------------


class GlobalBlock(ABC):
    """A corpus-wide block: per-shard `keys`, then `decide` over all shards' keys -> keep masks."""

    kind = "global"
    name = "global"
    reason = "duplicate"
    reasons: tuple[str, ...] = ()

    @abstractmethod
    def keys(self, texts: Sequence[str]) -> np.ndarray:
        """One row of summary per text (computed inside a shard, in a worker)."""

    @abstractmethod
    def decide(self, keys: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Keep masks, one per shard, from every shard's keys in shard order."""


def _split_mask(keep: np.ndarray, keys: Sequence[np.ndarray]) -> list[np.ndarray]:
    bounds = np.cumsum([len(k) for k in keys])[:-1]
    return np.split(keep, bounds) if len(keys) else []


class ExactDedupBlock(GlobalBlock):
    """Keeps the first document of each clean.text_hash (case and whitespace folded) in corpus order."""

    name = "exact_dedup"
    reason = "duplicates"
    reasons = ("duplicates",)

    def keys(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([bytes.fromhex(text_hash(t)) for t in texts], dtype="S32").reshape(-1)

    def decide(self, keys: Sequence[np.ndarray]) -> list[np.ndarray]:
        allk = np.concatenate(keys) if keys else np.empty(0, "S32")
        _, first = np.unique(allk, return_index=True)
        keep = np.zeros(len(allk), dtype=bool)
        keep[first] = True
        return _split_mask(keep, keys)


class MinHashDedupBlock(GlobalBlock):
    """MinHash-LSH near-duplicate removal (danlu.data.dedup.minhash): signatures per shard, LSH after.

    Candidate pairs are verified by estimated Jaccard >= threshold; clusters are connected components;
    the first document of each cluster in corpus order is kept.
    """

    name = "minhash_dedup"
    reason = "near_duplicate"
    reasons = ("near_duplicate",)

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 128,
        ngram: int = 5,
        shingle: str = "word",
        seed: int = 1,
        bands: list[int] | None = None,
    ) -> None:
        from danlu.data.dedup import Shingling, optimal_bands

        self.shingling = Shingling(kind=shingle, n=ngram)
        self.threshold = threshold
        self.num_perm = num_perm
        self.seed = seed
        self.bands = tuple(bands) if bands else optimal_bands(threshold, num_perm)

    def keys(self, texts: Sequence[str]) -> np.ndarray:
        from danlu.data.dedup import minhash_signatures

        return minhash_signatures(texts, self.num_perm, self.seed, self.shingling)

    def decide(self, keys: Sequence[np.ndarray]) -> list[np.ndarray]:
        from danlu.data.dedup.clusters import NearDuplicates
        from danlu.data.dedup.minhash import estimated_jaccard, lsh_candidate_pairs

        sig = np.concatenate(keys) if keys else np.empty((0, self.num_perm), np.uint32)
        b, r = self.bands
        cand = lsh_candidate_pairs(sig, b, r)
        sim = estimated_jaccard(sig, cand)
        ok = sim >= self.threshold
        found = NearDuplicates(n=len(sig), pairs=cand[ok], similarity=sim[ok], candidates=len(cand))
        return _split_mask(found.keep, keys)


class SimHashDedupBlock(GlobalBlock):
    """SimHash near-duplicate removal: 64-bit fingerprints per shard, Hamming distance <= k after."""

    name = "simhash_dedup"
    reason = "near_duplicate"
    reasons = ("near_duplicate",)

    def __init__(self, k: int = 3, ngram: int = 5, shingle: str = "word") -> None:
        from danlu.data.dedup import Shingling
        from danlu.data.dedup.simhash import block_masks

        block_masks(k)  # validates k now
        self.k = k
        self.shingling = Shingling(kind=shingle, n=ngram)

    def keys(self, texts: Sequence[str]) -> np.ndarray:
        from danlu.data.dedup import simhash

        return simhash(list(texts), self.shingling)

    def decide(self, keys: Sequence[np.ndarray]) -> list[np.ndarray]:
        from danlu.data.dedup.clusters import NearDuplicates
        from danlu.data.dedup.simhash import hamming, simhash_candidate_pairs

        fps = np.concatenate(keys) if keys else np.empty(0, np.uint64)
        cand = simhash_candidate_pairs(fps, self.k)
        dist = hamming(fps[cand[:, 0]], fps[cand[:, 1]]) if len(cand) else np.empty(0, np.int64)
        ok = dist <= self.k
        found = NearDuplicates(n=len(fps), pairs=cand[ok], similarity=1 - dist[ok] / 64, candidates=len(cand))
        return _split_mask(found.keep, keys)


# --- registry ------------------------------------------------------------------------------------


def _pii(kinds: list[str] | None = None) -> DocFilter:
    from danlu.data.pii import KINDS, PIIFilter, PIIScrubber

    return PIIFilter(PIIScrubber(kinds if kinds is not None else KINDS))


def _language(languages: list[str] | None = None, min_score: float = 0.65) -> DocFilter:
    from danlu.data.langid import LanguageFilter

    return LanguageFilter(languages=languages if languages is not None else ["en"], min_score=min_score)


def _decontaminate(**kwargs: Any) -> DocFilter:
    from danlu.data.decontam import Decontaminator

    return Decontaminator(**kwargs)


def _quality_classifier(model: str, threshold: float | None = None, keep_top: float | None = None) -> Any:
    # lazy: danlu.data.quality_model imports GlobalBlock from this module
    from danlu.data.quality_model import quality_classifier_block

    return quality_classifier_block(model, threshold=threshold, keep_top=keep_top)


def _perplexity(
    model: str, max_perplexity: float | None = None, keep_bottom: float | None = None, device: str = "cpu"
) -> Any:
    from danlu.data.quality_model import perplexity_block

    return perplexity_block(model, max_perplexity=max_perplexity, keep_bottom=keep_bottom, device=device)


def _decontam_signature() -> inspect.Signature:
    from danlu.data.decontam import Decontaminator

    return inspect.signature(Decontaminator)


# name -> factory of the block's filter (DocBlock) or the block itself (GlobalBlock)
BLOCKS: dict[str, Callable[..., Any]] = {
    "clean": CleanText,
    "normalize": Normalizer,
    "min_chars": MinChars,
    "language": _language,
    "gopher_quality": GopherQualityFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "c4_quality": C4QualityFilter,
    "toxicity": ToxicityFilter,
    "pii": _pii,
    "decontaminate": _decontaminate,
    "quality_classifier": _quality_classifier,
    "perplexity": _perplexity,
    "exact_dedup": ExactDedupBlock,
    "minhash_dedup": MinHashDedupBlock,
    "simhash_dedup": SimHashDedupBlock,
}
# options a recipe may not set: Python objects, not data
_HIDDEN = {"classifier", "identifier", "scrubber", "shingling"}


def default_pipeline(min_chars: int) -> list[dict[str, Any]]:
    """The basic cleaning every corpus gets: today's data stage, as block specs."""
    return [{"block": "clean"}, {"block": "min_chars", "min_chars": min_chars}, {"block": "exact_dedup"}]


def block_options(name: str) -> list[str]:
    """The options a block accepts in a recipe."""
    sig = _decontam_signature() if name == "decontaminate" else inspect.signature(BLOCKS[name])
    return [p for p in sig.parameters if p not in _HIDDEN and p != "self"]


def build_block(spec: dict[str, Any]) -> DocBlock | GlobalBlock:
    """One block from its spec {"block": name, **options}."""
    if not isinstance(spec, dict) or "block" not in spec:
        raise ConfigError(
            f"data.pipeline: each entry needs a 'block' name, e.g. {{block: clean}}; got {spec!r}"
        )
    name = spec["block"]
    if name not in BLOCKS:
        raise ConfigError(f"data.pipeline: unknown block {name!r}; valid blocks: {', '.join(BLOCKS)}")
    options = {k: v for k, v in spec.items() if k != "block"}
    valid = block_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"data.pipeline: block {name!r} has no option {', '.join(unknown)}; "
            f"valid options: {', '.join(valid) or '(none)'}"
        )
    try:
        made = BLOCKS[name](**options)
    except TypeError as e:
        raise ConfigError(f"data.pipeline: block {name!r}: {e}") from None
    if isinstance(made, GlobalBlock):
        return made
    return DocBlock(name, made)


def build_pipeline(specs: Sequence[dict[str, Any]]) -> list[DocBlock | GlobalBlock]:
    """Blocks from a recipe's data.pipeline list (validated up front, before any work)."""
    if not specs:
        raise ConfigError(
            "data.pipeline is empty; list at least one block, or leave it unset for the default"
        )
    blocks = [build_block(s) for s in specs]
    names = [b.name for b in blocks]
    for n in set(names):
        if names.count(n) > 1:
            # stats are keyed by block; number repeats so each keeps its own counts
            for i, j in enumerate([k for k, m in enumerate(names) if m == n][1:], 2):
                blocks[j].name = f"{n}#{i}"
    return blocks


def segments(blocks: Sequence[DocBlock | GlobalBlock]) -> list[tuple[list[DocBlock], GlobalBlock | None]]:
    """Split the pipeline at its global blocks: [(per-document blocks, the global block after them)].

    Each segment runs as one pass over the shards; its global block's keys are computed in that pass
    and its decision is applied at the start of the next one.
    """
    out: list[tuple[list[DocBlock], GlobalBlock | None]] = []
    current: list[DocBlock] = []
    for b in blocks:
        if isinstance(b, GlobalBlock):
            out.append((current, b))
            current = []
        else:
            current.append(b)
    out.append((current, None))  # the last pass applies the last global decision, if any
    return out


def pipeline_fingerprint(specs: Sequence[dict[str, Any]]) -> str:
    """A stable hash of block specs, for resume checks."""
    return hashlib.sha256(json.dumps(list(specs), sort_keys=True, default=str).encode()).hexdigest()
