"""The tokenizer stage and its statistics."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from danlu.errors import TokenizerError
from danlu.io import read_json_object
from danlu.tokenizer.bpe import META_FILE, Tokenizer
from danlu.tokenizer.config import TokenizerConfig

log = logging.getLogger(__name__)


def train_tokenizer(
    texts: Iterable[str], cfg: TokenizerConfig, out_dir: str | Path, held_out: Iterable[str] | None = None
) -> Tokenizer:
    """Train on texts (the run layer passes the documents' train split) and save to out_dir (atomically).
    With held_out texts (the validation split), their compression is measured and saved in
    danlu_tokenizer.json under "held_out", beside the trainer's name: tokenizer_report reads both."""
    tok = Tokenizer.train(texts, cfg.vocab_size, cfg.min_frequency, cfg.trainer)
    extra: dict[str, Any] = {"trainer": cfg.trainer}
    if held_out is not None:
        extra["held_out"] = tokenizer_stats(tok, held_out)
    tok.save(out_dir, extra)
    log.info(
        "tokenizer (%s): %d tokens, saved to %s%s",
        cfg.trainer,
        tok.vocab_size,
        out_dir,
        f"; held-out {extra['held_out']['bytes_per_token']:.3f} bytes/token" if held_out is not None else "",
    )
    return tok


def tokenizer_report(tok_dir: str | Path) -> dict[str, Any]:
    """The trainer and held-out compression that train_tokenizer saved ({} for a directory without them)."""
    meta = read_json_object(Path(tok_dir) / META_FILE, TokenizerError, "retrain the tokenizer")
    return {k: meta[k] for k in ("trainer", "held_out") if k in meta}


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
