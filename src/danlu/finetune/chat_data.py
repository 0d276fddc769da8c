"""Conversations for SFT: one record format in, bad records counted and skipped (or refused).

A conversation is `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`. Two
other common layouts are read into it: Alpaca `{"instruction", "input", "output"[, "system"]}` and
ShareGPT `{"conversations": [{"from": "human"|"gpt"|"system", "value": str}]}`. `check` names what is
wrong with a conversation (unknown role, empty turn, no assistant turn, system not first, two turns of
one speaker in a row); `Screen` counts those reasons and keeps a few examples for the stage manifest.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from danlu.errors import DataError

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "system": "system",
}
REASONS = (
    "unreadable",
    "unknown_role",
    "empty_turn",
    "no_assistant_turn",
    "system_not_first",
    "same_speaker_twice",
    "too_long",
)


class BadConversation(ValueError):
    """A record that is not a usable conversation; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def to_messages(record: dict[str, Any]) -> list[Message]:
    """The messages of a record in any of the three layouts (not yet checked)."""
    if not isinstance(record, dict):
        raise BadConversation("unreadable", f"a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            raise BadConversation("unreadable", "'messages' must be a list of objects")
        return [{"role": str(m.get("role")), "content": m.get("content")} for m in msgs]
    if "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise BadConversation("unreadable", "'conversations' must be a list of objects")
        out = []
        for t in turns:
            who = str(t.get("from", t.get("role")))
            out.append({"role": _SHAREGPT_ROLES.get(who.lower(), who), "content": t.get("value")})
        return out
    if "instruction" in record and "output" in record:
        prompt = str(record["instruction"])
        if record.get("input"):
            prompt += "\n\n" + str(record["input"])
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
        if record.get("system"):
            msgs.insert(0, {"role": "system", "content": str(record["system"])})
        return msgs
    raise BadConversation(
        "unreadable", "a record needs 'messages', 'conversations' (ShareGPT) or 'instruction'+'output'"
    )


def check(messages: list[Message]) -> list[Message]:
    """The messages if they form a trainable conversation, else BadConversation with the reason."""
    if not messages:
        raise BadConversation("empty_turn", "no messages")
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise BadConversation("unknown_role", f"message {i} has role {m['role']!r}")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise BadConversation("empty_turn", f"message {i} ({m['role']}) is empty")
        if m["role"] == "system" and i != 0:
            raise BadConversation("system_not_first", f"message {i} is a system message")
        if i and m["role"] == messages[i - 1]["role"]:
            raise BadConversation("same_speaker_twice", f"messages {i - 1} and {i} are both {m['role']}")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadConversation("no_assistant_turn", "nothing to learn: no assistant message")
    return messages


@dataclass
class Screen:
    """Counts of kept and skipped conversations by reason, with a few examples of each skip.

    on_bad "skip" counts and drops a bad conversation; "refuse" raises DataError at the first one."""

    on_bad: str = "skip"
    max_examples: int = 3
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, detail: str, where: str) -> None:
        if self.on_bad == "refuse":
            raise DataError(f"{where}: {reason} ({detail}); fix the record or set sft.data.on_bad=skip")
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self.max_examples:
            shown.append(f"{where}: {detail}"[:300])

    def report(self) -> dict[str, Any]:
        return {"kept": self.kept, "skipped": dict(self.skipped), "examples": self.examples}


def screen(records: Iterable[tuple[str, Any]], sc: Screen) -> Iterator[tuple[str, list[Message]]]:
    """(id, checked messages) of every usable (id, record); the others go to the Screen."""
    for rid, record in records:
        try:
            msgs = check(to_messages(record))
        except BadConversation as e:
            sc.skip(e.reason, str(e).split(": ", 1)[1], rid)
            continue
        sc.kept += 1
        yield rid, msgs


def read_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(id, record) of each line of a JSONL file (or each file of a folder); an unparsable line is
    yielded as None, for the Screen to count as unreadable."""
    path = Path(path).expanduser()
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise DataError(f"SFT data {path} not found (a .jsonl file or a folder of them)")
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{f.name}:{n}", json.loads(line)
                except json.JSONDecodeError:
                    yield f"{f.name}:{n}", None
