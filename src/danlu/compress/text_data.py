"""Training text for distillation and recovery finetunes: text files encoded with the model's
tokenizer, a held-out tail, and a resumable stream of fixed-length windows.

Both students of a comparison draw the same windows in the same order when they share the seed, so
"the same text for equal steps" holds exactly."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from danlu.errors import DataError
from danlu.train.losses import IGNORE_INDEX


def read_text(paths: Sequence[str | Path]) -> str:
    """The files' UTF-8 text, joined by blank lines."""
    if not paths:
        raise DataError("no training text given; pass --data FILE (UTF-8 text), one or more times")
    parts = []
    for p in paths:
        try:
            parts.append(Path(p).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{p}: no such file; give a UTF-8 text file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{p} cannot be read as UTF-8 text ({e})") from None
    return "\n\n".join(parts)


def split_ids(ids: Sequence[int], seq_len: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) token arrays: the last val_fraction of the tokens is held out."""
    arr = np.asarray(ids, dtype=np.int64)
    n_val = int(len(arr) * val_fraction)
    train, val = arr[: len(arr) - n_val], arr[len(arr) - n_val :]
    if len(train) < seq_len + 1 or len(val) < seq_len + 1:
        raise DataError(
            f"{len(arr)} tokens of text leave {len(train)} for training and {len(val)} held out, "
            f"fewer than one window of {seq_len + 1}; give more text or lower seq_len"
        )
    return train, val


class _SeededDraws:
    """Batch k is drawn from a generator seeded by (seed, k): the whole state is the count k."""

    position = 0

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


class WindowBatches(_SeededDraws):
    """Endless micro-batches (inputs, targets) of random windows of a token array; batch k is drawn
    from a generator seeded by (seed, k), so its state is a count and a resume is exact."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, seed: int):
        self.ids, self.batch_size, self.seq_len, self.seed = ids, batch_size, seq_len, seed
        self.position = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            rng = np.random.default_rng([self.seed, self.position])
            starts = rng.integers(0, len(self.ids) - self.seq_len, size=self.batch_size)
            rows = np.stack([self.ids[s : s + self.seq_len + 1] for s in starts])
            self.position += 1
            t = torch.from_numpy(rows)
            yield t[:, :-1].contiguous(), t[:, 1:].contiguous()


def val_windows(
    ids: np.ndarray, batch_size: int, seq_len: int, max_batches: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Disjoint consecutive windows of the held-out tokens, in order (every evaluation sees the same)."""
    n = (len(ids) - 1) // seq_len
    rows = [ids[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)]
    for b, i in enumerate(range(0, n, batch_size)):
        if max_batches and b >= max_batches:
            return
        t = torch.from_numpy(np.stack(rows[i : i + batch_size]))
        yield t[:, :-1].contiguous(), t[:, 1:].contiguous()


class ExampleBatches(_SeededDraws):
    """Endless micro-batches of (prompt, completion) examples, padded to the longest in the batch,
    with targets only on the completion; batch k is a seeded draw, as in WindowBatches."""

    def __init__(self, examples: list[tuple[list[int], int]], batch_size: int, pad_id: int, seed: int):
        if not examples:
            raise DataError("no training example: the teacher generated nothing")
        self.examples, self.batch_size, self.pad_id, self.seed = examples, batch_size, pad_id, seed
        self.position = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            rng = np.random.default_rng([self.seed, self.position])
            picks = rng.integers(0, len(self.examples), size=self.batch_size)
            self.position += 1
            yield pad_examples([self.examples[i] for i in picks], self.pad_id)


def pad_examples(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of examples (ids, prompt length): a target wherever the next token is part
    of the completion, IGNORE_INDEX on the prompt and the padding."""
    width = max(len(ids) for ids, _ in examples) - 1
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for r, (ids, n_prompt) in enumerate(examples):
        t = torch.tensor(ids, dtype=torch.long)
        x[r, : len(ids) - 1] = t[:-1]
        y[r, n_prompt - 1 : len(ids) - 1] = t[n_prompt:]
    return x, y
