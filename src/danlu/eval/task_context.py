"""What the diagnostic and safety tasks of `danlu eval` share: the model, how to prompt it, how to decode.

A chat model (its config says `chat: true`) gets requests through its chat template and stops at the
end of its turn; a base model gets them as a transcript line ("User: ...\\nBot:") and stops at the end
of the line, as `danlu chat` prompts it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from danlu.eval.metrics import bootstrap_ci
from danlu.eval.scoring import mean_stderr


@dataclass(frozen=True)
class TaskContext:
    model: Any
    tok: Any
    cfg: Any  # danlu.eval.harness.EvalConfig
    model_dir: Path | None = None
    device: torch.device | str = "cpu"

    @property
    def is_chat(self) -> bool:
        if self.model_dir is None:
            return False
        from danlu.model_dir import read_metadata

        return bool(read_metadata(self.model_dir).get("chat"))

    def request_ids(self, request: str) -> tuple[list[int], set[int], tuple[str, ...]]:
        """(prompt ids, stop ids, stop strings) of a user request."""
        messages = [{"role": "user", "content": request}]
        tok = self.tok
        if self.is_chat:
            text = tok.apply_chat_template(messages, add_generation_prompt=True)
            return tok.encode(text, allowed_special="all"), set(tok.chat_stop_ids()), ()
        from danlu.transcript import TRANSCRIPT_STOP, transcript_ids

        eos = getattr(tok, "eos_id", None)
        return transcript_ids(tok, messages), ({eos} if eos is not None else set()), (TRANSCRIPT_STOP,)

    def continue_ids(
        self,
        ids: Sequence[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        stop_ids: Iterable[int] = (),
    ) -> list[int]:
        """New token ids after ids (greedy at temperature 0), ending before a stop id."""
        from danlu.infer.sampling import generate

        stops = set(stop_ids)
        out = []
        for t in generate(
            self.model, list(ids), max_new_tokens, temperature=temperature, stop_ids=stops, seed=seed
        ):
            if t in stops:
                break
            out.append(t)
        return out

    def reply(self, request: str, max_new_tokens: int, seed: int | None = None) -> str:
        """The model's greedy answer to a user request, cut at its stop strings."""
        ids, stop_ids, stop_strings = self.request_ids(request)
        text = self.tok.decode(
            self.continue_ids(ids, max_new_tokens, stop_ids=stop_ids, seed=seed), skip_special=True
        )
        text = text.lstrip()
        for s in stop_strings:
            text = text.split(s)[0]
        return text.strip()


def summary(name: str, values: Sequence[float]) -> dict[str, Any]:
    """The mean of per-item values under `name`, with its standard error and bootstrap interval."""
    return {
        name: sum(values) / len(values),
        f"{name}_stderr": mean_stderr(values),
        f"{name}_ci95": list(bootstrap_ci(values)),
    }
