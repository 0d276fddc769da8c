"""WordPiece and Unigram vocabularies through HF `tokenizers`, byte-level like danlu's BPE, to compare with it.

Both run on the BPE's GPT-2 byte-level pre-tokenization and no normalizer, so any string becomes
characters of the 256-character byte alphabet, and decoding gives back the exact bytes as long as every
byte stays reachable in the vocabulary. That is what the two trainers below make sure of:

- WordPiece: HF's WordPieceTrainer (it learns the vocabulary with BPE merges over the words) and
  greedy longest-match-first encoding within each pre-token. The pieces after a word's first carry
  CONTINUE, a character outside the byte alphabet, so decoding strips it without ambiguity (BERT's "##"
  is itself a byte-level string: the text "##" would lose it). The trainer keeps only the continuation
  bytes it saw, and one missing would turn a whole word into the unknown token, so they are added, the
  last-learned tokens making room within vocab_size; the unknown token is then never produced.
- Unigram: HF's UnigramTrainer (SentencePiece's EM with pruning) and Viterbi segmentation; the trainer
  keeps every character of the initial alphabet, so no byte is unknown. `min_frequency` does not apply.

Neither encodes through tiktoken's rank rule; danlu encodes them through HF.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from danlu.errors import TokenizerError
from danlu.tokenizer.ranks import token_to_bytes

SUBWORD_TRAINERS = ("wordpiece", "unigram")
CONTINUE = "\u25b8"  # "▸": not one of the byte alphabet's characters
UNK = "<|unk|>"  # WordPiece's model needs one; with every byte reachable it is never produced
# WordPiece turns a longer pre-token into UNK; byte-exact decoding needs no such limit
MAX_WORD_CHARS = 1_000_000
_MODEL_KIND = {"WordPiece": "wordpiece", "Unigram": "unigram"}


def subword_floor(kind: str, n_special: int) -> int:
    """The smallest vocabulary that keeps every byte reachable."""
    return n_special + 1 + 512 if kind == "wordpiece" else n_special + 256


def subword_kind(hf_json: str) -> str | None:
    """ "wordpiece" or "unigram" for a tokenizer.json of that model, None for any other."""
    return _MODEL_KIND.get(json.loads(hf_json)["model"]["type"])


def train_subword(
    kind: str, texts: Iterable[str], vocab_size: int, min_frequency: int, specials: Sequence[str]
) -> Any:
    """An HF tokenizer of `kind` trained on texts, the specials taking ids 0..len(specials)-1."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    floor = subword_floor(kind, len(specials))
    if vocab_size < floor:
        raise TokenizerError(
            f"vocab_size={vocab_size} is below {floor}, the smallest {kind} vocabulary that keeps every "
            "byte reachable: raise tokenizer.vocab_size"
        )
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if kind == "wordpiece":
        hf = HFTokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix=CONTINUE))
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[*specials, UNK],
            initial_alphabet=alphabet,
            continuing_subword_prefix=CONTINUE,
            show_progress=False,
        )
        hf.decoder = decoders.Sequence([decoders.Replace(CONTINUE, ""), decoders.ByteLevel()])
    elif kind == "unigram":
        hf = HFTokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=list(specials),
            initial_alphabet=alphabet,
            show_progress=False,
        )
        hf.decoder = decoders.ByteLevel()
    else:
        raise TokenizerError(f"unknown subword trainer {kind!r}; choose one of {', '.join(SUBWORD_TRAINERS)}")
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.train_from_iterator(texts, trainer=trainer)
    if kind == "wordpiece":
        hf.model = models.WordPiece(
            _with_every_continuation(
                hf.get_vocab(with_added_tokens=False), alphabet, len(specials) + 1, vocab_size
            ),
            unk_token=UNK,
            continuing_subword_prefix=CONTINUE,
            max_input_chars_per_word=MAX_WORD_CHARS,
        )
    vocab = hf.get_vocab(with_added_tokens=False)
    missing = [c for c in alphabet if c not in vocab]
    if missing:  # the decoding guarantee rests on this
        raise TokenizerError(f"the {kind} trainer dropped {len(missing)} bytes of the alphabet; report it")
    return hf


def _with_every_continuation(
    vocab: dict[str, int], alphabet: list[str], n_fixed: int, vocab_size: int
) -> dict[str, int]:
    """The vocabulary with CONTINUE + byte for every byte, at most vocab_size tokens: the latest
    multi-byte tokens give way to the missing continuations (the specials and UNK, ids below n_fixed,
    stay)."""
    missing = [CONTINUE + c for c in sorted(alphabet) if CONTINUE + c not in vocab]
    base = set(alphabet) | {CONTINUE + c for c in alphabet}
    order = sorted(vocab, key=vocab.__getitem__)
    removable = [t for t in order[n_fixed:] if t not in base]
    n_drop = max(0, len(order) + len(missing) - vocab_size)
    if n_drop > len(removable):  # unreachable above subword_floor; kept as the invariant's guard
        raise TokenizerError(f"a WordPiece vocabulary of {vocab_size} cannot hold every continuation byte")
    drop = set(removable[len(removable) - n_drop :]) if n_drop else set()
    kept = [t for t in order if t not in drop] + missing
    return {t: i for i, t in enumerate(kept)}


def subword_token_bytes(hf: Any, special_ids: set[int]) -> np.ndarray:
    """UTF-8 bytes each token stands for (0 for the specials and UNK)."""
    out = np.zeros(hf.get_vocab_size(), dtype=np.int64)
    for token, i in hf.get_vocab(with_added_tokens=False).items():
        if i not in special_ids and token != UNK:
            out[i] = len(token_to_bytes(token.removeprefix(CONTINUE)))
    return out
