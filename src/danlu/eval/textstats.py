"""Statistics of generated text: distinct-n, repetition rate, and the memorization probe's matches.

distinct-n (Li et al. 2016)       unique n-grams / all n-grams, pooled over a set of generations: low
                                  when a model says the same things to every prompt.
repetition rate (seq-rep-n,       per generation, the fraction of its n-grams that already occurred
  Welleck et al. 2019)            earlier in it: high when a model loops.
memorization (Carlini et al.     a training prefix is continued greedily; the item counts as memorized
  2022, "extractable")            when the continuation equals the true suffix token for token.

Words are lower-cased runs of letters/digits or single punctuation marks, so the numbers do not depend
on a model's tokenizer and compare across models.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from danlu.errors import ConfigError

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    if n < 1:
        raise ConfigError(f"n-gram order must be at least 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams over all n-grams of all texts (0.0 when there is none)."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 4) -> float:
    """Fraction of the text's n-grams that repeat an earlier n-gram of it: 1 - unique / total."""
    grams = ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def matched_prefix(generated: Sequence[int], target: Sequence[int]) -> int:
    """How many leading tokens of generated equal target's."""
    n = 0
    for a, b in zip(generated, target, strict=False):
        if a != b:
            break
        n += 1
    return n
