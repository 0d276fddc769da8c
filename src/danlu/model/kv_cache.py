"""The KV cache: preallocated keys and values with a length per row, so rows decode at their own positions.

Layout [n_layer, rows, n_kv_head, max_len, head_dim]. A forward over rows `r0:r1` (a contiguous range, a
view of the cache, never a copy) writes each row's new keys at that row's own length and then advances
those lengths by T. Rows that share one length take the plain path (slice writes, no per-row indices);
rows at different lengths are written with one index_copy_ per layer over flat row positions planned
once per forward (cheaper than an index_put, which rebuilds its indices in every layer) and read with a
per-row mask. Keys past a row's length are never attended, so a stale value there is harmless: the
engine relies on that to run a decode step over a range that holds idle rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Step:
    """Where one forward writes: rows, their start positions, the number of new tokens."""

    rows: slice
    starts: torch.Tensor  # [B] long, on the cache's device
    T: int
    uniform: bool  # every row starts at the same position
    start: int  # that position when uniform
    end: int  # the largest start + T: keys [0, end) are read
    flat: torch.Tensor | None = None  # rows at different lengths: where each (row, head, token) lands


class KVCache:
    def __init__(
        self,
        batch: int,
        n_layer: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ):
        shape = (n_layer, batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        # per-row lengths live on the CPU: the forward needs them as Python ints to slice and check
        self.lengths = torch.zeros(batch, dtype=torch.long)
        self.step: Step | None = None

    @classmethod
    def for_model(cls, model: Any, batch: int = 1, max_len: int | None = None) -> KVCache:
        cfg = model.cfg
        param = model.embed.weight
        return cls(
            batch,
            cfg.n_layer,
            model.n_kv_head,
            max_len or cfg.max_seq_len,
            cfg.n_embd // cfg.n_head,
            param.device,
            param.dtype,
        )

    @property
    def batch(self) -> int:
        return self.k.size(1)

    @property
    def pos(self) -> int:
        """The common length of all rows (for callers that keep them together)."""
        first = int(self.lengths[0])
        if not bool((self.lengths == first).all()):
            raise ValueError("the cache rows have different lengths; read cache.lengths")
        return first

    def begin(self, rows: slice | None, T: int) -> Step:
        """Plan a forward of T new tokens over `rows` (all rows when None)."""
        rows = rows if rows is not None else slice(0, self.batch)
        starts = self.lengths[rows]
        first = int(starts[0])
        uniform = bool((starts == first).all())
        end = (first if uniform else int(starts.max())) + T
        device = self.k.device
        starts = starts.to(device)
        flat = None
        if not uniform:  # index into the rows' cache viewed as [B * n_kv_head * max_len, hd]
            n_kv = self.k.size(2)
            row_head = torch.arange(starts.numel() * n_kv, device=device).view(-1, n_kv, 1)
            pos = (starts[:, None] + torch.arange(T, device=device))[:, None]  # [B, 1, T]
            flat = (row_head * self.max_len + pos).reshape(-1)
        self.step = Step(rows, starts, T, uniform, first, end, flat)
        return self.step

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, n_kv_head, T, hd] of the planned step; return the rows' keys and values
        [B, n_kv_head, end, hd] (positions past a row's own length are masked by the caller)."""
        step = self.step
        assert step is not None, "call begin() before the forward"
        kc, vc = self.k[layer, step.rows], self.v[layer, step.rows]
        if step.uniform:
            kc[:, :, step.start : step.start + step.T] = k
            vc[:, :, step.start : step.start + step.T] = v
        else:
            assert step.flat is not None
            hd = k.size(-1)  # a contiguous range of rows: the view is of the cache itself
            kc.view(-1, hd).index_copy_(0, step.flat, k.reshape(-1, hd))
            vc.view(-1, hd).index_copy_(0, step.flat, v.reshape(-1, hd))
        return kc[:, :, : step.end], vc[:, :, : step.end]

    def finish(self) -> None:
        """Advance the planned rows by T."""
        if self.step is not None:
            self.lengths[self.step.rows] += self.step.T
            self.step = None

    def reorder(self, index: torch.Tensor) -> None:
        """Rows become rows[index] (beam search keeps the cache of the beams it continues)."""
        self.k = self.k.index_select(1, index.to(self.k.device))
        self.v = self.v.index_select(1, index.to(self.v.device))
        self.lengths = self.lengths.index_select(0, index.cpu())

    def truncate(self, length: int | torch.Tensor, rows: slice | None = None) -> None:
        """Forget positions at and after `length` (speculative decoding rolls rejected tokens back)."""
        self.lengths[rows if rows is not None else slice(None)] = length

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Row dst gets the first n positions of row src (a shared prompt is computed once)."""
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n

    def reset(self) -> None:
        self.lengths.zero_()
