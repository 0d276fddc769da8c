"""Choosing the next token (greedy, temperature, top-k, nucleus) and streaming generation.

Filters apply in the order Hugging Face's logits warpers use: temperature, then top-k, then top-p.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from danlu.errors import ConfigError
from danlu.infer.config import SampleConfig
from danlu.infer.params import SamplingParams
from danlu.infer.processors import warp
from danlu.model.transformer import Transformer


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Scaled logits [B, V] (fp32) with the tokens outside top-k / the nucleus set to -inf.

    top_k keeps the k highest logits (ties with the k-th are kept too); top_p keeps the smallest set
    of most likely tokens whose probabilities sum to at least top_p, and always the most likely one.
    """
    if top_k < 0 or not 0 < top_p <= 1:
        raise ConfigError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k}, top_p={top_p}")
    return warp(logits, temperature, top_k, top_p)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids [B] from logits [B, V]; temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(
    model: Transformer,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_ids: Iterable[int] = (),
    seed: int | None = None,
) -> Iterator[int]:
    """Stream up to max_new_tokens new token ids continuing prompt_ids, through the engine.

    Stops after yielding a stop id or when prompt + output fills the model's context (max_seq_len).
    A prompt that leaves too little room is cropped from the left, keeping its last
    max_seq_len - min(max_new_tokens, max_seq_len // 2) tokens: the output gets room for all new
    tokens, or at least half the context. seed=None draws from fresh entropy.
    """
    from danlu.infer.engine import Engine

    if not prompt_ids:
        raise ConfigError("the prompt is empty; give at least one token (e.g. encode with bos=True)")
    if max_new_tokens < 1:
        return
    context = model.cfg.max_seq_len
    room = max(1, min(max_new_tokens, context // 2))
    prompt = list(prompt_ids)[-max(1, context - room) :]
    params = SamplingParams(
        max_tokens=min(max_new_tokens, context - len(prompt)),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_token_ids=list(stop_ids),
        ignore_eos=True,  # without a tokenizer the engine knows only these stop ids
        seed=seed,
    )
    training = model.training
    try:
        for event in Engine(model, None, max_batch=1, prefix_cache=False).stream(prompt, params):
            if event.token_id is not None:
                yield event.token_id
            elif isinstance(event.stop_reason, int):
                yield event.stop_reason
    finally:
        model.train(training)


def complete(
    model: Transformer, tokenizer: Any, prompt: str, sample: SampleConfig, seed: int | None
) -> Iterator[int]:
    """Stream the ids continuing a text prompt (read as the start of a document: <|bos|> first) until
    <|eos|> or sample.max_new_tokens."""
    return generate(
        model,
        tokenizer.encode(prompt, bos=True),
        sample.max_new_tokens,
        temperature=sample.temperature,
        top_k=sample.top_k,
        top_p=sample.top_p,
        stop_ids=(tokenizer.eos_id,),
        seed=seed,
    )
