"""Needle in a haystack: can the model retrieve one fact placed at depth d% of a context of L tokens?

The haystack is Shakespeare (the built-in corpus). Lengths are counted with `count_tokens` (pass the
model tokenizer's; the default counts whitespace-separated words). The needle goes at the sentence
boundary nearest before d% of the haystack, so it never splits a sentence; a cell scores 1 when the
reply contains the needle's answer. The grid of scores is written as JSON and as a heatmap PNG.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from danlu.errors import ConfigError, DataError
from danlu.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

NEEDLE = "The magic number is 48213."
QUESTION = "What is the magic number mentioned in the text above? Answer with the number only."
ANSWER = "48213"
TEMPLATE = "{context}\n\n{question}\nAnswer:"

_WORDS = re.compile(r"\S+\s*")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?\s*$")


def shakespeare_haystack() -> str:
    """All of the built-in Shakespeare corpus, works joined by blank lines."""
    from danlu.data.sources import read_source

    return "\n\n".join(d["text"] for d in read_source("shakespeare"))


def _word_count(text: str) -> int:
    return len(text.split())


def _take_tokens(pieces: list[str], length: int, count_tokens: Callable[[str], int]) -> int:
    """Largest number of leading word pieces whose text has at most `length` tokens (binary search)."""
    lo, hi = 0, len(pieces)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens("".join(pieces[:mid])) <= length:
            lo = mid
        else:
            hi = mid - 1
    return lo


def insert_needle(
    haystack: str,
    length: int,
    depth: float,
    needle: str = NEEDLE,
    count_tokens: Callable[[str], int] = _word_count,
) -> tuple[str, int]:
    """A context of at most `length` tokens with `needle` at depth% of it; also the needle's char offset."""
    if not 0 <= depth <= 100:
        raise ConfigError(f"needle depth must be a percentage in [0, 100], got {depth}")
    budget = length - count_tokens(needle + " ")
    if budget <= 0:
        raise ConfigError(f"context length {length} leaves no room for the needle: use a larger length")
    # every word piece holds at least one token, so budget + 1 pieces are enough to search
    pieces = [m.group() for m in itertools.islice(_WORDS.finditer(haystack), budget + 1)]
    n = _take_tokens(pieces, budget, count_tokens)
    if n == len(pieces) and count_tokens("".join(pieces)) < budget:
        raise DataError(
            f"the haystack has fewer than {length} tokens: give a longer haystack or shorter lengths"
        )
    pieces = pieces[:n]
    starts = [0]
    for p in pieces:
        starts.append(starts[-1] + len(p))
    target = depth / 100 * starts[-1]
    # the last sentence boundary at or before the target: word i starts a sentence if word i-1 ends one
    k = bisect.bisect_right(starts, target) - 1
    while k > 0 and not _SENTENCE_END.search(pieces[k - 1]):
        k -= 1
    if depth == 100:
        k = len(pieces)
    before = "".join(pieces[:k])
    if before and not before[-1].isspace():
        before += " "
    context = before + needle + " " + "".join(pieces[k:])
    return context.rstrip(), len(before)


@dataclass
class NeedleResult:
    lengths: list[int]
    depths: list[float]
    scores: list[list[float]]  # scores[i][j]: length i, depth j
    trials: list[dict[str, Any]] = field(default_factory=list)

    def save_json(self, path: str | Path) -> None:
        atomic_write_json(path, asdict(self))

    def save_heatmap(self, path: str | Path, title: str = "Needle in a haystack") -> None:
        """Depth (rows) by length (columns), green = retrieved, as in the usual plots."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        grid = [[self.scores[i][j] for i in range(len(self.lengths))] for j in range(len(self.depths))]
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(self.lengths), 1.0 + 0.5 * len(self.depths)))
        im = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(self.lengths)), [str(n) for n in self.lengths])
        ax.set_yticks(range(len(self.depths)), [f"{d:g}%" for d in self.depths])
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("needle depth")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, label="score")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)


def run_needle(
    generate: Callable[[str], str],
    lengths: Sequence[int],
    depths: Sequence[float],
    haystack: str | None = None,
    count_tokens: Callable[[str], int] = _word_count,
    needle: str = NEEDLE,
    question: str = QUESTION,
    answer: str = ANSWER,
    template: str = TEMPLATE,
) -> NeedleResult:
    """Score every (length, depth) cell: 1.0 when generate's reply contains `answer`."""
    if not lengths or not depths:
        raise ConfigError("needle grid needs at least one length and one depth")
    hay = haystack if haystack is not None else shakespeare_haystack()
    result = NeedleResult(list(lengths), [float(d) for d in depths], [])
    for length in lengths:
        row = []
        for depth in depths:
            context, offset = insert_needle(hay, length, depth, needle, count_tokens)
            reply = generate(template.format(context=context, question=question))
            score = float(answer in reply)
            row.append(score)
            result.trials.append(
                {
                    "length": length,
                    "depth": float(depth),
                    "needle_offset": offset,
                    "context_chars": len(context),
                    "score": score,
                    "reply": reply[:200],
                }
            )
        result.scores.append(row)
        log.info("needle length %d: %s", length, row)
    return result
