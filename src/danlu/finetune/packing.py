"""Tokenized conversations into training rows: padded one per row, or packed several per row.

An example is (ids, mask) from a template; its row is inputs ids[:-1] and targets ids[1:], a target
kept only where the mask is 1 (the assistant's tokens and end of turn) and IGNORE_INDEX elsewhere.

- No packing: each batch is padded to its longest example (right padding, targets ignored); causal
  attention never lets a token see the padding after it, so no mask is needed.
- Packing: examples are laid end to end in rows of seq_len tokens (in a seeded order, a new row when
  the next does not fit) and each batch carries a block-diagonal causal mask [B, 1, T, T]: a token sees
  only earlier tokens of its own conversation. Positions are not reset, which needs a relative
  position scheme: with RoPE (or ALiBi) attention depends only on the distance between two tokens of
  one conversation, so a packed conversation computes what it would alone (tests pin this to 1e-5).
  Learned or sinusoidal absolute positions are refused.

`SFTBatches` is the Trainer's resumable stream: a seeded permutation of the rows per epoch; its
position is (epoch, index).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from danlu.errors import ConfigError, DataError
from danlu.train.losses import IGNORE_INDEX

Example = tuple[list[int], list[int]]  # (ids, loss mask)


@dataclass
class Fitted:
    examples: list[Example]
    too_long: int  # skipped (truncation "skip") or cut (truncation "truncate")
    no_target: int  # skipped: nothing to learn left within the context
    # a few "name: N tokens" of each, for the manifest
    too_long_examples: list[str] = field(default_factory=list)
    no_target_examples: list[str] = field(default_factory=list)


def fit_to_context(
    examples: Sequence[Example],
    seq_len: int,
    truncation: str,
    names: Sequence[str] | None = None,
    max_examples: int = 3,
) -> Fitted:
    """Examples of at most seq_len + 1 tokens (a row of seq_len inputs and targets). A longer one is
    skipped ("skip"), cut ("truncate") or refused with a DataError ("refuse"); names (one per
    example) label the few kept as examples of each."""
    out: list[Example] = []
    fitted = Fitted(out, 0, 0)
    for k, (ids, mask) in enumerate(examples):
        name = names[k] if names is not None else f"example {k}"
        if len(ids) > seq_len + 1:
            fitted.too_long += 1
            if truncation == "refuse":
                raise DataError(
                    f"{name}: {len(ids)} tokens, longer than the context of {seq_len} + 1; "
                    "set sft.data.truncation to skip or truncate, or raise sft.train.seq_len"
                )
            if len(fitted.too_long_examples) < max_examples:
                fitted.too_long_examples.append(f"{name}: {len(ids)} tokens")
            if truncation == "skip":
                continue
            ids, mask = ids[: seq_len + 1], mask[: seq_len + 1]
        if not any(mask[1:]):
            fitted.no_target += 1
            if len(fitted.no_target_examples) < max_examples:
                fitted.no_target_examples.append(f"{name}: no assistant token within {seq_len} + 1 tokens")
            continue
        out.append((list(ids), list(mask)))
    return fitted


def xy(example: Example) -> tuple[list[int], list[int]]:
    ids, mask = example
    return ids[:-1], [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:], strict=True)]


def pack_rows(lengths: Sequence[int], seq_len: int, seed: int) -> list[list[int]]:
    """Example indices per row: in a seeded order, each row filled until the next does not fit."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    rows: list[list[int]] = []
    used = seq_len + 1
    for i in order:
        n = lengths[i] - 1  # inputs of the example
        if used + n > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] bool: query i may see key j iff j <= i and both belong to the same segment."""
    T = segments.size(1)
    same = segments[:, :, None] == segments[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    return (same & causal)[:, None]


def collate(
    examples: Sequence[Example], rows: Sequence[Sequence[int]], pad_id: int, packed: bool, seq_len: int
) -> tuple[torch.Tensor, ...]:
    """One micro-batch: (inputs, targets) padded to the longest row, plus the mask when packed."""
    built = []
    for row in rows:
        x: list[int] = []
        y: list[int] = []
        seg: list[int] = []
        for k, i in enumerate(row):
            xi, yi = xy(examples[i])
            x += xi
            y += yi
            seg += [k] * len(xi)
        built.append((x, y, seg))
    T = seq_len if packed else max(len(x) for x, _, _ in built)
    X = torch.full((len(built), T), pad_id, dtype=torch.long)
    Y = torch.full((len(built), T), IGNORE_INDEX, dtype=torch.long)
    S = -torch.arange(1, T + 1).repeat(len(built), 1)  # padding: a segment of its own per position
    for b, (x, y, seg) in enumerate(built):
        X[b, : len(x)] = torch.tensor(x)
        Y[b, : len(y)] = torch.tensor(y)
        S[b, : len(seg)] = torch.tensor(seg)
    return (X, Y, block_causal_mask(S)) if packed else (X, Y)


def check_packing(model_cfg: Any) -> None:
    if model_cfg.pos in ("learned", "sinusoidal"):
        raise ConfigError(
            f"sft.data.packing needs relative positions (rope, alibi, none); this model uses {model_cfg.pos!r}: "
            "set sft.data.packing=false"
        )


class SFTBatches:
    """An endless, resumable stream of micro-batches over the examples (see the module docstring)."""

    def __init__(
        self, examples: list[Example], batch_size: int, seq_len: int, pad_id: int, seed: int, packed: bool
    ):
        self.examples, self.bs, self.seq_len, self.pad_id = examples, batch_size, seq_len, pad_id
        self.seed, self.packed = seed, packed
        lengths = [len(ids) for ids, _ in examples]
        self.rows = pack_rows(lengths, seq_len, seed) if packed else [[i] for i in range(len(examples))]
        if len(self.rows) < batch_size:
            raise ConfigError(
                f"the SFT data makes {len(self.rows)} rows, fewer than sft.train.batch_size={batch_size}; "
                "add data or lower the batch size"
            )
        self.epoch, self.i = 0, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "i": self.i}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.i = int(state["epoch"]), int(state["i"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        while True:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.rows))
            while self.i + self.bs <= len(self.rows):
                picked = [self.rows[k] for k in order[self.i : self.i + self.bs]]
                self.i += self.bs
                yield collate(self.examples, picked, self.pad_id, self.packed, self.seq_len)
            self.epoch, self.i = self.epoch + 1, 0


def eval_batches(examples: list[Example], batch_size: int, pad_id: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """Every example once, in order, padded per batch (no randomness: evaluation must not draw any)."""
    for s in range(0, len(examples), batch_size):
        rows = [[i] for i in range(s, min(s + batch_size, len(examples)))]
        yield collate(examples, rows, pad_id, False, 0)
