"""Fixed-length (x, y) batches from a memory-mapped token stream, deterministic and resumable.

The training stream is cut into non-overlapping windows of seq_len + 1 tokens (y is x shifted by one).
Each epoch visits every window once in an order drawn from (seed, epoch); the loader's position is
(epoch, windows consumed), which is all a checkpoint needs to continue the same sequence of batches.

A train split packed with a phased data mix records each phase's token range. An epoch then walks the
phases in order, each phase's windows in a seeded shuffle of their own, so the schedule's phases are
trained one after the other rather than blended; a window belongs to the phase its first token is in
(its last few tokens may come from the next phase). The schedule plays out once per pass over the
split: a run that trains on about data.mix.tokens tokens sees it exactly, a shorter one stops in an
earlier phase, a longer one starts over at phase 1. With one phase (or none recorded) the order is the
unphased one. A curriculum (data.mix.order) is read as laid out: each phase's windows in stream order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch

from danlu.errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]


class TokenDataset:
    """One split of a packed tokens directory, memory-mapped."""

    def __init__(self, tokens_dir: str | Path, split: str):
        tokens_dir = Path(tokens_dir)
        index_path = tokens_dir / "index.json"
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            info = index["splits"][split]
            dtype = np.dtype(index["dtype"])
        except FileNotFoundError:
            raise DataError(f"{index_path} not found; run the pack stage first (danlu pack)") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(
                f"{index_path} is corrupt or lacks split '{split}' ({e}); re-run the pack stage"
            ) from None
        path = tokens_dir / info["file"]
        expected = int(info["tokens"]) * dtype.itemsize
        size = path.stat().st_size if path.exists() else -1
        if size != expected:
            raise DataError(
                f"{path} holds {max(size, 0)} bytes, index.json says {expected}: the shard is missing or "
                "truncated; re-run the pack stage"
            )
        self.split, self.path = split, path
        self.vocab_size = int(index["vocab_size"])
        self.tokens = np.memmap(path, dtype=dtype, mode="r")
        self.phase_starts = _phase_starts(info, split, len(self.tokens), index_path)
        # a curriculum (data.mix.order) laid each phase out in score order: read it in that order
        self.ordered = bool((info.get("mix") or {}).get("order"))

    def __len__(self) -> int:
        return len(self.tokens)

    def window(self, start: int, seq_len: int) -> np.ndarray:
        return np.asarray(self.tokens[start : start + seq_len + 1], dtype=np.int64)


def _phase_starts(info: dict[str, Any], split: str, n_tokens: int, index_path: Path) -> list[int]:
    """Token offsets where the mix's phases 2, 3, ... begin; [] for an unphased split."""
    phases = (info.get("mix") or {}).get("phases") or []
    try:
        ranges = [(int(p["start"]), int(p["end"])) for p in phases]
    except (KeyError, TypeError, ValueError):
        ranges = [(-1, -1)]
    contiguous = all(a[1] == b[0] for a, b in pairwise(ranges))
    if ranges and not (ranges[0][0] == 0 and ranges[-1][1] == n_tokens and contiguous):
        raise DataError(
            f"{index_path}: the mix phases of split '{split}' do not cover its {n_tokens} "
            "tokens in order; re-run the pack stage"
        )
    return [start for start, _ in ranges[1:]]


def _num_windows(dataset: TokenDataset, seq_len: int) -> int:
    return (len(dataset) - 1) // seq_len


def _to_batch(rows: list[np.ndarray]) -> Batch:
    a = torch.from_numpy(np.stack(rows))
    return a[:, :-1].contiguous(), a[:, 1:].contiguous()


class TrainLoader:
    """Endless shuffled batches, phase by phase for a phased mix (see the module docstring);
    `state_dict()` after any batch resumes exactly at the next one.

    Data parallel: with `world` ranks, batch_size is the global batch and rank `rank` yields its rows
    [rank * b, (rank + 1) * b) of each (b = batch_size / world), reading only those windows. Every
    rank walks the same order and keeps the same position, so the state is the same on each rank and
    in one process: a run resumes under any number of ranks with the same batches."""

    def __init__(
        self, dataset: TokenDataset, batch_size: int, seq_len: int, seed: int, rank: int = 0, world: int = 1
    ):
        self.dataset, self.batch_size, self.seq_len, self.seed = dataset, batch_size, seq_len, seed
        if world < 1 or not 0 <= rank < world or batch_size % world:
            raise DataError(
                f"train.batch_size={batch_size} (the global batch) must divide evenly over {world} "
                "data-parallel ranks; choose a multiple of the data-parallel degree"
            )
        self.rank, self.world = rank, world
        self.n_windows = _num_windows(dataset, seq_len)
        if self.n_windows < batch_size:
            raise DataError(
                f"the {dataset.split} split has {len(dataset)} tokens, fewer than one batch of "
                f"{batch_size} x {seq_len + 1}; add data or lower train.batch_size/seq_len"
            )
        # window i starts at token i * seq_len; it belongs to the phase that token is in
        cuts = [-(-start // seq_len) for start in dataset.phase_starts]  # ceil: first window at/after
        self._bounds = [0, *(min(c, self.n_windows) for c in cuts), self.n_windows]
        self.epoch, self.pos = 0, 0
        self._order: np.ndarray | None = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            rng = np.random.default_rng([self.seed, self.epoch])
            walk = np.arange if self.dataset.ordered else rng.permutation
            self._order = np.concatenate([lo + walk(hi - lo) for lo, hi in pairwise(self._bounds)])
        return self._order

    def next_batch(self) -> Batch:
        rows = []
        per_rank = self.batch_size // self.world
        mine = range(self.rank * per_rank, (self.rank + 1) * per_rank)
        for i in range(self.batch_size):
            if self.pos == self.n_windows:
                self.epoch, self.pos, self._order = self.epoch + 1, 0, None
            if i in mine:
                start = int(self._epoch_order()[self.pos]) * self.seq_len
                rows.append(self.dataset.window(start, self.seq_len))
            self.pos += 1
        return _to_batch(rows)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "pos": self.pos,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "n_tokens": len(self.dataset),
            "phase_starts": list(self.dataset.phase_starts),
            "ordered": self.dataset.ordered,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        # checkpoints from before phased mixes and curricula have neither
        state = {"phase_starts": [], "ordered": False, **state}
        for key in ("seed", "batch_size", "seq_len", "n_tokens", "phase_starts", "ordered"):
            if state.get(key) != mine[key]:
                raise DataError(
                    f"cannot resume the data loader: {key} was {state.get(key)}, now {mine[key]}; "
                    "resume with the same data and train config, or start a new run directory"
                )
        if not 0 <= int(state["pos"]) <= self.n_windows:
            raise DataError(
                f"loader position {state['pos']} is outside the epoch of {self.n_windows} windows"
            )
        self.epoch, self.pos, self._order = int(state["epoch"]), int(state["pos"]), None


def eval_batches(
    dataset: TokenDataset, batch_size: int, seq_len: int, max_batches: int = 0
) -> Iterator[Batch]:
    """Consecutive windows from the start of the split, in batches; the same every time (0 = all)."""
    n = _num_windows(dataset, seq_len)
    if max_batches > 0:
        n = min(n, max_batches * batch_size)
    for first in range(0, n, batch_size):
        rows = [dataset.window(i * seq_len, seq_len) for i in range(first, min(first + batch_size, n))]
        yield _to_batch(rows)
