"""Incremental detokenization with stop strings.

A token may end in the middle of a UTF-8 character, and a stop string may span several tokens, so the
text of a stream is released only when it is safe: the decoded text is complete (no trailing U+FFFD of
a half character) and no suffix of it could still grow into a stop string. Decoding uses a short window
of recent tokens rather than the whole stream, so a step costs the same at token 10 and token 10,000;
the window starts a few tokens back because tokenizers that strip a leading space (sentencepiece) or
merge bytes across tokens decode a token differently on its own than after its predecessors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"
# tokens of context decoded before the new ones (enough for a 4-byte character split over 4 tokens)
WINDOW = 4


class TextStream:
    """Incremental detokenization with stop strings that may span tokens; never shows half a UTF-8
    character or text that could still become a stop string."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = (), skip_special: bool = True):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.skip_special = skip_special
        self.ids: list[int] = []
        self.text = ""  # all text released so far
        self.stopped = False
        self.stop_hit: str | None = None  # the stop string that ended the stream
        self._prefix = 0  # ids[_prefix:_read] were decoded already (the context of the window)
        self._read = 0
        self._held = ""  # decoded text withheld because it could begin a stop string

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special=self.skip_special)

    def _new_text(self) -> str:
        """Text the tokens after _read add, or "" while they end in an incomplete character."""
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if after.endswith(REPLACEMENT) and len(self.ids) - self._read < WINDOW:
            return ""  # wait for the rest of the character (a real U+FFFD shows after WINDOW tokens)
        self._prefix = max(0, len(self.ids) - WINDOW)
        self._read = len(self.ids)
        return after[len(before) :]

    def push(self, token: int) -> tuple[str, bool]:
        """(newly safe text, True when a stop string completed). On a stop, the text before it is
        released and the stop string itself is not; later pushes return ("", True)."""
        if self.stopped:
            return "", True
        self.ids.append(int(token))
        return self._release(self._held + self._new_text())

    def _release(self, pending: str) -> tuple[str, bool]:
        cut = min((i for i in (pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.stop_hit = next(s for s in self.stop if pending.find(s) == cut)
            self._held = ""
            return self._emit(pending[:cut]), True
        keep = _stop_prefix_len(pending, self.stop)
        self._held = pending[len(pending) - keep :] if keep else ""
        return self._emit(pending[: len(pending) - keep]), False

    def _emit(self, piece: str) -> str:
        self.text += piece
        return piece

    def finish(self) -> str:
        """The text held back at the end of the stream (no stop string matched)."""
        if self.stopped:
            return ""
        rest = self._decode(self.ids[self._prefix :])[
            len(self._decode(self.ids[self._prefix : self._read])) :
        ]
        self._read = len(self.ids)
        piece, self._held = self._held + rest, ""
        return self._emit(piece)


def _stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
