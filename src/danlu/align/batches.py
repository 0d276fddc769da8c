"""Preference pairs into token rows, and the Trainer's resumable streams of them.

A pair is encoded once as (prompt ids, chosen ids + score mask, rejected ids + score mask, margin):
the prompt is the conversation up to the assistant's opening under the chat template, a response
is what the template appends for the assistant's message (its text and end-of-turn marker scored,
trailing markup not). A row is prompt + response, right-padded; `mask[t]` = 1 where token t is a
scored response token (predicted from position t - 1).

    paired batch   {"ids", "mask"} [2B, T] with the B chosen rows first, then the B rejected rows,
                   "margin" [B], and "ref" [2B] when the reference log-probs are precomputed
    KTO batch      unpaired completions (each pair gives a desirable and an undesirable one):
                   {"ids", "mask", "label"} [B], the KL rows "kl_ids", "kl_mask" (each completion
                   after the next completion's prompt: a mismatched pair, as TRL builds them), and
                   "ref", "ref_kl" when precomputed

`IndexStream` is the endless seeded permutation of the items, its position (epoch, index) resumable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from danlu.errors import ConfigError, DataError
from danlu.finetune import templates


@dataclass(frozen=True)
class Encoded:
    prompt: list[int]
    chosen: list[int]
    chosen_mask: list[int]
    rejected: list[int]
    rejected_mask: list[int]
    margin: float = 0.0


@dataclass(frozen=True)
class Completion:
    """One unpaired completion (KTO) with the response it is compared to for the KL estimate."""

    prompt: list[int]
    response: list[int]
    mask: list[int]
    desirable: bool
    kl_response: list[int]
    kl_mask: list[int]


def _response(tok: Any, prompt_msgs: list[dict[str, str]], prompt: list[int], text: str, template: str):
    ids, mask = templates.encode(tok, [*prompt_msgs, {"role": "assistant", "content": text}], template)
    if ids[: len(prompt)] != prompt:
        raise DataError(f"template {template!r} renders the prompt differently with an answer after it")
    return ids[len(prompt) :], mask[len(prompt) :]


def encode_pairs(
    pairs: Sequence[dict[str, Any]], tok: Any, template: str, max_tokens: int
) -> tuple[list[Encoded], int]:
    """(encoded pairs, pairs skipped because prompt + a response exceeds max_tokens)."""
    out, too_long = [], 0
    for p in pairs:
        prompt = templates.prompt_ids(tok, p["prompt"], template)
        c, cm = _response(tok, p["prompt"], prompt, p["chosen"], template)
        r, rm = _response(tok, p["prompt"], prompt, p["rejected"], template)
        if len(prompt) + max(len(c), len(r)) > max_tokens:
            too_long += 1
            continue
        out.append(Encoded(prompt, c, cm, r, rm, float(p.get("margin", 0.0))))
    return out, too_long


def unpaired(encoded: Sequence[Encoded]) -> list[Completion]:
    """Every pair's chosen (desirable) then every rejected (undesirable) completion; completion k is
    matched for the KL estimate with the response of completion k + 1 (a different prompt)."""
    items = [(e.prompt, e.chosen, e.chosen_mask, True) for e in encoded]
    items += [(e.prompt, e.rejected, e.rejected_mask, False) for e in encoded]
    n = len(items)
    return [
        Completion(p, r, m, d, items[(k + 1) % n][1], items[(k + 1) % n][2])
        for k, (p, r, m, d) in enumerate(items)
    ]


def rows(
    seqs: Sequence[tuple[list[int], list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) [N, T] of (prompt, response, response mask) rows, right-padded to the longest."""
    T = max(len(p) + len(r) for p, r, _ in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, (p, r, m) in enumerate(seqs):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        mask[i, len(p) : len(p) + len(r)] = torch.tensor(m)
    return ids, mask


def paired_batch(
    items: Sequence[Encoded], pad_id: int, ref: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """ref: [B, 2] precomputed (chosen, rejected) reference log-probs of these pairs, if any."""
    seqs = [(e.prompt, e.chosen, e.chosen_mask) for e in items]
    seqs += [(e.prompt, e.rejected, e.rejected_mask) for e in items]
    ids, mask = rows(seqs, pad_id)
    out = {"ids": ids, "mask": mask, "margin": torch.tensor([e.margin for e in items])}
    if ref is not None:
        out["ref"] = torch.cat([ref[:, 0], ref[:, 1]])
    return out


def kto_batch(
    items: Sequence[Completion], pad_id: int, ref: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """ref: [B, 2] precomputed (completion, KL row) reference log-probs, if any."""
    ids, mask = rows([(c.prompt, c.response, c.mask) for c in items], pad_id)
    kl_ids, kl_mask = rows([(c.prompt, c.kl_response, c.kl_mask) for c in items], pad_id)
    out = {
        "ids": ids,
        "mask": mask,
        "label": torch.tensor([c.desirable for c in items]),
        "kl_ids": kl_ids,
        "kl_mask": kl_mask,
    }
    if ref is not None:
        out["ref"], out["ref_kl"] = ref[:, 0].clone(), ref[:, 1].clone()
    return out


def batch_sizes(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(input tokens, items): the Trainer normalizes a preference loss per pair (or completion)."""
    n = batch["margin"].numel() if "margin" in batch else batch["label"].numel()
    return int(batch["ids"].numel()), int(n)


class IndexStream:
    """An endless, resumable stream of micro-batches: a seeded permutation of the items per epoch,
    each batch `collate(indices)`; its position is (epoch, i)."""

    def __init__(self, n: int, batch_size: int, seed: int, collate: Callable[[list[int]], Any]):
        if n < batch_size:
            raise ConfigError(
                f"the preference data has {n} items, fewer than align.train.batch_size={batch_size}; "
                "add data or lower the batch size"
            )
        self.n, self.bs, self.seed, self.collate = n, batch_size, seed, collate
        self.epoch, self.i = 0, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "i": self.i}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.i = int(state["epoch"]), int(state["i"])

    def __iter__(self) -> Iterator[Any]:
        while True:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
            while self.i + self.bs <= self.n:
                picked = order[self.i : self.i + self.bs].tolist()
                self.i += self.bs
                yield self.collate(picked)
            self.epoch, self.i = self.epoch + 1, 0


def in_order(n: int, batch_size: int) -> Iterator[list[int]]:
    """Every index once, in order (evaluation and reference precomputation draw no randomness)."""
    for s in range(0, n, batch_size):
        yield list(range(s, min(s + batch_size, n)))
