"""danlu's own byte-level BPE trainer: the algorithm spelled out, producing HF `tokenizers`' merges.

1. Pre-tokenize each text with the GPT-2 pattern and map its UTF-8 bytes to the printable characters
   of the byte-level alphabet (as HF's ByteLevel pre-tokenizer does); count the distinct words.
2. The vocabulary starts with the special tokens, then the 256 byte characters sorted by code point.
3. Count every adjacent pair of symbols over the words, weighted by word frequency, and remember
   which words hold each pair.
4. Repeatedly merge the most frequent pair (ties: the smallest (left id, right id)), rewriting only
   the words that hold it and updating the pair counts from the changes each rewrite reports, until
   the vocabulary is full or no pair occurs `min_frequency` times.

Step 4 keeps HF's bookkeeping so that the merges come out the same, including its corner cases: a
priority queue whose entries may hold stale (too high) counts, re-queued when popped; a merge whose
string already exists (ab+c after a+bc) reuses that token and takes no new id; and the written merge
list keeps the last rank of a pair merged twice. Pure Python (the regex pre-tokenization is the
`regex` module's C); benchmarks/bpe_trainer.py times it beside HF's. HF stays the default trainer.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

from danlu.tokenizer.ranks import GPT2_PATTERN

Pair = tuple[int, int]


@cache
def byte_alphabet() -> tuple[str, ...]:
    """The printable character GPT-2's byte-level BPE uses for each byte 0..255."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return tuple(chars[b] for b in range(256))


def word_counts(texts: Iterable[str]) -> Counter[str]:
    """Distinct pre-tokenized words (in byte-level characters) and how often each occurs."""
    import regex

    pattern, alphabet = regex.compile(GPT2_PATTERN), byte_alphabet()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(pattern.findall(text))
    return Counter({"".join(alphabet[b] for b in w.encode("utf-8")): c for w, c in counts.items()})


def _merge_word(word: list[int], a: int, b: int, new: int) -> list[tuple[Pair, int]]:
    """Replace each (a, b) in word, left to right, with new; return the pair-count changes."""
    changes: list[tuple[Pair, int]] = []
    i = 0
    while i < len(word):
        if word[i] == a and i + 1 < len(word) and word[i + 1] == b:
            if i > 0:
                changes += [((word[i - 1], a), -1), ((word[i - 1], new), 1)]
            word[i : i + 2] = [new]
            if i < len(word) - 1:
                changes += [((b, word[i + 1]), -1), ((new, word[i + 1]), 1)]
        i += 1
    return changes


class _Queue:
    """Max-queue of (count, pair) with HF's order: higher count first, then the smaller pair."""

    def __init__(self) -> None:
        self.heap: list[tuple[int, Pair, int, set[int]]] = []
        self.seq = 0

    def push(self, count: int, pair: Pair, where: set[int]) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (-count, pair, self.seq, where))

    def pop(self) -> tuple[int, Pair, set[int]]:
        neg, pair, _, where = heapq.heappop(self.heap)
        return -neg, pair, where


def train_bpe(
    counts: dict[str, int], vocab_size: int, min_frequency: int, special_tokens: Sequence[str]
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab: token -> id, merges in rank order) from word counts, as HF's BpeTrainer computes them."""
    id_to_tok: list[str] = []
    tok_to_id: dict[str, int] = {}
    for tok in [*special_tokens, *sorted(byte_alphabet())]:
        if tok not in tok_to_id:
            tok_to_id[tok] = len(id_to_tok)
            id_to_tok.append(tok)

    words = [[tok_to_id[c] for c in w] for w in counts]
    freq = list(counts.values())
    pair_counts: dict[Pair, int] = {}
    where: dict[Pair, set[int]] = {}
    for i, w in enumerate(words):
        for pair in itertools.pairwise(w):
            pair_counts[pair] = pair_counts.get(pair, 0) + freq[i]
            where.setdefault(pair, set()).add(i)
    queue = _Queue()
    for pair, ws in where.items():
        if pair_counts[pair] > 0:
            queue.push(pair_counts[pair], pair, ws)

    merges: list[Pair] = []
    while len(tok_to_id) < vocab_size and queue.heap:
        count, pair, pos = queue.pop()
        if count != pair_counts[pair]:  # stale: queue it again with its count of now
            queue.push(pair_counts[pair], pair, pos)
            continue
        if count < 1 or count < min_frequency:
            break
        text = id_to_tok[pair[0]] + id_to_tok[pair[1]]
        new = tok_to_id.setdefault(text, len(id_to_tok))
        if new == len(id_to_tok):
            id_to_tok.append(text)
        merges.append(pair)
        touched: dict[Pair, set[int]] = {}
        for i in pos:
            for p, change in _merge_word(words[i], pair[0], pair[1], new):
                pair_counts[p] = pair_counts.get(p, 0) + change * freq[i]
                if change > 0:
                    touched.setdefault(p, set()).add(i)
        for p, ws in touched.items():
            if pair_counts[p] > 0:
                queue.push(pair_counts[p], p, ws)

    last_rank = {p: r for r, p in enumerate(merges)}  # a pair merged twice keeps its later rank
    ordered = sorted(last_rank, key=last_rank.__getitem__)
    return tok_to_id, [(id_to_tok[a], id_to_tok[b]) for a, b in ordered]


def hf_bpe_from_merges(
    vocab: dict[str, int], merges: list[tuple[str, str]], special_tokens: Sequence[str]
) -> Any:
    """An HF `tokenizers` byte-level BPE holding the given vocabulary and merges."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return hf
