"""Log-likelihood scoring of (context, continuation) requests, batched, as lm-eval-harness scores them.

Tokenization follows lm-eval's HFLM: trailing spaces of the context move to the continuation, the pair
is encoded whole and the continuation's tokens are what the whole encoding has past the context's
(so merges across the boundary are kept); an empty context is replaced by one prefix token (the end-of-
text token, as HFLM does). Inputs longer than the model's context keep their last max_len + 1 tokens.
Requests are sorted by length, right-padded into batches (causal attention makes padding on the right
harmless), and requests with the same input (one-token continuations after a shared context, e.g.
MMLU's A/B/C/D) share one forward pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from danlu.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    logprob: float  # summed log-probability (nats) of the continuation's tokens
    greedy: bool  # every continuation token is the argmax
    n_tokens: int


def prefix_token_id(tok: Any) -> int:
    """The token HFLM puts before an empty context: end-of-text, else beginning-of-text."""
    for name in ("eos_id", "bos_id"):
        value = getattr(tok, name, None)
        if value is not None:
            return int(value)
    raise ConfigError("the tokenizer has neither an end-of-text nor a beginning-of-text token")


def encode_pair(tok: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's HFLM._encode_pair (context ids, continuation ids)."""
    if context == "":
        return [prefix_token_id(tok)], tok.encode(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return ctx, whole[len(ctx) :]


class Scorer:
    """Scores requests with a danlu model (or any callable ids [B,T] -> logits [B,T,V])."""

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        tok: Any,
        batch_size: int = 16,
        max_length: int | None = None,
        device: str | torch.device = "cpu",
    ):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.model = model
        self.tok = tok
        self.batch_size = batch_size
        cfg = getattr(model, "cfg", None)
        self.max_length = max_length or (cfg.max_seq_len if cfg is not None else 2048)
        self.device = torch.device(device)
        self.tokens_forwarded = 0  # input tokens run through the model (efficiency figures)
        self.forward_calls = 0

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[Score]:
        pairs = [encode_pair(self.tok, c, x) for c, x in requests]
        return self.loglikelihood_tokens(pairs)

    def loglikelihood_tokens(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[Score]:
        """Scores of (context ids, continuation ids) pairs, in input order."""
        return [Score(float(lp.double().sum()), greedy, len(lp)) for lp, greedy in self.token_logprobs(pairs)]

    def token_logprobs(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[torch.Tensor, bool]]:
        """Per-token log-probabilities of each pair's continuation and whether all are the argmax."""
        L = self.max_length
        # one forward per distinct input; each request reads its continuation off the last positions
        inputs: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for i, (ctx, cont) in enumerate(pairs):
            if not cont:
                raise ConfigError(f"request {i} has an empty continuation after tokenization")
            if len(cont) > L:
                raise ConfigError(
                    f"request {i}: a continuation of {len(cont)} tokens exceeds the context of {L}"
                )
            whole = (list(ctx) + list(cont))[-(L + 1) :]
            inputs.setdefault(tuple(whole[:-1]), []).append((i, list(cont)))
        # the longest first, as lm-eval does: an out-of-memory shows up at once, padding stays small
        order = sorted(inputs, key=lambda k: -len(k))
        out: list[tuple[torch.Tensor, bool] | None] = [None] * len(pairs)
        with torch.no_grad():
            starts = range(0, len(order), self.batch_size)
            for b in tqdm(starts, desc="scoring", unit="batch", leave=False, disable=len(starts) < 2):
                batch = order[b : b + self.batch_size]
                ids = torch.zeros(len(batch), len(batch[0]), dtype=torch.long)
                for r, key in enumerate(batch):
                    ids[r, : len(key)] = torch.tensor(key, dtype=torch.long)
                logits = self.model(ids.to(self.device))
                self.tokens_forwarded += sum(len(k) for k in batch)
                self.forward_calls += 1
                for r, key in enumerate(batch):
                    n = len(key)
                    for i, cont in inputs[key]:
                        logp = F.log_softmax(logits[r, n - len(cont) : n].float(), dim=-1)
                        target = torch.tensor(cont, dtype=torch.long, device=logp.device)
                        lp = logp.gather(-1, target[:, None]).squeeze(-1).cpu()
                        out[i] = (lp, bool((logp.argmax(-1) == target).all()))
        return [o for o in out if o is not None]


# --- multiple-choice metrics ---------------------------------------------------------------------


def argmax_first(values: Sequence[float]) -> int:
    """Index of the largest value, the first on ties (numpy's argmax, which lm-eval uses)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def mc_metrics(scores: Sequence[Score], choices: Sequence[str], gold: int) -> dict[str, float]:
    """acc, acc_norm (loglik per character of the choice, lm-eval's definition) and acc_norm_tokens
    (loglik per continuation token) of one item."""
    lls = [s.logprob for s in scores]
    per_char = [ll / max(len(c), 1) for ll, c in zip(lls, choices, strict=True)]
    per_token = [s.logprob / s.n_tokens for s in scores]
    return {
        "acc": float(argmax_first(lls) == gold),
        "acc_norm": float(argmax_first(per_char) == gold),
        "acc_norm_tokens": float(argmax_first(per_token) == gold),
    }


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean (sample standard deviation / sqrt n), as lm-eval reports it."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = sum(values) / n
    var = sum((v - mu) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)
