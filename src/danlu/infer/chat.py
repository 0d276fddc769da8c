"""A multi-turn conversation with a model, streamed piece by piece through the engine.

Two modes. A chat-tuned model (its tokenizer has a chat template and its config says `chat: true`) gets
its template: danlu's own role tokens or an imported model's Jinja template. A base model has never seen
role tokens, so it is prompted in the transcript form of the conversations it was pretrained on (the
chitchat source): one line per turn with the speaker's label, and its reply ends at the end of its line.

The session keeps one engine slot's cache across turns: each turn's prompt starts with the previous
turns, so the engine's prefix cache runs only the new tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from danlu.errors import ConfigError, OutputExistsError
from danlu.infer.engine import Engine
from danlu.infer.params import SamplingParams
from danlu.io import atomic_write_text
from danlu.transcript import TRANSCRIPT_STOP, transcript_ids


@dataclass
class ChatSession:
    engine: Engine
    mode: str  # "chat" (the model's template) or "transcript" (speaker labels, for base models)
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_tokens=120, temperature=0.8))
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    last_cached_tokens: int = 0  # prompt tokens the engine did not recompute in the last turn

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        temperature: float = 0.8,
        top_k: int = 50,
        top_p: float = 0.95,
        max_new_tokens: int = 120,
        seed: int | None = None,
        system: str | None = None,
        **sampling: Any,
    ) -> ChatSession:
        engine = Engine.from_dir(model_dir, max_batch=1)
        chat = is_chat_model(model_dir)
        params = SamplingParams(
            max_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            **sampling,
        )
        return cls(engine=engine, mode="chat" if chat else "transcript", params=params, system=system)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def model(self) -> Any:
        return self.engine.model

    def reset(self) -> None:
        self.history.clear()

    def messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history

    def prompt_ids(self) -> list[int]:
        tok = self.tokenizer
        if self.mode == "chat":
            text = tok.apply_chat_template(self.messages(), add_generation_prompt=True)
            return tok.encode(text, allowed_special="all")
        return transcript_ids(tok, self.messages())

    def _fitting_prompt(self) -> list[int]:
        """The prompt, dropping the oldest turns (the system prompt stays) until the reply has room."""
        room = self.engine.max_len - self.params.max_tokens
        if room < 1:
            raise ConfigError(
                f"max_new_tokens={self.params.max_tokens} leaves no room in the context of {self.engine.max_len}"
            )
        ids = self.prompt_ids()
        while len(ids) > room and len(self.history) > 1:
            del self.history[: min(2, len(self.history) - 1)]  # the oldest exchange; never the new turn
            ids = self.prompt_ids()
        return ids[-room:]

    def reply(self, user_text: str) -> Iterator[str]:
        """Add the user's turn, stream the model's reply, and add the reply to the history."""
        self.history.append({"role": "user", "content": user_text})
        params = self.params
        if params.seed is not None:  # a new draw each turn, reproducible from the session's seed
            params = replace(params, seed=params.seed + len(self.history))
        if self.mode == "transcript":  # the model's turn ends with its line
            params = replace(params, stop=[*params.stop, TRANSCRIPT_STOP])
        shown = ""
        cached = self.engine.counters["cached_prompt_tokens"]
        for event in self.engine.stream(self._fitting_prompt(), params):
            piece = event.text if shown else event.text.lstrip()
            if piece:
                shown += piece
                yield piece
            if event.finished:
                break
        self.last_cached_tokens = self.engine.counters["cached_prompt_tokens"] - cached
        self.history.append({"role": "assistant", "content": shown.strip()})

    def save(self, path: str | Path) -> Path:
        """Write the conversation as JSON ({"messages": [...]}); an existing file is never replaced."""
        path = Path(path)
        if path.exists():
            raise OutputExistsError(f"{path} exists; /save to a new file name")
        atomic_write_text(
            path, json.dumps({"messages": self.messages()}, ensure_ascii=False, indent=1) + "\n"
        )
        return path


def is_chat_model(model_dir: str | Path) -> bool:
    """Whether a model dir is chat-tuned (its config says `chat: true`): its chat template, not the
    transcript, is how to prompt it."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return bool(config.get("chat"))
