"""OpenAI response bodies and stream chunks built from engine Completions and TokenEvents.

Log-probabilities come in two shapes: the legacy completions one, {tokens, token_logprobs,
top_logprobs, text_offset} (what lm-eval's local-completions model parses), and chat's
{"content": [{token, logprob, bytes, top_logprobs}]}.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

# The engine's finish reasons as OpenAI clients know them ("abort" is vLLM's name for a cancelled one).
FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "abort"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: `data: {...}` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def finish_reason(reason: str | None) -> str | None:
    return None if reason is None else FINISH_REASONS.get(reason, reason)


class TokenText:
    """Each token's own text, cached: the strings of logprobs' `tokens` and top-logprob keys."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = self.tokenizer.decode([token_id])
        return text

    def offsets(self, ids: Sequence[int], start: int = 0) -> list[int]:
        """Where each token's text begins in decode(ids), plus start. A token that splits a multi-byte
        character has no place of its own; it gets the offset of the character it begins."""
        pieces = [self(i) for i in ids]
        if "\ufffd" not in "".join(pieces):
            out, pos = [], start
            for p in pieces:
                out.append(pos)
                pos += len(p)
            return out
        return [start + len(self.tokenizer.decode(list(ids[:k]))) for k in range(len(ids))]


def _top_dict(token_text: TokenText, top: Sequence[tuple[int, float]] | None) -> dict[str, float] | None:
    if top is None:
        return None
    out: dict[str, float] = {}
    for i, lp in top:
        out.setdefault(token_text(i), float(lp))  # two ids that print alike keep the likelier
    return out


def legacy_logprobs(
    token_text: TokenText,
    ids: Sequence[int],
    logprobs: Sequence[float | None],
    tops: Sequence[Sequence[tuple[int, float]] | None] | None,
    start: int = 0,
) -> dict[str, Any]:
    """Completions' logprobs object. With echo, ids are prompt then completion and the first prompt
    token's logprob and top are None (nothing precedes it)."""
    tops = tops if tops is not None else [None] * len(ids)
    return {
        "tokens": [token_text(i) for i in ids],
        "token_logprobs": [None if lp is None else float(lp) for lp in logprobs],
        "top_logprobs": [_top_dict(token_text, t) for t in tops],
        "text_offset": token_text.offsets(ids, start),
    }


def _chat_entry(token_text: TokenText, token_id: int, logprob: float) -> dict[str, Any]:
    text = token_text(token_id)
    return {"token": text, "logprob": float(logprob), "bytes": list(text.encode("utf-8"))}


def chat_logprobs(
    token_text: TokenText,
    ids: Sequence[int],
    logprobs: Sequence[float],
    tops: Sequence[Sequence[tuple[int, float]] | None] | None,
) -> dict[str, Any]:
    """Chat's logprobs object: one entry per generated token, each with its top alternatives."""
    tops = tops if tops is not None else [None] * len(ids)
    content = []
    for i, lp, top in zip(ids, logprobs, tops, strict=True):
        entry = _chat_entry(token_text, i, lp)
        entry["top_logprobs"] = [_chat_entry(token_text, t, tlp) for t, tlp in (top or [])]
        content.append(entry)
    return {"content": content}
