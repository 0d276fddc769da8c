"""The tokenizer stage's settings (`tokenizer.*` in a recipe)."""

from __future__ import annotations

from dataclasses import dataclass

from danlu.errors import check


@dataclass
class TokenizerConfig:
    # Vocabulary size including the 256 byte tokens and the special tokens.
    vocab_size: int = 4096
    # A pair must occur at least this often to be merged.
    min_frequency: int = 2
    # Who learns the merges: "hf" (HF tokenizers, fast) or "danlu" (danlu.tokenizer.bpe_trainer, pure
    # Python, meant to be read). Both write the same tokenizer.json from the same text.
    trainer: str = "hf"

    def __post_init__(self) -> None:
        check(
            300 <= self.vocab_size <= 2**32 - 1,
            "tokenizer.vocab_size",
            f"must be in [300, 2^32), got {self.vocab_size}",
        )
        check(
            self.trainer in ("hf", "danlu"), "tokenizer.trainer", f"must be hf or danlu, got {self.trainer!r}"
        )
        check(self.min_frequency >= 1, "tokenizer.min_frequency", f"must be >= 1, got {self.min_frequency}")
