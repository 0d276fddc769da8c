"""Pipeline blocks and their registry: a recipe's `data.pipeline` list becomes a list of blocks.

Blocks are DocBlocks (per document, inside each shard) or GlobalBlocks (keys per shard, one decision over
the corpus, applied in the next pass): the contract is in danlu.data.block. Here are the cleaning and
dedup blocks and the registry. Texts need not be in memory together, except for substring_dedup,
whose suffix array spans the corpus.
`build_pipeline(specs)` validates each spec ({"block": name, **options}) against the registry: an unknown
block or option is a ConfigError naming the valid ones. A `perplexity` block naming a danlu model
directory scores with the `model_scorer` factory the run layer passes in, and a `paraphrase` block
generates with its `model_generator` factory, and an `edu_score` head on model embeddings embeds with
its `model_embedder` factory (data loads no models).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from danlu.data.augment import NoiseAugmenter
from danlu.data.block import (
    DocBlock,
    DocFilter,
    GlobalBlock,
    ModelScorer,
    Stats,
    removal_key,
    split_per_shard,
    stale_decision,
)
from danlu.data.clean import normalize, text_hash
from danlu.data.eda import EdaAugmenter
from danlu.data.edu_head import EmbedderFactory
from danlu.data.filters import (
    C4QualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    Normalizer,
    ToxicityFilter,
)
from danlu.data.paraphrase import ModelGenerator, ParaphraseAugmenter
from danlu.data.sources import Document
from danlu.errors import ConfigError, DataError

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


# --- global blocks -------------------------------------------------------------------------------


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
        return split_per_shard(keep, keys)


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
        return split_per_shard(found.keep, keys)


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
        return split_per_shard(found.keep, keys)


class SubstringDedupBlock(GlobalBlock):
    """Exact-substring dedup across every shard (danlu.data.dedup.substring; Lee et al. 2022).

    Each span of at least `min_length` UTF-8 bytes (characters, for ASCII text) that also occurs
    earlier in the corpus (shard order, then document order) is cut, so the first occurrence stays and
    every later repeat goes; whole characters only, and no span crosses a document boundary. A
    document that lost text keeps its id, source and meta, and gets meta["substring_removed_chars"];
    one left with fewer than `min_chars` characters (whitespace trimmed) is dropped
    ("too_short_after_dedup"). Untouched documents are never dropped. The manifest entry counts the
    spans, characters and bytes cut and the documents changed.

    Needs the whole corpus in memory: the keys are each shard's UTF-8 text (saved beside the shard),
    and the barrier builds one suffix array over all of it: about `BYTES_PER_BYTE` bytes of memory per
    byte of text (the default max_mb of 2048 MiB needs about 48 GiB). A corpus over `max_mb` MiB of
    text, or one whose estimate exceeds this machine's memory, is a DataError before that memory is taken.
    The decision (the byte spans to cut, per shard) is saved like the other global blocks' masks, so a
    resumed run reuses it.
    """

    name = "substring_dedup"
    reason = "too_short_after_dedup"
    reasons = ("too_short_after_dedup",)
    BYTES_PER_BYTE = 24  # measured peak with pydivsufsort: keys, corpus, int32 then int64 SA, LCP

    def __init__(
        self, min_length: int = 50, min_chars: int = 1, max_mb: float = 2048, backend: str = "auto"
    ) -> None:
        from danlu.data.dedup.suffix_array import BACKENDS

        if min_length < 1:
            raise ConfigError(f"substring_dedup: min_length must be >= 1 byte, got {min_length}")
        if min_chars < 0:
            raise ConfigError(f"substring_dedup: min_chars must be >= 0, got {min_chars}")
        if max_mb <= 0:
            raise ConfigError(f"substring_dedup: max_mb must be > 0, got {max_mb}")
        if backend not in BACKENDS:
            raise ConfigError(
                f"substring_dedup: backend must be one of {', '.join(BACKENDS)}, got {backend!r}"
            )
        self.min_length, self.min_chars, self.max_mb, self.backend = min_length, min_chars, max_mb, backend

    def keys(self, texts: Sequence[str]) -> np.ndarray:
        from danlu.data.dedup.substring import concatenate

        return concatenate(texts)[0]  # the texts themselves, as the suffix array's bytes

    def decide(self, keys: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per shard, rows (document index in the shard, byte start, byte end) to cut."""
        from danlu.data.dedup.substring import SEPARATOR, repeated_spans

        self._check_size(sum(len(k) for k in keys))
        first_doc = np.cumsum([0, *(np.count_nonzero(k == SEPARATOR) for k in keys)])
        corpus = np.concatenate(keys) if keys else np.empty(0, np.uint8)
        spans = repeated_spans(corpus, self.min_length, self.backend)
        del corpus
        bounds = np.searchsorted(spans[:, 0], first_doc)  # spans come in corpus order
        out = []
        for s in range(len(keys)):
            rows = spans[bounds[s] : bounds[s + 1]].copy()
            rows[:, 0] -= first_doc[s]
            out.append(rows)
        return out

    def _check_size(self, n_bytes: int) -> None:
        mb, need = n_bytes / 2**20, n_bytes * self.BYTES_PER_BYTE
        have = _physical_memory()
        if mb > self.max_mb:
            raise DataError(
                f"substring_dedup: the corpus holds {mb:.0f} MiB of text, over max_mb={self.max_mb:g}; "
                f"its suffix array needs the whole corpus in memory (about {need / 2**30:.1f} GiB). "
                "Raise max_mb if this machine has that memory, or run substring_dedup on fewer sources"
            )
        if have is not None and need > have:
            raise DataError(
                f"substring_dedup: the corpus holds {mb:.0f} MiB of text, and its suffix array needs "
                f"about {need / 2**30:.1f} GiB of memory, more than this machine's "
                f"{have / 2**30:.1f} GiB; run substring_dedup on fewer sources or a larger machine"
            )

    def apply(
        self, docs: Iterable[Document], decision: np.ndarray, stats: Stats, by_source: Counter[str]
    ) -> Iterator[Document]:
        from danlu.data.dedup.substring import cut_spans, spans_by_text

        stats.name = self.name
        cuts = spans_by_text(decision)
        n = 0
        for i, doc in enumerate(docs):
            n = i + 1
            original = doc["text"]
            if i in cuts:
                doc["text"] = cut_spans(original, cuts[i])
            if doc["text"] == original:  # a span inside one multi-byte character cuts nothing
                stats.record(doc, True, None)
                yield doc
                continue
            removed = len(original) - len(doc["text"])
            doc["meta"]["substring_removed_chars"] = removed
            stats.counts.update(
                documents_changed=1,
                spans_removed=len(cuts[i]),
                chars_removed=removed,
                bytes_removed=len(original.encode("utf-8")) - len(doc["text"].encode("utf-8")),
            )
            keep = len(doc["text"].strip()) >= self.min_chars
            stats.record(doc, keep, None if keep else self.reason, original)
            if keep:
                yield doc
            else:
                by_source[removal_key(doc["source"], self.reason)] += 1
        if cuts and max(cuts) >= n:
            raise stale_decision(n, max(cuts) + 1)


def _physical_memory() -> int | None:
    """This machine's RAM in bytes, where the OS says (Linux, macOS)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


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


def _quality_classifier(
    model: str, threshold: float | None = None, keep_top: float | None = None, annotate_only: bool = False
) -> Any:
    from danlu.data.quality_model import quality_classifier_block

    return quality_classifier_block(
        model, threshold=threshold, keep_top=keep_top, annotate_only=annotate_only
    )


def _toxicity(
    max_score: float = 0.01,
    words: list[str] | None = None,
    classifier_model: str | None = None,
    max_classifier_score: float = 0.5,
) -> Any:
    """The word list first (cheap), then a trained toxicity model (.npz) if one is named."""
    from danlu.data.filters import TOXIC_WORDS

    classifier = None
    if classifier_model is not None:
        from danlu.data.toxicity_model import load_toxicity_model

        model = load_toxicity_model(classifier_model)
        classifier = lambda text: float(model.score_many([text])[0])  # noqa: E731
    chosen = TOXIC_WORDS if words is None else words
    return ToxicityFilter(max_score, chosen, classifier, max_classifier_score)


def _edu_score(
    model: str,
    threshold: float | None = None,
    keep_top: float | None = None,
    annotate_only: bool = False,
    device: str = "cpu",
    model_embedder: EmbedderFactory | None = None,
) -> Any:
    from danlu.data.edu import edu_score_block
    from danlu.data.edu_head import edu_head_block, is_edu_head

    if is_edu_head(model):  # a head on model embeddings: the injected embedder makes them
        return edu_head_block(model, model_embedder, threshold, keep_top, annotate_only, device)
    return edu_score_block(model, threshold=threshold, keep_top=keep_top, annotate_only=annotate_only)


def _perplexity(
    model: str,
    max_perplexity: float | None = None,
    keep_bottom: float | None = None,
    annotate_only: bool = False,
    device: str = "cpu",
    model_scorer: ModelScorer | None = None,
) -> Any:
    from danlu.data.quality_model import perplexity_block

    return perplexity_block(
        model,
        max_perplexity=max_perplexity,
        keep_bottom=keep_bottom,
        annotate_only=annotate_only,
        device=device,
        model_scorer=model_scorer,
    )


def _semantic_dedup(threshold: float = 0.7, dim: int = 64, cluster_size: int = 500, seed: int = 0) -> Any:
    from danlu.data.dedup.semantic import SemanticDedupBlock

    return SemanticDedupBlock(threshold, dim, cluster_size, seed)


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
    "toxicity": _toxicity,
    "pii": _pii,
    "decontaminate": _decontaminate,
    "quality_classifier": _quality_classifier,
    "edu_score": _edu_score,
    "perplexity": _perplexity,
    "exact_dedup": ExactDedupBlock,
    "minhash_dedup": MinHashDedupBlock,
    "simhash_dedup": SimHashDedupBlock,
    "substring_dedup": SubstringDedupBlock,
    "semantic_dedup": _semantic_dedup,
    "noise": NoiseAugmenter,
    "eda": EdaAugmenter,
    "paraphrase": ParaphraseAugmenter,
}
# options a recipe may not set: Python objects, not data
_HIDDEN = {
    "classifier",
    "identifier",
    "scrubber",
    "shingling",
    "model_scorer",
    "model_generator",
    "model_embedder",
    "thesaurus",
    "stop_list",
}


def default_pipeline(min_chars: int) -> list[dict[str, Any]]:
    """The basic cleaning every corpus gets: today's data stage, as block specs."""
    return [{"block": "clean"}, {"block": "min_chars", "min_chars": min_chars}, {"block": "exact_dedup"}]


def block_options(name: str) -> list[str]:
    """The options a block accepts in a recipe."""
    sig = _decontam_signature() if name == "decontaminate" else inspect.signature(BLOCKS[name])
    return [p for p in sig.parameters if p not in _HIDDEN and p != "self"]


def build_block(
    spec: dict[str, Any],
    model_scorer: ModelScorer | None = None,
    model_generator: ModelGenerator | None = None,
    model_embedder: EmbedderFactory | None = None,
) -> DocBlock | GlobalBlock:
    """One block from its spec {"block": name, **options}; `model_scorer` goes to the blocks that score
    with a model directory, `model_generator` to those that generate text with one (paraphrase)."""
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
    if "model_scorer" in inspect.signature(BLOCKS[name]).parameters:
        options["model_scorer"] = model_scorer
    if "model_generator" in inspect.signature(BLOCKS[name]).parameters:
        options["model_generator"] = model_generator
    if "model_embedder" in inspect.signature(BLOCKS[name]).parameters:
        options["model_embedder"] = model_embedder
    try:
        made = BLOCKS[name](**options)
    except TypeError as e:
        raise ConfigError(f"data.pipeline: block {name!r}: {e}") from None
    if isinstance(made, GlobalBlock):
        return made
    return DocBlock(name, made)


def build_pipeline(
    specs: Sequence[dict[str, Any]],
    model_scorer: ModelScorer | None = None,
    model_generator: ModelGenerator | None = None,
    model_embedder: EmbedderFactory | None = None,
) -> list[DocBlock | GlobalBlock]:
    """Blocks from a recipe's data.pipeline list (validated up front, before any work)."""
    if not specs:
        raise ConfigError(
            "data.pipeline is empty; list at least one block, or leave it unset for the default"
        )
    blocks = [build_block(s, model_scorer, model_generator, model_embedder) for s in specs]
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
