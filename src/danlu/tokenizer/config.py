"""The tokenizer stage's settings (`tokenizer.*` in a recipe)."""

from __future__ import annotations

from dataclasses import dataclass

from danlu.errors import check

TRAINERS = ("hf", "danlu", "wordpiece", "unigram")


@dataclass
class TokenizerConfig:
    # Vocabulary size including the 256 byte tokens and the special tokens.
    vocab_size: int = 4096
    # A pair must occur at least this often to be merged.
    min_frequency: int = 2
    # Who learns the vocabulary: "hf" (HF tokenizers' BPE, fast) or "danlu" (danlu.tokenizer.bpe_trainer,
    # pure Python, meant to be read), which write the same tokenizer.json from the same text; or, to
    # compare with them, a byte-level "wordpiece" or "unigram" through HF tokenizers (subword.py; Unigram
    # ignores min_frequency). The tokenizer stage reports each one's bytes per token on the val split.
    trainer: str = "hf"

    def __post_init__(self) -> None:
        check(
            300 <= self.vocab_size <= 2**32 - 1,
            "tokenizer.vocab_size",
            f"must be in [300, 2^32), got {self.vocab_size}",
        )
        check(
            self.trainer in TRAINERS,
            "tokenizer.trainer",
            f"must be one of {', '.join(TRAINERS)}, got {self.trainer!r}",
        )
        check(self.min_frequency >= 1, "tokenizer.min_frequency", f"must be >= 1, got {self.min_frequency}")
