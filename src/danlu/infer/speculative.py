"""Speculative decoding with a draft model (Leviathan et al. 2023; Chen et al. 2023).

Each round the small draft model proposes k tokens one by one; the target model scores all of them in
one forward, which gives its distribution after every prefix of the proposal. Draft token i is kept
with probability min(1, p_i / q_i) (p the target's, q the draft's probability of it); at the first
rejection the token is drawn from the residual max(0, p - q), renormalized, and the round ends; when
all k are kept, one more token comes from the target's distribution after them. The tokens that come
out are distributed exactly as the target's own samples would be; when greedy (temperature 0) p and q
are one-hot, so the output is the target's greedy output, token for token.

Both models keep a KV cache. The target's holds every committed token but the newest (which the next
verify forward feeds); the draft's holds a prefix of them, and each round feeds it whatever it lacks.
Rejected proposals are rolled back by truncating both caches (their stale keys are never attended).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from danlu.errors import ConfigError
from danlu.infer.params import SamplingParams
from danlu.infer.processors import make_generator, sampling_only, warp
from danlu.model.kv_cache import KVCache


@dataclass
class SpeculativeStats:
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        """The share of drafted tokens the target kept."""
        return self.accepted / self.drafted if self.drafted else 0.0


def distribution(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The probabilities [..., V] a sampler with these params draws from (one-hot when greedy)."""
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.size(-1)).float()
    return warp(
        logits, params.temperature, params.top_k, params.top_p, params.min_p, params.typical_p
    ).softmax(-1)


def verify(
    p: torch.Tensor, q: torch.Tensor, drafted: list[int], generator: torch.Generator | None = None
) -> tuple[int, int]:
    """(how many drafted tokens are kept, the token that follows them).

    p [k+1, V]: the target's distributions after each prefix of the draft; q [k, V]: the draft's, from
    which drafted [k] were sampled.
    """
    for i, token in enumerate(drafted):
        ratio = p[i, token] / q[i, token]
        if ratio >= 1 or float(torch.rand((), generator=generator, device=p.device)) < float(ratio):
            continue
        residual = (p[i] - q[i]).clamp_min(0)
        if float(residual.sum()) <= 0:  # p == q up to rounding: nothing to correct towards
            residual = p[i]
        return i, int(torch.multinomial(residual, 1, generator=generator))
    return len(drafted), int(torch.multinomial(p[len(drafted)], 1, generator=generator))


@torch.no_grad()
def speculative_generate(
    target: torch.nn.Module,
    draft: torch.nn.Module,
    prompt_ids: list[int],
    params: SamplingParams,
    draft_k: int = 4,
    end_ids: Iterable[int] = (),
    stats: SpeculativeStats | None = None,
) -> Iterator[int]:
    """Stream up to params.max_tokens new tokens continuing prompt_ids, distributed as the target's
    own samples (or equal to its greedy output); `stats` counts the drafted and accepted tokens."""
    if not sampling_only(params):
        raise ConfigError(
            "speculative decoding supports temperature, top-k, top-p, min-p and typical sampling only, "
            "not penalties, logit_bias, n-gram bans or constraints"
        )
    if draft_k < 1:
        raise ConfigError(f"draft_k must be >= 1, got {draft_k}")
    if target.cfg.vocab_size != draft.cfg.vocab_size:  # type: ignore[union-attr]
        raise ConfigError(
            f"the draft's vocabulary ({draft.cfg.vocab_size}) differs from the target's "  # type: ignore[union-attr]
            f"({target.cfg.vocab_size}); both models need the same tokenizer"  # type: ignore[union-attr]
        )
    if not prompt_ids:
        raise ConfigError("the prompt is empty; give at least one token (e.g. encode with bos=True)")
    budget = params.max_tokens
    context = min(target.cfg.max_seq_len, draft.cfg.max_seq_len)  # type: ignore[union-attr]
    if len(prompt_ids) + budget > context:
        raise ConfigError(
            f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({budget}) exceeds the shorter context "
            f"of the two models ({context}); shorten the prompt or lower max_tokens"
        )
    stats = stats if stats is not None else SpeculativeStats()
    ends = set(end_ids)
    device = target.embed.weight.device  # type: ignore[union-attr]
    draft_device = draft.embed.weight.device  # type: ignore[union-attr]
    generator = make_generator(params.seed, device)
    size = len(prompt_ids) + budget + draft_k
    tcache = KVCache.for_model(target, batch=1, max_len=size)
    dcache = KVCache.for_model(draft, batch=1, max_len=size)
    seq = list(prompt_ids)
    if len(seq) > 1:
        target(torch.tensor([seq[:-1]], device=device), tcache)
    produced = 0
    while produced < budget:
        k = min(draft_k, budget - produced - 1)  # the round's last token comes from the target anyway
        drafted, qs = [], []
        held = int(dcache.lengths[0])
        fed = seq[held:]
        for _ in range(k):
            logits = draft(torch.tensor([fed], device=draft_device), dcache)[0, -1].to(device)
            q = distribution(logits, params)
            token = int(q.argmax()) if params.greedy else int(torch.multinomial(q, 1, generator=generator))
            drafted.append(token)
            qs.append(q)
            fed = [token]
        # one target forward scores the newest committed token and every drafted one
        start = len(seq) - 1
        logits = target(torch.tensor([[seq[-1], *drafted]], device=device), tcache)[0]
        p = distribution(logits, params)
        if params.greedy:  # the same test, without drawing: keep while the draft agrees with argmax
            n = next((i for i, t in enumerate(drafted) if t != int(p[i].argmax())), k)
            nxt = int(p[n].argmax())
        else:
            n, nxt = verify(p, torch.stack(qs) if qs else p[:0], drafted, generator)
        stats.rounds += 1
        stats.drafted += k
        stats.accepted += n
        new = [*drafted[:n], nxt]
        tcache.truncate(start + 1 + n)  # keeps seq + the accepted drafts; nxt is fed next round
        dcache.truncate(min(int(dcache.lengths[0]), start + 1 + n))
        for token in new:
            seq.append(token)
            produced += 1
            yield token
            if token in ends or produced >= budget:
                return
