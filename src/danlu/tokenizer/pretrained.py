"""A tokenizer that came with a pretrained model (imported from GGUF or a Hugging Face directory).

It wraps an HF `tokenizers` byte-level BPE with the model's own special tokens and chat template
(a Jinja template, rendered as `transformers` renders it), and offers the interface danlu's own
`Tokenizer` offers to generation, chat and evaluation: encode/decode, bos/eos/pad ids, token bytes,
apply_chat_template, encode_chat and chat_stop_ids. Saved as tokenizer.json plus
danlu_tokenizer.json with "kind": "pretrained"; `Tokenizer.load` dispatches here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from danlu.errors import MissingExtra, TokenizerError
from danlu.io import atomic_dir
from danlu.tokenizer.ranks import checked_ids

HF_FILE, META_FILE = "tokenizer.json", "danlu_tokenizer.json"


def byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character of each byte, inverted: character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class PretrainedTokenizer:
    def __init__(self, hf: Any, meta: dict[str, Any]):
        self.hf = hf
        self.meta = meta
        self.special_tokens: dict[str, int] = dict(meta["special_tokens"])
        self.vocab_size: int = hf.get_vocab_size(with_added_tokens=True)
        self.bos_id: int = meta["bos_id"]
        self.eos_id: int = meta["eos_id"]
        self.pad_id: int = meta.get("pad_id", self.eos_id)
        self.chat_template: str | None = meta.get("chat_template")
        self._compiled_template: tuple[str, Any] | None = None

    # --- building, saving, loading -----------------------------------------------------------------

    @classmethod
    def from_bpe(
        cls,
        tokens: Sequence[str],
        merges: Sequence[str],
        special: Sequence[str],
        *,
        bos: str,
        eos: str,
        pad: str | None = None,
        digits_split: bool = False,
        chat_template: str | None = None,
        chat_stop: Sequence[str] = (),
    ) -> PretrainedTokenizer:
        """A byte-level BPE from its vocabulary (token strings, id = index) and merges ("a b")."""
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise TokenizerError("the vocabulary lists a token twice; the tokenizer data is corrupt")
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        hf = Tokenizer(models.BPE(vocab, pairs, fuse_unk=False))
        steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        if digits_split:  # SmolLM's "smollm" pre-tokenizer: every digit its own word first
            steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
        hf.pre_tokenizer = pre_tokenizers.Sequence(steps)
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
        for name in (bos, eos, pad or eos, *chat_stop):
            if name not in vocab:
                raise TokenizerError(f"special token {name!r} is not in the vocabulary")
        meta = {
            "kind": "pretrained",
            "special_tokens": {t: vocab[t] for t in special},
            "bos_id": vocab[bos],
            "eos_id": vocab[eos],
            "pad_id": vocab[pad or eos],
            "chat_template": chat_template,
            "chat_stop": [vocab[t] for t in chat_stop],
        }
        return cls(hf, meta)

    def save(self, path: str | Path) -> Path:
        with atomic_dir(path) as tmp:
            text = self.hf.to_str()
            (tmp / HF_FILE).write_text(text, encoding="utf-8")
            meta = self.meta | {"vocab_size": self.vocab_size, "fingerprint": _sha(text)}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, meta: dict[str, Any]) -> PretrainedTokenizer:
        from tokenizers import Tokenizer

        text = (Path(path) / HF_FILE).read_text(encoding="utf-8")
        if meta.get("fingerprint") != _sha(text):
            raise TokenizerError(f"{Path(path) / HF_FILE} does not match the fingerprint in {META_FILE}")
        return cls(Tokenizer.from_str(text), meta)

    def fingerprint(self) -> str:
        return _sha(self.hf.to_str())

    # --- encoding and decoding ---------------------------------------------------------------------

    def encode(
        self, text: str, bos: bool = False, eos: bool = False, allowed_special: str | Sequence[str] = ()
    ) -> list[int]:
        """Ids of text; special tokens written in it are parsed only with allowed_special="all"."""
        if allowed_special and allowed_special != "all":
            raise TokenizerError(
                'a pretrained tokenizer parses either all special tokens or none: pass "all"'
            )
        self.hf.encode_special_tokens = not allowed_special
        ids = self.hf.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        self.hf.encode_special_tokens = True
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        ids = checked_ids(ids, self.vocab_size)
        return self.hf.decode(ids, skip_special_tokens=skip_special)

    @cached_property
    def _token_bytes(self) -> np.ndarray:
        decode = byte_decoder()
        out = np.zeros(self.vocab_size, dtype=np.int64)
        specials = set(self.special_tokens.values())
        for token, i in self.hf.get_vocab(with_added_tokens=True).items():
            if i not in specials:  # each character of a byte-level token stands for one byte
                out[i] = len(token) if all(ch in decode for ch in token) else len(token.encode("utf-8"))
        return out

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each token stands for (0 for specials): the denominator of bits per byte."""
        return self._token_bytes

    def id_to_token(self, i: int) -> str | None:
        return self.hf.id_to_token(i)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    # --- chat --------------------------------------------------------------------------------------

    def apply_chat_template(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False
    ) -> str:
        """The model's own template, rendered in a sandbox as transformers renders chat templates."""
        if not self.chat_template:
            raise TokenizerError("this tokenizer has no chat template; use a chat model or transcript mode")
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise MissingExtra(
                "the chat template of an imported model needs the jinja2 package: pip install 'danlu[interop]'"
            ) from None

        # Compiled once per template string: compiling costs milliseconds and SFT data renders each
        # conversation several times (prefix by prefix).
        if self._compiled_template is None or self._compiled_template[0] != self.chat_template:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            self._compiled_template = (self.chat_template, env.from_string(self.chat_template))
        return self._compiled_template[1].render(
            messages=list(messages), add_generation_prompt=add_generation_prompt
        )

    def chat_stop_ids(self) -> set[int]:
        """Tokens that end an assistant turn."""
        return {self.eos_id, *self.meta.get("chat_stop", [])}

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], max_tokens: int | None = None
    ) -> tuple[list[int], list[int]]:
        """(ids, loss mask): 1 on each assistant message's rendered text after the prompt that precedes it.

        With max_tokens, rendering stops after the turn that takes the ids past it (each turn renders
        the whole prefix, so a chat of hundreds of turns costs seconds): the result is then the
        conversation's first tokens, more than max_tokens of them."""
        ids: list[int] = []
        mask: list[int] = []
        before_text, before = "", []
        for i, m in enumerate(messages):
            upto_text = self.apply_chat_template(messages[: i + 1], False)
            upto = self._encode_after(before_text, before, upto_text)
            if upto[: len(before)] != before:
                raise TokenizerError("the chat template does not render conversations prefix by prefix")
            new = upto[len(before) :]
            head = 0
            if m["role"] == "assistant":
                prompt_text = self.apply_chat_template(messages[:i], True)
                head = len(self._encode_after(before_text, before, prompt_text)) - len(before)
            ids += new
            mask += [0] * head + [int(m["role"] == "assistant")] * (len(new) - head)
            before_text, before = upto_text, upto
            if max_tokens is not None and len(ids) > max_tokens:
                break
        return ids, mask

    def _encode_after(self, before_text: str, before: list[int], text: str) -> list[int]:
        """encode(text, allowed_special="all") where `before` is that of its prefix before_text.

        When the rest starts with a special token and no special token's spelling straddles the
        boundary, the tokenizer splits there before anything else runs, so the ids are `before` plus
        the rest's own: each turn's new text is encoded once, not every prefix of the conversation again."""
        rest = text[len(before_text) :]
        if before_text and text.startswith(before_text) and self._splits_at(text, len(before_text)):
            return before + self.encode(rest, allowed_special="all")
        return self.encode(text, allowed_special="all")

    @cached_property
    def _added_texts(self) -> tuple[str, ...]:
        """Every added token's spelling: the tokenizer splits text at these before anything else."""
        return tuple(t.content for t in self.hf.get_added_tokens_decoder().values())

    def _splits_at(self, text: str, at: int) -> bool:
        specials = self._added_texts
        if not any(text.startswith(s, at) for s in specials):
            return False
        return not any(
            text.find(s, max(0, at - len(s) + 1), at + len(s) - 1) != -1 for s in specials if len(s) > 1
        )


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
