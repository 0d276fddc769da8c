"""Shared fixtures. Tests marked needs_data read the real corpus, fetched once into the danlu cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chat_words import VOCAB


@pytest.fixture(scope="session")
def shakespeare_docs() -> list[dict]:
    from danlu.data.sources import read_source

    return list(read_source("shakespeare"))


@pytest.fixture(scope="session")
def shakespeare_text(shakespeare_docs) -> str:
    return "\n\n".join(d["text"] for d in shakespeare_docs)


WORDS = VOCAB


@pytest.fixture(scope="session")
def word_lines():
    """A factory of seeded random lines of words: a small corpus with real repetition to learn."""
    import random

    def make(n: int, seed: int = 0, min_words: int = 4, max_words: int = 12) -> list[str]:
        rng = random.Random(seed)
        return [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(n)
        ]

    return make


@pytest.fixture(scope="session")
def tiny_packed(tmp_path_factory, word_lines) -> tuple[Path, Path]:
    """(tokens dir, tokenizer dir) of a tiny packed corpus of random word sentences."""
    from danlu.data.config import DataConfig
    from danlu.data.documents import document_texts, run_data
    from danlu.data.pack import run_pack
    from danlu.tokenizer import train_tokenizer
    from danlu.tokenizer.config import TokenizerConfig

    root = tmp_path_factory.mktemp("tiny")
    corpus = root / "corpus.jsonl"
    lines = []
    for i in range(120):
        sentences = [s.capitalize() + "." for s in word_lines(6, seed=i)]
        lines.append(json.dumps({"text": " ".join(sentences)}))
    corpus.write_text("\n".join(lines) + "\n")
    run_data(DataConfig(sources=[str(corpus)], val_fraction=0.1), root / "data")
    tok = train_tokenizer(document_texts(root / "data"), TokenizerConfig(vocab_size=320), root / "tokenizer")
    run_pack(root / "data", tok, root / "tokens")
    return root / "tokens", root / "tokenizer"
