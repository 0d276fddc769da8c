"""A chat model as a function of conversations: batched replies through the inference engine.

The AI-feedback builders (samples against references, RLAIF, constitutional critique and revision)
all ask a model for replies to conversations. `ChatModel` renders each conversation under the
model's chat template up to the assistant's opening, runs the batch through `danlu.infer`'s engine,
and returns the reply texts. A conversation longer than the context keeps its last tokens (the end of
a judge's rubric holds the answers and the verdict request). Called with one string it is a
`danlu.eval.judge.Judge`: the string is the user's message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from danlu.errors import ConfigError
from danlu.finetune import templates
from danlu.infer.engine import Engine
from danlu.infer.params import SamplingParams

Message = dict[str, str]
# the judge's three verdicts (danlu.eval.judge): with verdict="choice" a reply is exactly one of them
VERDICTS = ["[[A]]", "[[B]]", "[[C]]"]


@dataclass
class ChatModel:
    engine: Engine
    template: str
    params: SamplingParams

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        max_tokens: int = 96,
        temperature: float = 0.8,
        top_p: float = 0.95,
        seed: int = 0,
        max_batch: int = 8,
        template: str = "auto",
        device: str = "cpu",
    ) -> ChatModel:
        engine = Engine.from_dir(model_dir, device=device, max_batch=max_batch, prefix_cache=True)
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
        return cls(engine, templates.resolve(template, engine.tokenizer), params)

    @property
    def name(self) -> str:
        return self.engine.model_name

    def _prompt(self, messages: Sequence[Message], max_tokens: int) -> list[int]:
        ids = templates.prompt_ids(self.engine.tokenizer, list(messages), self.template)
        room = self.engine.max_len - max_tokens
        if room < 8:
            raise ConfigError(
                f"max_tokens={max_tokens} leaves no room for a prompt in the context of {self.engine.max_len}"
            )
        return ids[-room:]

    def replies(
        self, conversations: Sequence[Sequence[Message]], seed: int | None = None, **overrides: Any
    ) -> list[str]:
        """One reply per conversation (ending with a user message); request k samples with seed + k,
        so a batch is reproducible whatever else runs beside it."""
        base = replace(self.params, **overrides)
        first = base.seed if seed is None else seed
        params = [replace(base, seed=None if first is None else first + k) for k in range(len(conversations))]
        prompts = [self._prompt(c, p.max_tokens) for c, p in zip(conversations, params, strict=True)]
        return [c.text.strip() for c in self.engine.generate(prompts, params)]

    def __call__(self, prompt: str) -> str:
        return self.replies([[{"role": "user", "content": prompt}]])[0]


@dataclass
class VerdictJudge:
    """A judge whose reply is constrained to one verdict ("choice") or free text ending in one
    ("free", the MT-Bench form; a small model rarely produces a parsable verdict that way)."""

    model: ChatModel
    verdict: str = "choice"
    max_tokens: int = 256

    def __post_init__(self) -> None:
        if self.verdict not in ("choice", "free"):
            raise ConfigError(f"judge verdict mode must be choice or free, got {self.verdict!r}")
        self._replies: dict[str, str] = {}

    def prefetch(self, prompts: Sequence[str]) -> None:
        """Judge many prompts in one batch; later calls with them return the kept replies (the
        judge decodes greedily, so a reply depends on its prompt only)."""
        todo = list(dict.fromkeys(p for p in prompts if p not in self._replies))
        if not todo:
            return
        convos = [[{"role": "user", "content": p}] for p in todo]
        if self.verdict == "choice":  # greedy over the three verdict strings only
            spec = {"type": "choice", "choices": VERDICTS}
            texts = self.model.replies(convos, max_tokens=8, temperature=0.0, constraint=spec)
        else:
            texts = self.model.replies(convos, max_tokens=self.max_tokens, temperature=0.0)
        self._replies.update(zip(todo, texts, strict=True))

    def __call__(self, prompt: str) -> str:
        self.prefetch([prompt])
        return self._replies.pop(prompt)
