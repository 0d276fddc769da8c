"""Turning one row's raw logits into the next token: bias, constraint, penalties, then the sampler.

Order (Hugging Face's where it has one): logit_bias, constraint mask, repetition penalty (CTRL: over
prompt + output, positive logits divided, negative multiplied), frequency and presence penalties (OpenAI:
over the output), no-repeat n-gram ban; then argmax when temperature is 0, else temperature, top-k,
top-p, min-p, typical and a draw from the row's own generator. Each filter sees the distribution the one
before it left, as HF's warpers do. The reported log-probabilities are always those of the raw logits,
so a score means the same thing whatever the sampling settings.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from danlu.errors import ConfigError
from danlu.infer.params import SamplingParams

log = logging.getLogger(__name__)

NEG_INF = float("-inf")


@dataclass
class TokenChoice:
    token: int
    # log-softmax of the raw logits (fp32) at the chosen token
    logprob: float
    # the params.logprobs most likely (id, logprob) of the raw distribution, or None
    top: list[tuple[int, float]] | None


def warp(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    typical_p: float = 1.0,
) -> torch.Tensor:
    """Scaled logits [..., V] (fp32) with the tokens the filters drop set to -inf; never drops them all.

    top_k keeps the k highest (ties with the k-th too); top_p the smallest most-likely set whose mass
    reaches top_p; min_p the tokens with probability >= min_p * the top probability; typical_p the
    smallest set, taken in order of |-log p - entropy|, whose mass reaches typical_p.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0 for sampling, got {temperature} (0 means greedy)")
    x = logits.float() / temperature
    V = x.size(-1)
    if 0 < top_k < V:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, NEG_INF)
    if top_p < 1.0:
        x = _keep_mass(x, -x, top_p)
    if min_p > 0.0:
        probs = x.softmax(dim=-1)
        x = x.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), NEG_INF)
    if typical_p < 1.0:
        logp = x.log_softmax(dim=-1)
        entropy = -(logp.exp() * logp).nansum(dim=-1, keepdim=True)  # 0 * -inf is nan: those add 0
        x = _keep_mass(x, (-logp - entropy).abs(), typical_p)
    return x


def _keep_mass(x: torch.Tensor, rank: torch.Tensor, mass: float) -> torch.Tensor:
    """Keep the shortest prefix of tokens, taken by increasing rank, whose probability reaches mass
    (at least one token)."""
    order = torch.argsort(rank, dim=-1, stable=True)
    probs = x.softmax(dim=-1).gather(-1, order)
    before = probs.cumsum(dim=-1) - probs  # mass of the better-ranked tokens
    drop_sorted = before >= mass
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return x.masked_fill(drop, NEG_INF)


def sampling_only(params: SamplingParams) -> bool:
    """True when choosing a token needs no history: no bias, penalties, n-gram ban or constraint."""
    return (
        not params.logit_bias
        and params.constraint is None
        and params.repetition_penalty == 1.0
        and params.frequency_penalty == 0.0
        and params.presence_penalty == 0.0
        and params.no_repeat_ngram_size == 0
    )


def greedy_plain(params: SamplingParams) -> bool:
    """True when RowSampler.choose() is exactly the argmax of the raw logits (the engine may vectorize)."""
    return params.greedy and sampling_only(params)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator of its own for one request: seeded (reproducible whatever else runs) or fresh."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty on the tokens marked in `seen` (bool [..., V]): positive logits / penalty,
    negative ones * penalty."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def frequency_presence(
    logits: torch.Tensor, counts: torch.Tensor, frequency: float, presence: float
) -> torch.Tensor:
    """OpenAI's penalties: logit - count * frequency - (count > 0) * presence, counts over the output."""
    return logits - counts * frequency - (counts > 0).to(logits.dtype) * presence


class RowSampler:
    """One request's decoding state: penalties, bias, n-gram ban, constraint, sampling with its own
    torch.Generator."""

    def __init__(
        self,
        params: SamplingParams,
        prompt_ids: list[int],
        vocab_size: int,
        tokenizer: Any | None = None,
    ):
        self.params = params
        self.vocab_size = vocab_size
        self.history: list[int] = list(prompt_ids)
        self.output_counts: Counter[int] = Counter()
        self._seen: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None
        self._generator: torch.Generator | None = None
        self._bias: torch.Tensor | None = None
        if params.logit_bias:
            bad = [t for t in params.logit_bias if not 0 <= int(t) < vocab_size]
            if bad:
                raise ConfigError(
                    f"logit_bias: token ids {bad[:5]} are outside the vocabulary of {vocab_size}"
                )
            self._bias = torch.zeros(vocab_size)
            for t, b in params.logit_bias.items():
                self._bias[int(t)] = float(b)
        # n-gram ban: (n-1)-token prefix -> the tokens that followed it
        self._ngrams: dict[tuple[int, ...], set[int]] = {}
        n = params.no_repeat_ngram_size
        if n > 0:
            for i in range(len(self.history) - n + 1):
                self._add_ngram(i)
        self.constraint = None
        self.state: Any = None
        if params.constraint is not None:
            if tokenizer is None:
                raise ConfigError("constrained decoding needs the model's tokenizer")
            from danlu.infer.constrain import compile_constraint

            self.constraint = compile_constraint(params.constraint, tokenizer, vocab_size)
            self.state = self.constraint.start

    def generator(self, device: torch.device) -> torch.Generator:
        """The row's generator, made on the device of the first logits it samples from."""
        if self._generator is None:
            self._generator = make_generator(self.params.seed, device)
        return self._generator

    def _add_ngram(self, i: int) -> None:
        n = self.params.no_repeat_ngram_size
        gram = self.history[i : i + n]
        self._ngrams.setdefault(tuple(gram[:-1]), set()).add(gram[-1])

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """The row's logits [V] after bias, constraint, penalties and the n-gram ban (before sampling)."""
        p = self.params
        x = logits.float()
        if self._bias is not None:
            x = x + self._bias.to(x.device)
        if self.constraint is not None:
            x = x.masked_fill(~self.constraint.mask(self.state).to(x.device), NEG_INF)
        if p.repetition_penalty != 1.0 and self.history:
            x = repetition_penalty(x, self._seen_mask(x.device), p.repetition_penalty)
        if (p.frequency_penalty or p.presence_penalty) and self.output_counts:
            x = frequency_presence(x, self._count_vector(x.device), p.frequency_penalty, p.presence_penalty)
        n = p.no_repeat_ngram_size
        if n > 0 and len(self.history) >= n - 1:
            banned = self._ngrams.get(tuple(self.history[len(self.history) - n + 1 :]), ())
            if banned:
                x[torch.tensor(sorted(banned), device=x.device)] = NEG_INF
        return x

    def _seen_mask(self, device: torch.device) -> torch.Tensor:
        """Bool [V] of the tokens in prompt + output, kept up to date by record() (no rebuild a step)."""
        if self._seen is None or self._seen.device != device:
            self._seen = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
            self._seen[torch.tensor(sorted(set(self.history)), device=device)] = True
        return self._seen

    def _count_vector(self, device: torch.device) -> torch.Tensor:
        """Float [V] of each token's count in the output, kept up to date by record()."""
        if self._counts is None or self._counts.device != device:
            self._counts = torch.zeros(self.vocab_size, device=device)
            for t, c in self.output_counts.items():
                self._counts[t] = float(c)
        return self._counts

    def choose(self, logits: torch.Tensor) -> TokenChoice:
        """Pick the next token from raw fp32 logits [V] and record it (penalties, n-grams, constraint)."""
        p = self.params
        x = self.process(logits)
        if bool(torch.isneginf(x).all()):
            # every token banned (a bias of -100 everywhere, a constraint the vocabulary cannot continue)
            raise ConfigError("no token is allowed at this step: check logit_bias and the constraint")
        if p.greedy:
            token = int(x.argmax())
        else:
            probs = warp(x, p.temperature, p.top_k, p.top_p, p.min_p, p.typical_p).softmax(dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self.generator(probs.device)))
        choice = raw_choice(logits, token, p.logprobs)
        self.record(token)
        return choice

    def record(self, token: int) -> None:
        """Append a token chosen elsewhere (beam search, speculative decoding) to the row's history."""
        self.history.append(token)
        self.output_counts[token] += 1
        if self._seen is not None:
            self._seen[token] = True
        if self._counts is not None:
            self._counts[token] += 1
        n = self.params.no_repeat_ngram_size
        if n > 0 and len(self.history) >= n:
            self._add_ngram(len(self.history) - n)
        if self.constraint is not None:
            self.state = self.constraint.advance(self.state, token)

    @property
    def finished_by_constraint(self) -> bool:
        """The constraint is complete and allows nothing more: the engine stops with "stop"."""
        return self.constraint is not None and self.constraint.finished(self.state)


def raw_choice(logits: torch.Tensor, token: int, top: int | None) -> TokenChoice:
    """The chosen token with its log-probability (and the `top` best alternatives) under raw logits."""
    logp = logits.float().log_softmax(dim=-1)
    alternatives = None
    if top is not None:
        if top > 0:
            values, ids = torch.topk(logp, min(top, logp.size(-1)))
            alternatives = [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
        else:
            alternatives = []
    return TokenChoice(token, float(logp[token]), alternatives)
