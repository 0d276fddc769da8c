"""Beam search with a length penalty and early stopping, on the model's KV cache (one row per beam).

The rules are Hugging Face's (`generate(num_beams=...)`), so the two give the same beams:
- each step takes the best 2 * beams continuations over all beams (by summed log-probability);
- a continuation that ends (an end id, or the last allowed token) is a finished hypothesis when it
  ranks among the first `beams`; its score is sum logprob / generated_len ** length_penalty, where
  generated_len counts the new tokens including the end id; the best `beams` finished ones are kept;
- the other best `beams` continuations run on, and the cache rows follow them (`cache.reorder`);
- early_stopping=True stops once `beams` hypotheses are finished; False stops when the best running
  beam, scored at its current length, can no longer beat the worst finished one; "never" scores it at
  the maximum length when the penalty favours length (the canonical, exhaustive rule).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from danlu.errors import ConfigError
from danlu.model.kv_cache import KVCache

NEG = -1.0e9  # HF's stand-in for an impossible score (keeps arithmetic finite)


@dataclass
class Hypothesis:
    tokens: list[int]  # the new tokens, the end id included when it ended on one
    score: float  # sum of log-probabilities / len(tokens) ** length_penalty
    logprob: float  # sum of log-probabilities


@torch.no_grad()
def beam_search(
    model: torch.nn.Module,
    prompt_ids: list[int],
    num_beams: int,
    max_new_tokens: int,
    end_ids: Iterable[int] = (),
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    num_return: int = 1,
) -> list[Hypothesis]:
    """The best `num_return` hypotheses continuing prompt_ids, best first."""
    if num_beams < 1 or not 1 <= num_return <= num_beams:
        raise ConfigError(
            f"need num_beams >= 1 and 1 <= num_return <= num_beams, got {num_beams}, {num_return}"
        )
    if early_stopping not in (True, False, "never"):
        raise ConfigError(f"early_stopping must be true, false or 'never', got {early_stopping!r}")
    if not prompt_ids:
        raise ConfigError("the prompt is empty; give at least one token (e.g. encode with bos=True)")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    context = model.cfg.max_seq_len  # type: ignore[union-attr]
    if len(prompt_ids) + max_new_tokens > context:
        raise ConfigError(
            f"the prompt ({len(prompt_ids)} tokens) plus {max_new_tokens} new tokens exceeds the context "
            f"of {context}; shorten the prompt or lower max_new_tokens"
        )
    device = model.embed.weight.device  # type: ignore[union-attr]
    ends = set(end_ids)
    B = num_beams
    cache = KVCache.for_model(model, batch=B, max_len=len(prompt_ids) + max_new_tokens)
    logits = model(torch.tensor([prompt_ids], device=device), cache, rows=slice(0, 1))[:, -1]
    for r in range(1, B):  # every beam starts from the one prompt, computed once
        cache.copy_prefix(0, r, len(prompt_ids))
    logprobs = logits.float().log_softmax(-1).expand(B, -1)
    V = logprobs.size(-1)
    scores = torch.full((B,), NEG, device=device)
    scores[0] = 0.0  # the other beams are copies of the first until they diverge
    running: list[list[int]] = [[] for _ in range(B)]
    finished: list[Hypothesis] = []
    improvable = True
    K = min(max(2, 1 + len(ends)) * B, B * V)
    for step in range(max_new_tokens):
        top, index = torch.topk((logprobs + scores[:, None]).flatten(), K)
        beam, token = (index // V).tolist(), (index % V).tolist()
        top_list = top.tolist()
        last = step == max_new_tokens - 1
        ends_here = [last or t in ends for t in token]
        full = len(finished) == B and early_stopping is True
        if improvable and not full:
            for j in range(min(B, K)):
                if ends_here[j]:
                    tokens = [*running[beam[j]], token[j]]
                    score = top_list[j] / (len(tokens) ** length_penalty)
                    finished.append(Hypothesis(tokens, score, top_list[j]))
            finished = sorted(finished, key=lambda h: -h.score)[:B]
        if all(ends_here):
            break
        keep = sorted(range(K), key=lambda j: -(top_list[j] + (NEG if ends_here[j] else 0.0)))[
            :B
        ]  # the best that run on (the ended ones sink, as in HF)
        scores = torch.tensor([top_list[j] + (NEG if ends_here[j] else 0.0) for j in keep], device=device)
        running = [[*running[beam[j]], token[j]] for j in keep]
        cache.reorder(torch.tensor([beam[j] for j in keep]))
        fed = torch.tensor([[token[j]] for j in keep], device=device)
        logprobs = model(fed, cache)[:, -1].float().log_softmax(-1)
        # can a running beam still beat the worst finished hypothesis?
        length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else step + 1
        worst = finished[-1].score if len(finished) == B else NEG
        improvable = improvable and float(scores.max()) / length**length_penalty > worst
        if not improvable or (len(finished) == B and early_stopping is True):
            break
    return finished[:num_return]
