"""The data stage's settings (`data.*` in a recipe)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from danlu.errors import check


@dataclass
class DataConfig:
    # Registry names ("shakespeare", "chitchat") or local paths (.txt/.jsonl/.parquet files or folders).
    sources: list[str] = field(default_factory=lambda: ["shakespeare", "chitchat"])
    # Fraction of documents held out (whole documents) for validation.
    val_fraction: float = 0.02
    # Documents shorter than this many characters after cleaning are dropped.
    min_chars: int = 20
    # Seed for the train/validation split.
    seed: int = 1337
    # Blocks to run, in order: [{block: normalize}, {block: minhash_dedup, threshold: 0.8}, ...] (see
    # danlu.data.pipeline.BLOCKS). None: the basic pipeline [clean, min_chars, exact_dedup].
    pipeline: list[dict[str, Any]] | None = None
    # Where the pipeline runs: "local" (a process pool) or "ray" (a Ray cluster, see ray_address).
    executor: str = "local"
    # Worker processes of the local executor (0: one per CPU core); also Ray's CPUs for a local instance.
    workers: int = 1
    # Ray cluster address ("auto", "ray://host:10001"); None starts a local Ray instance.
    ray_address: str | None = None
    # Input shard size: at most this many documents and about this many MB of text per shard.
    shard_docs: int = 5000
    shard_mb: float = 64.0
    # How the pack stage mixes sources in the train split (danlu.data.mixing); None: corpus order.
    # {weights: {shakespeare: 0.7, chitchat: 0.3}} or {alpha: 0.5} (p_i ~ tokens_i^alpha), and optional
    # max_epochs (repeats allowed per source), tokens (budget; default: the train split's own size),
    # phases [{until: 0.7, weights: {...}}, ..., {until: 1.0, weights: {...}}] (fractions of the
    # budget, trained in order), order {by: length | META_KEY, descending: false} (a curriculum: each
    # phase's documents sorted by a score, e.g. edu_score; danlu.data.curriculum) and seed (default:
    # data.seed). The validation split is never mixed. danlu.data.doremi derives weights from losses.
    mix: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check(len(self.sources) > 0, "data.sources", "name at least one source")
        if self.mix is not None:
            from danlu.data.mixing import parse_mix  # numpy stays out of a plain config import

            parse_mix(self.mix, self.sources, self.seed)
        check(
            self.executor in ("local", "ray"), "data.executor", f"must be local or ray, got {self.executor!r}"
        )
        check(self.workers >= 0, "data.workers", f"must be >= 0 (0: one per core), got {self.workers}")
        check(self.shard_docs >= 1, "data.shard_docs", f"must be >= 1, got {self.shard_docs}")
        check(self.shard_mb > 0, "data.shard_mb", f"must be > 0, got {self.shard_mb}")
        check(
            0.0 < self.val_fraction < 0.5,
            "data.val_fraction",
            f"must be in (0, 0.5), got {self.val_fraction}",
        )
        check(self.min_chars >= 0, "data.min_chars", f"must be >= 0, got {self.min_chars}")
