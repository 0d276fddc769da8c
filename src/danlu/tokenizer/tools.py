"""The tokenizer stage and its statistics."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from danlu.tokenizer.bpe import Tokenizer
from danlu.tokenizer.config import TokenizerConfig

log = logging.getLogger(__name__)


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig, out_dir: str | Path) -> Tokenizer:
    """Train on texts (the run layer passes the documents' train split) and save to out_dir (atomically)."""
    tok = Tokenizer.train(texts, cfg.vocab_size, cfg.min_frequency, cfg.trainer)
    tok.save(out_dir)
    log.info("tokenizer: %d tokens, saved to %s", tok.vocab_size, out_dir)
    return tok


def tokenizer_stats(tok: Tokenizer, texts: Iterable[str]) -> dict[str, Any]:
    """Compression (UTF-8 bytes per token) and vocabulary use on some texts."""
    texts = list(texts)
    ids = tok.encode_batch(texts)
    n_tokens = sum(len(x) for x in ids)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_chars = sum(len(t) for t in texts)
    used = np.unique(np.concatenate([np.asarray(x, dtype=np.int64) for x in ids])) if n_tokens else []
    return {
        "vocab_size": tok.vocab_size,
        "texts": len(texts),
        "bytes": n_bytes,
        "characters": n_chars,
        "tokens": n_tokens,
        "bytes_per_token": n_bytes / max(n_tokens, 1),
        "chars_per_token": n_chars / max(n_tokens, 1),
        "vocab_used": len(used) / tok.vocab_size,
    }


def encode_text(tok: Tokenizer, text: str) -> list[int]:
    """The ids of plain text, as `danlu tokenizer encode` prints them (special-token strings stay text)."""
    return tok.encode(text)
