"""The chat template: role tokens around each message, so conversations tokenize the same in training
(SFT, with a loss mask on the assistant's words) and at inference (with a generation prompt).

  <|bos|><|system|>You are terse.<|end|><|user|>Hi<|end|><|assistant|>Hello.<|end|>
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from danlu.errors import TokenizerError

ROLES = ("system", "user", "assistant")
END = "<|end|>"


def role_token(role: str) -> str:
    return f"<|{role}|>"


def validate_messages(messages: Sequence[dict[str, Any]]) -> None:
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise TokenizerError(f"message {i} must be a dict with a string 'content', got {m!r:.80}")
        if m.get("role") not in ROLES:
            raise TokenizerError(f"message {i} has role {m.get('role')!r}; roles are {', '.join(ROLES)}")
        if m["role"] == "system" and i != 0:
            raise TokenizerError(f"message {i}: a system message may only come first")


def render(messages: Sequence[dict[str, Any]], bos: str, add_generation_prompt: bool) -> str:
    validate_messages(messages)
    text = bos + "".join(f"{role_token(m['role'])}{m['content']}{END}" for m in messages)
    return text + (role_token("assistant") if add_generation_prompt else "")
