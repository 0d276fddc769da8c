"""From a trained HF byte-level BPE to tiktoken's mergeable ranks, with a check that both encode alike.

HF's BPE applies *listed merge pairs* by priority; tiktoken merges *any* adjacent pair whose concatenation
is a token, by that token's rank. With rank = token id (merges are numbered in the order they were
learned) the two agree as long as every token is reached, by tiktoken's rule, through the very pair HF
lists for it. That can fail: with merges (b,c), (a,b), (ab,c) tiktoken turns "abc" into one token via
a+bc while HF stops at [a, bc]. `inconsistent_merges` replays tiktoken's rule on every token's bytes
with only lower ranks allowed and lists the tokens where it ends elsewhere (as well as merges out of id
order and tokens no merge makes, for tokenizer.json files not written by our trainer); a tokenizer with
any such token encodes through HF instead.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

from danlu.errors import TokenizerError

# GPT-2's pre-tokenization regex, the one HF's ByteLevel pre-tokenizer applies (use_regex=True).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@functools.cache
def byte_decoder() -> dict[str, int]:
    """HF ByteLevel's printable stand-in character of each byte, inverted (the GPT-2 byte map)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = dict(zip(printable, printable, strict=True))
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + n
            n += 1
    return {chr(c): b for b, c in chars.items()}


def token_to_bytes(token: str) -> bytes:
    dec = byte_decoder()
    return bytes(dec[ch] for ch in token)


def bpe_model_parts(hf_json: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of the BPE model inside a tokenizer.json string."""
    model: dict[str, Any] = json.loads(hf_json)["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges  # type: ignore[return-value]


def mergeable_ranks(vocab: dict[str, int], special_ids: set[int]) -> dict[bytes, int]:
    return {token_to_bytes(tok): i for tok, i in vocab.items() if i not in special_ids}


def _rank_bpe(piece: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    """tiktoken's merge rule on `piece`, using only tokens of rank < below."""
    parts = [piece[i : i + 1] for i in range(len(piece))]
    get = ranks.get
    while len(parts) > 1:
        pair_ranks = [get(parts[i] + parts[i + 1], below) for i in range(len(parts) - 1)]
        best_rank = min(pair_ranks)
        if best_rank >= below:
            break
        best = pair_ranks.index(best_rank)  # the leftmost of equal ranks, as tiktoken does
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def inconsistent_merges(ranks: dict[bytes, int], merges: list[tuple[str, str]]) -> list[str]:
    """Tokens where tiktoken's rank rule and HF's listed merges could part ways: a token reached through
    another pair than its listed merge, a merge whose token id is out of merge order (HF ranks merges by
    list position, tiktoken by id), and a multi-byte token that no merge makes (HF never emits it)."""
    dec = byte_decoder()
    bad = []
    made: set[bytes] = set()
    last_rank = -1
    for left, right in merges:
        a, b = bytes(dec[c] for c in left), bytes(dec[c] for c in right)
        merged = a + b
        made.add(merged)
        rank = ranks.get(merged, -1)
        in_order, last_rank = rank > last_rank, max(last_rank, rank)
        if not in_order:
            bad.append(left + right)
        elif len(merged) > 2 and _rank_bpe(merged, ranks, rank) != [a, b]:
            bad.append(left + right)  # (two bytes can only be joined by their own merge)
    enc = {b: c for c, b in byte_decoder().items()}
    bad += ["".join(enc[x] for x in t) for t in ranks if len(t) > 1 and t not in made]
    return bad


def checked_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    """ids as ints, refusing any outside the vocabulary (decoding them would fail obscurely)."""
    out = [int(i) for i in ids]
    bad = [i for i in out if not 0 <= i < vocab_size]
    if bad:
        raise TokenizerError(f"token id {bad[0]} is outside the vocabulary of {vocab_size}")
    return out
