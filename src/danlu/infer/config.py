"""Sampling settings (`sample.*` in a recipe; the generate and chat flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

from danlu.errors import check


@dataclass
class SampleConfig:
    # Prompts sampled at the end of `danlu run`.
    prompts: list[str] = field(default_factory=lambda: ["Romeo.\n"])
    max_new_tokens: int = 120
    temperature: float = 0.8
    # 0 disables top-k filtering.
    top_k: int = 50
    # 1.0 disables nucleus filtering.
    top_p: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.max_new_tokens >= 1, "sample.max_new_tokens", "must be >= 1")
        check(self.temperature >= 0, "sample.temperature", "must be >= 0 (0 is greedy)")
        check(self.top_k >= 0, "sample.top_k", "must be >= 0")
        check(0 < self.top_p <= 1, "sample.top_p", "must be in (0, 1]")
