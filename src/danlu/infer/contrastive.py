"""Contrastive decoding (Li et al. 2022): a strong "expert" and a weak "amateur" model, greedy.

Among the tokens the expert finds plausible (p_expert >= alpha * max p_expert), take the one that most
separates the two models: argmax log p_expert - log p_amateur. The amateur's common failure modes
(repetition, blandness) score low because the amateur likes them too, while the cutoff keeps the
expert's implausible tokens (which the amateur also dislikes) out of reach. Both models keep their own
KV cache and must share the vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from danlu.errors import ConfigError
from danlu.model.kv_cache import KVCache


def contrastive_scores(
    expert_logits: torch.Tensor,
    amateur_logits: torch.Tensor,
    alpha: float = 0.1,
    amateur_temperature: float = 1.0,
) -> torch.Tensor:
    """log p_expert - log p_amateur [..., V] on the plausible tokens, -inf elsewhere."""
    if not 0 < alpha <= 1:
        raise ConfigError(f"contrastive alpha must be in (0, 1], got {alpha}")
    if amateur_temperature <= 0:
        raise ConfigError(f"amateur_temperature must be > 0, got {amateur_temperature}")
    expert = expert_logits.float().log_softmax(-1)
    amateur = (amateur_logits.float() / amateur_temperature).log_softmax(-1)
    # log p >= log alpha + max log p is the cutoff p >= alpha * max p, without underflow
    plausible = expert >= expert.amax(-1, keepdim=True) + torch.log(torch.tensor(alpha))
    return (expert - amateur).masked_fill(~plausible, float("-inf"))


@torch.no_grad()
def contrastive_generate(
    expert: torch.nn.Module,
    amateur: torch.nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    alpha: float = 0.1,
    amateur_temperature: float = 1.0,
    end_ids: Iterable[int] = (),
) -> Iterator[int]:
    """Stream the greedy contrastive continuation of prompt_ids; stops after an end id."""
    if expert.cfg.vocab_size != amateur.cfg.vocab_size:  # type: ignore[union-attr]
        raise ConfigError(
            f"the amateur's vocabulary ({amateur.cfg.vocab_size}) differs from the expert's "  # type: ignore[union-attr]
            f"({expert.cfg.vocab_size}); both models need the same tokenizer"  # type: ignore[union-attr]
        )
    if not prompt_ids:
        raise ConfigError("the prompt is empty; give at least one token (e.g. encode with bos=True)")
    context = min(expert.cfg.max_seq_len, amateur.cfg.max_seq_len)  # type: ignore[union-attr]
    if len(prompt_ids) + max_new_tokens > context:
        raise ConfigError(
            f"the prompt ({len(prompt_ids)} tokens) plus {max_new_tokens} new tokens exceeds the shorter "
            f"context of the two models ({context}); shorten the prompt or lower max_new_tokens"
        )
    ends = set(end_ids)
    models = (expert, amateur)
    caches = [KVCache.for_model(m, batch=1, max_len=len(prompt_ids) + max_new_tokens) for m in models]
    fed = torch.tensor([prompt_ids])
    for i in range(max_new_tokens):
        e, a = (m(fed.to(m.embed.weight.device), c)[0, -1] for m, c in zip(models, caches, strict=True))
        token = int(contrastive_scores(e, a.to(e.device), alpha, amateur_temperature).argmax())
        yield token
        if token in ends or i + 1 == max_new_tokens:
            return
        fed = torch.tensor([[token]])
