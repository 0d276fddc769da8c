"""Basic normalization and exact dedup: the cleaning every corpus gets before anything else."""

from __future__ import annotations

import hashlib
import re
import unicodedata

# C0/C1 control characters except tab and newline; also zero-width and BOM characters.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")
_UNICODE_SPACES = re.compile(r"[\u00a0\u2000-\u200a\u202f\u205f\u3000]")


def normalize(text: str) -> str:
    """NFC, one newline convention, no control characters, no trailing spaces, at most one blank line."""
    # strip characters before composing, so removing one cannot leave an uncomposed pair behind
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _UNICODE_SPACES.sub(" ", text)
    text = unicodedata.normalize("NFC", text)
    text = _TRAILING_SPACE.sub("\n", text + "\n")
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n").rstrip()


def text_hash(text: str) -> str:
    """Key for exact dedup: the normalized text with case and whitespace folded."""
    return hashlib.sha256(" ".join(text.lower().split()).encode("utf-8")).hexdigest()


class ExactDedup:
    """Keeps the first document of each text_hash."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def keep(self, text: str) -> bool:
        h = text_hash(text)
        if h in self.seen:
            return False
        self.seen.add(h)
        return True
