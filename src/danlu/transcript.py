"""The chat transcript form: one line per turn, "A: ..." and "B: ...".

The chitchat source is written in it (danlu.data.sources), so a base model pretrained on it is prompted
in it too (`danlu chat`, and `danlu serve`'s chat endpoint for a model that is not chat-tuned): the user
is A, the model is B, and the model's reply ends at the end of its line.
"""

from __future__ import annotations

from typing import Any

CHAT_LABELS = ("A", "B")
USER, BOT = CHAT_LABELS
TRANSCRIPT_STOP = "\n"  # a turn is one line


def chat_transcript(turns: list[str]) -> str:
    """One line per turn, speakers alternating between the two CHAT_LABELS."""
    return "\n".join(f"{CHAT_LABELS[i % 2]}: {t}" for i, t in enumerate(turns))


def transcript_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """A base model's prompt for a conversation ({role, content} messages): the system text on the
    first line, one labelled line per turn, then the bot's label opening its turn."""
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    lines = [
        f"{USER if m['role'] == 'user' else BOT}: {m['content']}" for m in messages if m["role"] != "system"
    ]
    head = f"{system}\n" if system else ""
    return tokenizer.encode(head + "\n".join(lines) + f"\n{BOT}:", bos=True)
