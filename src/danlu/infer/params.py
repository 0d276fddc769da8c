"""What one generation request asks for: the sampling, penalties, stops, logprobs and constraint.

One dataclass serves the engine, `danlu generate`/`danlu chat` flags and the server's OpenAI fields, so a
setting means the same thing everywhere. Defaults leave the model's distribution untouched (temperature 1,
no filtering, no penalties); temperature 0 is greedy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from danlu.errors import check

CONSTRAINT_KINDS = ("choice", "regex", "json_schema", "json")


@dataclass
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 1.0
    # 0 disables top-k; 1.0 disables top-p and typical; 0.0 disables min-p
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    # penalties: repetition divides positive logits (multiplies negative ones) of every token seen in
    # prompt or output (CTRL / HF); frequency and presence subtract per output occurrence / once (OpenAI)
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    # token id -> value added to its logit (OpenAI: -100 bans, +100 forces)
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    # False: the tokenizer's end ids (eos, the chat template's end-of-turn) stop generation too
    ignore_eos: bool = False
    seed: int | None = None
    # log-probabilities of the chosen tokens and this many alternatives per step (None: none computed)
    logprobs: int | None = None
    # log-probabilities of the prompt's tokens (and this many alternatives), for echo / scoring
    prompt_logprobs: int | None = None
    # {"type": "choice", "choices": [...]}, {"type": "regex", "pattern": ...},
    # {"type": "json_schema", "schema": {...}} or {"type": "json"} (any JSON object)
    constraint: dict[str, Any] | None = None
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        check(self.max_tokens >= 0, "max_tokens", "must be >= 0")
        check(self.temperature >= 0, "temperature", "must be >= 0 (0 is greedy)")
        check(self.top_k >= 0, "top_k", "must be >= 0 (0 disables it)")
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        check(0 <= self.min_p < 1, "min_p", "must be in [0, 1)")
        check(0 < self.typical_p <= 1, "typical_p", "must be in (0, 1]")
        check(self.repetition_penalty > 0, "repetition_penalty", "must be > 0 (1 disables it)")
        check(-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]")
        check(-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]")
        check(self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size", "must be >= 0")
        check(all(-100 <= b <= 100 for b in self.logit_bias.values()), "logit_bias", "values in [-100, 100]")
        check(all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings")
        check(self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs", "must be in [0, 20]")
        check(
            self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20, "prompt_logprobs", "in [0, 20]"
        )
        if self.constraint is not None:
            kind = self.constraint.get("type") if isinstance(self.constraint, dict) else None
            check(
                kind in CONSTRAINT_KINDS, "constraint.type", f"must be one of {', '.join(CONSTRAINT_KINDS)}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
