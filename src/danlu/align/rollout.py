"""Rollouts for the RL methods: sample completions with the batched engine, then score them as rows.

`sample` runs the policy in danlu's inference engine (a fresh engine each call, prefix caching off: the
weights change between rollouts), each completion with a seed of its own, so a rollout is a function
of (weights, prompts, seeds). A completion that stopped on an end token keeps that token: the policy
learns to end its turn. `pack` lays prompt + completion rows out right-padded as the align batches do:
`mask[t]` = 1 where token t is a completion token, predicted from position t - 1. `token_logps` and
`entropies` are then per target position [N, T - 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from danlu.infer.engine import Engine
from danlu.infer.params import SamplingParams


@dataclass
class Sampled:
    prompts: list[list[int]]
    completions: list[list[int]]  # with the end token when the completion stopped on one
    texts: list[str]  # the completions' text (special tokens left out)
    stopped: list[bool]  # ended on an end token (not cut at max_tokens)


@torch.no_grad()
def sample(
    policy: nn.Module,
    tok: Any,
    prompts: Sequence[Sequence[int]],
    seeds: Sequence[int] | None,
    max_new_tokens: int,
    temperature: float,
    top_k: int = 0,
    max_batch: int = 64,
) -> Sampled:
    """One completion per prompt (repeat a prompt for a group); seeds None means greedy. The policy
    is left in eval mode (the engine's); the caller puts it back."""
    longest = max(len(p) for p in prompts) + max_new_tokens + 1
    engine = Engine(policy, tok, max_batch=min(max_batch, len(prompts)), max_queue=len(prompts) + 1,
                    max_len=longest, prefix_cache=False)  # fmt: skip
    if seeds is None:
        params = [SamplingParams(max_tokens=max_new_tokens, temperature=0.0)] * len(prompts)
    else:
        params = [
            SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=s)
            for s in seeds
        ]
    ended: dict[str, int] = {}  # request id -> the end token it stopped on

    def note_end(event: Any) -> None:
        if event.finished and isinstance(event.stop_reason, int):
            ended[event.request_id] = event.stop_reason

    handles = [engine.submit(list(p), q, on_event=note_end) for p, q in zip(prompts, params, strict=True)]
    while not all(h.done() for h in handles):
        engine.step()
    done = [h.result() for h in handles]
    completions, stopped = [], []
    for c in done:
        end = ended.get(c.request_id)
        completions.append(c.token_ids + ([end] if end is not None else []))
        stopped.append(end is not None)
    return Sampled([list(p) for p in prompts], completions, [c.text for c in done], stopped)


def pack(prompts: Sequence[list[int]], completions: Sequence[list[int]], pad_id: int):
    """(ids [N, T], mask [N, T]) of prompt + completion rows, right-padded; mask marks completions."""
    T = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        mask[i, len(p) : len(p) + len(c)] = 1
    return ids, mask


def logps_and_entropy(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log-prob of the next token and the entropy of the distribution [N, T - 1], from
    logits [N, T - 1, V] of ids[:, :-1]."""
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    picked = logp_all.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return picked, entropy


def token_logps(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids[:, :-1])
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    return logp_all.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """x normalized to mean 0 and unit variance over the masked entries (TRL's masked_whiten)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the masked entries (1: values predict returns)."""
    r = returns[mask.bool()]
    v = values[mask.bool()]
    var = r.var(unbiased=False)
    return float("nan") if var == 0 else float(1 - (r - v).var(unbiased=False) / var)
