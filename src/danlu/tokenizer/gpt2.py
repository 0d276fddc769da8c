"""OpenAI's GPT-2 tokenizer through tiktoken ranks, offline.

The ranks ship in the `openai-whisper` sdist on PyPI (whisper/assets/gpt2.tiktoken: 50,256 byte-level
BPE tokens, base64 with their ranks); with GPT-2's split pattern and <|endoftext|> = 50256 they are
exactly GPT-2's vocabulary ("Hello world" -> [15496, 995]). `GPT2Tokenizer` offers the interface the
rest of danlu uses (encode/decode, bos/eos/pad, token bytes) and saves as the ranks file plus
danlu_tokenizer.json with "kind": "tiktoken", which `Tokenizer.load` dispatches here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from danlu.errors import TokenizerError
from danlu.fetch import Source, fetch_source
from danlu.io import atomic_dir
from danlu.tokenizer.ranks import GPT2_PATTERN, checked_ids

RANKS_FILE, META_FILE = "gpt2.tiktoken", "danlu_tokenizer.json"
END_OF_TEXT = "<|endoftext|>"

GPT2_RANKS = Source(
    name="gpt2-tiktoken",
    package="openai-whisper",
    version="20250625",
    filename="openai_whisper-20250625.tar.gz",
    sha256="37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96",
    members=lambda p: p.endswith("whisper/assets/gpt2.tiktoken"),
    read=lambda root: iter(()),
    description="GPT-2's BPE ranks in tiktoken format (PyPI openai-whisper sdist, MIT)",
)


def gpt2_ranks_path() -> Path:
    """The cached gpt2.tiktoken file, downloaded on first use."""
    return next(fetch_source(GPT2_RANKS).rglob(RANKS_FILE))


class GPT2Tokenizer:
    def __init__(self, ranks_path: str | Path):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        self.ranks_path = Path(ranks_path)
        try:
            ranks = load_tiktoken_bpe(str(self.ranks_path))
        except Exception as e:  # base64/format errors surface as assorted exceptions
            raise TokenizerError(f"{self.ranks_path} is not a tiktoken ranks file ({e})") from None
        eot = len(ranks)
        self.special_tokens = {END_OF_TEXT: eot}
        self.enc = tiktoken.Encoding(
            name="gpt2-danlu", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )
        self.vocab_size = eot + 1
        self.bos_id = self.eos_id = self.pad_id = eot
        self._token_bytes = np.zeros(self.vocab_size, dtype=np.int64)
        for token, rank in ranks.items():
            self._token_bytes[rank] = len(token)

    @classmethod
    def default(cls) -> GPT2Tokenizer:
        return cls(gpt2_ranks_path())

    def save(self, path: str | Path) -> Path:
        with atomic_dir(path) as tmp:
            shutil.copyfile(self.ranks_path, tmp / RANKS_FILE)
            meta = {"kind": "tiktoken", "vocab_size": self.vocab_size, "fingerprint": self.fingerprint()}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, meta: dict[str, Any]) -> GPT2Tokenizer:
        tok = cls(Path(path) / RANKS_FILE)
        if meta.get("fingerprint") != tok.fingerprint():
            raise TokenizerError(f"{Path(path) / RANKS_FILE} does not match the fingerprint in {META_FILE}")
        return tok

    def fingerprint(self) -> str:
        return hashlib.sha256(self.ranks_path.read_bytes()).hexdigest()

    def encode(
        self, text: str, bos: bool = False, eos: bool = False, allowed_special: str | Sequence[str] = ()
    ) -> list[int]:
        if allowed_special:
            allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
            ids = self.enc.encode(text, allowed_special=allowed, disallowed_special=())
        else:
            ids = self.enc.encode_ordinary(text)
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(list(texts))

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        ids = checked_ids(ids, self.vocab_size)
        if skip_special:
            ids = [i for i in ids if i != self.eos_id]
        return self.enc.decode(ids, errors="replace")

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each token stands for (0 for <|endoftext|>): the denominator of bits per byte."""
        return self._token_bytes

    def chat_stop_ids(self) -> set[int]:
        return {self.eos_id}

    def apply_chat_template(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False
    ) -> str:
        raise TokenizerError(
            "the GPT-2 tokenizer has no chat template; chat with GPT-2 models in transcript mode"
        )
