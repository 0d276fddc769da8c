"""A multi-turn conversation with a model, streamed piece by piece.

Two modes. A chat-tuned model (its tokenizer has a chat template and its config says `chat: true`) gets
the template with role tokens. A base model has never seen role tokens, so it is prompted in the
transcript form of the conversations it was pretrained on (the chitchat source): one line per turn,
with the speaker's label, and its reply ends at the end of its line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from danlu.data.sources import CHAT_LABELS
from danlu.infer.sampling import generate

USER, BOT = CHAT_LABELS


@dataclass
class ChatSession:
    model: Any
    tokenizer: Any
    mode: str  # "chat" (role tokens) or "transcript" (speaker labels, for base models)
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    max_new_tokens: int = 120
    seed: int | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_dir(cls, model_dir: str | Path, **sampling: Any) -> ChatSession:
        from danlu.model_dir import load_model

        model, tok, _ = load_model(model_dir)
        config = json.loads((Path(model_dir) / "config.json").read_text())
        mode = "chat" if config.get("chat") else "transcript"
        return cls(model=model, tokenizer=tok, mode=mode, **sampling)

    def reset(self) -> None:
        self.history.clear()

    def prompt_ids(self) -> list[int]:
        if self.mode == "chat":
            text = self.tokenizer.apply_chat_template(self.history, add_generation_prompt=True)
            return self.tokenizer.encode(text, allowed_special="all")
        lines = [f"{USER if m['role'] == 'user' else BOT}: {m['content']}" for m in self.history]
        return self.tokenizer.encode("\n".join(lines) + f"\n{BOT}:", bos=True)

    def reply(self, user_text: str) -> Iterator[str]:
        """Add the user's turn, stream the model's reply, and add the reply to the history."""
        self.history.append({"role": "user", "content": user_text})
        tok = self.tokenizer
        stop = tok.chat_stop_ids() if self.mode == "chat" else {tok.eos_id}
        stream = generate(
            self.model,
            self.prompt_ids(),
            self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            stop_ids=tuple(stop),
            seed=None if self.seed is None else self.seed + len(self.history),  # a new draw each turn
        )
        ids: list[int] = []
        shown = ""
        for i in stream:
            ids.append(i)
            text = tok.decode(ids, skip_special=True)
            if self.mode == "transcript" and "\n" in text:
                text = text.split("\n", 1)[0]  # the model's turn ends with its line
                yield text[len(shown) :].rstrip()
                shown = text
                break
            if text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                continue
            piece = text[len(shown) :]
            if not shown:
                piece = piece.lstrip()
            yield piece
            shown = text
        self.history.append({"role": "assistant", "content": shown.strip()})
