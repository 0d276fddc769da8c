"""danlu's tokenizer: byte-level BPE trained with HF `tokenizers`, encoded through tiktoken.

A tokenizer directory holds `tokenizer.json` (HF format, loadable by `tokenizers` and transformers'
PreTrainedTokenizerFast) and `danlu_tokenizer.json` (special tokens, chat template, fingerprint, and
whether the tiktoken path is exact for this vocabulary: see ranks.py). The special tokens take ids
0..6, the 256 bytes come next, then the merges in the order they were learned.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from danlu.errors import TokenizerError
from danlu.io import atomic_dir, read_json_object
from danlu.tokenizer import chat
from danlu.tokenizer.config import TRAINERS
from danlu.tokenizer.ranks import (
    GPT2_PATTERN,
    bpe_model_parts,
    checked_ids,
    inconsistent_merges,
    mergeable_ranks,
)
from danlu.tokenizer.subword import SUBWORD_TRAINERS, subword_kind, subword_token_bytes, train_subword

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", chat.END)
# Tokens of the non-causal objectives (danlu.train.objectives), ids right after SPECIAL_TOKENS. Optional
# on load: tokenizers trained before they existed still load, and those objectives then ask for a new one.
N_SENTINELS = 16
OBJECTIVE_TOKENS = (
    "<|mask|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    *(f"<|sentinel_{i}|>" for i in range(N_SENTINELS)),
)
ALL_SPECIAL_TOKENS = SPECIAL_TOKENS + OBJECTIVE_TOKENS
HF_FILE, META_FILE = "tokenizer.json", "danlu_tokenizer.json"
CHAT_TEMPLATE = "danlu-v1"


def _new_hf_bpe() -> Any:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    return hf


def hf_trainer(vocab_size: int, min_frequency: int) -> Any:
    from tokenizers import pre_tokenizers, trainers

    return trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(ALL_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )


class Tokenizer:
    """Byte-level BPE with fixed special tokens; `encode` is exact against HF's ids."""

    def __init__(self, hf: Any):
        self._init_specials(hf)
        vocab, merges = bpe_model_parts(self._json)
        self._ranks = mergeable_ranks(vocab, set(self.special_tokens.values()))
        self.inconsistent = inconsistent_merges(self._ranks, merges)
        if self.inconsistent:
            log.warning(
                "%d merges (e.g. %r) make tiktoken's rank rule differ from HF's BPE: encoding through HF",
                len(self.inconsistent),
                self.inconsistent[:3],
            )
        self._enc = None if self.inconsistent else self._tiktoken()

    def _init_specials(self, hf: Any) -> None:
        self.hf = hf
        self.hf.encode_special_tokens = True  # "<|bos|>" typed in plain text is text, not a special
        self._json = hf.to_str()
        self.special_tokens = {t: hf.token_to_id(t) for t in SPECIAL_TOKENS}
        if list(self.special_tokens.values()) != list(range(len(SPECIAL_TOKENS))):
            raise TokenizerError(
                f"special tokens must have ids 0..{len(SPECIAL_TOKENS) - 1}, got {self.special_tokens}"
            )
        for t in OBJECTIVE_TOKENS:
            if hf.token_to_id(t) is not None:
                self.special_tokens[t] = hf.token_to_id(t)
        self._special_ids = frozenset(self.special_tokens.values())
        self.vocab_size: int = hf.get_vocab_size()
        self.bos_id, self.eos_id, self.pad_id = (self.special_tokens[t] for t in SPECIAL_TOKENS[:3])

    def _tiktoken(self) -> Any:
        import tiktoken

        return tiktoken.Encoding(
            name=f"danlu-{self.fingerprint()[:12]}",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=self._ranks,
            special_tokens=self.special_tokens,
            explicit_n_vocab=self.vocab_size,
        )

    # --- training, saving, loading ------------------------------------------------------------------

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2, trainer: str = "hf"
    ) -> Tokenizer:
        """Train on texts with HF `tokenizers` (trainer "hf", fast) or danlu's own trainer ("danlu",
        danlu.tokenizer.bpe_trainer: pure Python, the same merges and the same tokenizer.json); or a
        byte-level WordPiece or Unigram through `tokenizers` ("wordpiece", "unigram": see subword.py)."""
        if trainer not in TRAINERS:
            raise TokenizerError(f"tokenizer.trainer must be one of {', '.join(TRAINERS)}, got {trainer!r}")
        floor = len(ALL_SPECIAL_TOKENS) + 256
        if vocab_size < floor:  # the trainer would silently keep all 256 bytes and the specials anyway
            raise TokenizerError(
                f"vocab_size={vocab_size} is below {floor} (256 bytes + {len(ALL_SPECIAL_TOKENS)} special "
                "tokens): raise tokenizer.vocab_size"
            )
        # a list goes to the trainer as is (its fast path); a stream is counted on the way through
        counted = _CountingIterator(texts) if not isinstance(texts, list | tuple) else None
        if trainer == "danlu":
            from danlu.tokenizer.bpe_trainer import hf_bpe_from_merges, train_bpe, word_counts

            vocab, merges = train_bpe(
                word_counts(counted or texts), vocab_size, min_frequency, ALL_SPECIAL_TOKENS
            )
            hf = hf_bpe_from_merges(vocab, merges, ALL_SPECIAL_TOKENS)
        elif trainer in SUBWORD_TRAINERS:
            hf = train_subword(trainer, counted or texts, vocab_size, min_frequency, ALL_SPECIAL_TOKENS)
        else:
            hf = _new_hf_bpe()
            hf.train_from_iterator(counted or texts, trainer=hf_trainer(vocab_size, min_frequency))
        if counted is None:
            counted = _CountingIterator(())
            counted.docs, counted.chars = len(texts), sum(len(t) for t in texts)
        if counted.chars == 0:
            raise TokenizerError("the tokenizer's training text is empty; check the data stage's train split")
        got = hf.get_vocab_size()
        if got < vocab_size:
            raise TokenizerError(
                f"the training text ({counted.docs} documents, {counted.chars} characters) supports only "
                f"{got} tokens at min_frequency={min_frequency}, fewer than vocab_size={vocab_size}: "
                "lower tokenizer.vocab_size or add data"
            )
        return SubwordTokenizer(hf) if trainer in SUBWORD_TRAINERS else cls(hf)

    def save(self, path: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        """Write the directory atomically; extra_meta (e.g. the stage's compression report) goes into
        danlu_tokenizer.json beside the fixed fields."""
        with atomic_dir(path) as tmp:
            (tmp / HF_FILE).write_text(self._json, encoding="utf-8")
            meta = self._meta() | (extra_meta or {})
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return Path(path)

    def _meta(self) -> dict[str, Any]:
        return {
            "special_tokens": self.special_tokens,
            "chat_template": CHAT_TEMPLATE,
            "fingerprint": self.fingerprint(),
            "vocab_size": self.vocab_size,
            "tiktoken_exact": not self.inconsistent,
        }

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        kind = _read_meta(path / META_FILE).get("kind") if (path / META_FILE).is_file() else None
        if kind == "pretrained":  # a tokenizer imported with a pretrained model
            from danlu.tokenizer.pretrained import PretrainedTokenizer

            return PretrainedTokenizer.load(path, _read_meta(path / META_FILE))  # type: ignore[return-value]
        if kind == "tiktoken":  # GPT-2's ranks
            from danlu.tokenizer.gpt2 import GPT2Tokenizer

            return GPT2Tokenizer.load(path, _read_meta(path / META_FILE))  # type: ignore[return-value]
        if not (path / HF_FILE).is_file():
            raise TokenizerError(f"{path} is not a tokenizer directory ({HF_FILE} missing); train one first")
        if not (path / META_FILE).is_file():
            raise TokenizerError(f"{path / META_FILE} missing; the tokenizer directory is incomplete")
        meta = _read_meta(path / META_FILE)
        try:
            hf = HFTokenizer.from_str((path / HF_FILE).read_text(encoding="utf-8"))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise TokenizerError(
                f"{path} holds a corrupt tokenizer ({str(e).splitlines()[0]}); retrain it"
            ) from None
        tok = SubwordTokenizer(hf) if kind in SUBWORD_TRAINERS else cls(hf)
        if meta.get("fingerprint") != tok.fingerprint():
            raise TokenizerError(
                f"{path / HF_FILE} does not match the fingerprint in {META_FILE}; it was modified"
            )
        return tok

    def fingerprint(self) -> str:
        return hashlib.sha256(self._json.encode("utf-8")).hexdigest()

    # --- encoding and decoding ----------------------------------------------------------------------

    def encode(
        self, text: str, bos: bool = False, eos: bool = False, allowed_special: str | Sequence[str] = ()
    ) -> list[int]:
        """Token ids of `text`. Special-token strings in it stay plain text unless listed in
        allowed_special ("all" for every one)."""
        if allowed_special:
            allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
            ids = self._encode_with_specials(text, allowed)
        elif self._enc is not None:
            ids = self._enc.encode_ordinary(text)
        else:
            ids = self.hf.encode(text, add_special_tokens=False).ids
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def _encode_with_specials(self, text: str, allowed: set[str]) -> list[int]:
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise TokenizerError(
                f"unknown special tokens {sorted(unknown)}; known: {', '.join(self.special_tokens)}"
            )
        if self._enc is not None:
            return self._enc.encode(text, allowed_special=allowed, disallowed_special=())
        ids: list[int] = []
        pos = 0
        while pos < len(text):  # split at the earliest allowed special, encode the text between
            hits = [(text.find(s, pos), s) for s in allowed]
            hits = [(i, s) for i, s in hits if i >= 0]
            if not hits:
                break
            i, s = min(hits)
            ids += [*self.encode(text[pos:i]), self.special_tokens[s]]
            pos = i + len(s)
        return ids + self.encode(text[pos:])

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        if self._enc is not None:
            return self._enc.encode_ordinary_batch(texts, num_threads=num_threads or 8)
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        ids = checked_ids(ids, self.vocab_size)
        if skip_special:
            ids = [i for i in ids if i not in self._special_ids]
        if self._enc is not None:
            return self._enc.decode(ids, errors="replace")
        return self.hf.decode(ids, skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each token stands for (0 for specials): the denominator of bits per byte."""
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for b, i in self._ranks.items():
            out[i] = len(b)
        return out

    def id_to_token(self, i: int) -> str | None:
        return self.hf.id_to_token(i)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    # --- chat ---------------------------------------------------------------------------------------

    def apply_chat_template(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False
    ) -> str:
        return chat.render(messages, SPECIAL_TOKENS[0], add_generation_prompt)

    def chat_stop_ids(self) -> set[int]:
        """Tokens that end an assistant turn."""
        return {self.eos_id, self.special_tokens[chat.END]}

    def encode_chat(self, messages: Sequence[dict[str, Any]]) -> tuple[list[int], list[int]]:
        """(ids, loss mask): the mask is 1 on the assistant's words and its <|end|>, 0 elsewhere."""
        chat.validate_messages(messages)
        ids, mask = [self.bos_id], [0]
        end = self.special_tokens[chat.END]
        for m in messages:
            body = [*self.encode(m["content"]), end]
            learn = int(m["role"] == "assistant")
            ids += [self.special_tokens[chat.role_token(m["role"])], *body]
            mask += [0] + [learn] * len(body)
        return ids, mask


class SubwordTokenizer(Tokenizer):
    """A byte-level WordPiece or Unigram (danlu.tokenizer.subword) with danlu's special tokens and chat
    template: the same interface and directory as the BPE, "kind" naming the model; encodes through HF."""

    def __init__(self, hf: Any):
        from tokenizers import Tokenizer as HFTokenizer

        # a Unigram's scores reparse one ulp off (-7.3752942957213685 -> ...368): one round trip reaches
        # the fixed point, so the saved file's fingerprint is what loading it gives
        self._init_specials(HFTokenizer.from_str(hf.to_str()))
        kind = subword_kind(self._json)
        if kind is None:
            raise TokenizerError("the tokenizer.json holds neither a WordPiece nor a Unigram model")
        self.kind: str = kind
        self.inconsistent: list[str] = []
        self._enc = None
        self._token_bytes = subword_token_bytes(hf, set(self._special_ids))

    def _meta(self) -> dict[str, Any]:
        meta = super()._meta() | {"kind": self.kind}
        del meta["tiktoken_exact"]
        return meta

    def token_bytes(self) -> np.ndarray:
        return self._token_bytes


def _read_meta(path: Path) -> dict[str, Any]:
    return read_json_object(path, TokenizerError, "retrain the tokenizer")


class _CountingIterator:
    """Passes texts through to the trainer while counting them, so empty data gets a clear error."""

    def __init__(self, texts: Iterable[str]):
        self._it = iter(texts)
        self.docs = self.chars = 0

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self) -> str:
        text = next(self._it)
        self.docs += 1
        self.chars += len(text)
        return text
