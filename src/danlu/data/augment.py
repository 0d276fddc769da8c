"""Augmentation by noise injection: a block that rewrites documents with character and word edits.

Each word (a maximal run of non-space characters) is, independently and in this order, deleted with
probability `word_delete`, swapped with the next kept word with probability `word_swap`, or, within
it, has two adjacent characters swapped with probability `char_swap`. Whitespace between kept words
is kept as it was. A document's edits are drawn from a generator seeded by (seed, document id), so the
output does not depend on shard layout or worker count. An edited document gets
meta["augmented"] = {"block": "noise", "edits": k}; the manifest's lineage marks the block as one that
writes new text.
"""

from __future__ import annotations

import hashlib
import random
import re

from danlu.data.sources import Document
from danlu.errors import ConfigError

_WORDS = re.compile(r"(\S+)(\s*)")


class NoiseAugmenter:
    """Pipeline block `noise`: character swaps, word swaps and word deletions, seeded per document."""

    name = "noise"
    reasons = ()

    def __init__(
        self, char_swap: float = 0.02, word_swap: float = 0.02, word_delete: float = 0.02, seed: int = 0
    ) -> None:
        for key, p in (("char_swap", char_swap), ("word_swap", word_swap), ("word_delete", word_delete)):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"noise: {key} must be a probability in [0, 1], got {p}")
        self.char_swap, self.word_swap, self.word_delete, self.seed = char_swap, word_swap, word_delete, seed

    def _rng(self, doc_id: str) -> random.Random:
        digest = hashlib.sha256(f"{self.seed}:{doc_id}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "little"))

    def augment(self, text: str, rng: random.Random) -> tuple[str, int]:
        """(the edited text, the number of edits)."""
        lead = text[: len(text) - len(text.lstrip())]
        pieces = _WORDS.findall(text[len(lead) :])  # (word, the whitespace after it)
        kept = [[w, sep] for w, sep in pieces if not rng.random() < self.word_delete]
        edits = len(pieces) - len(kept)
        if kept and edits:
            kept[-1][1] = pieces[-1][1]  # the text keeps its trailing whitespace
        for i in range(len(kept) - 1):
            if rng.random() < self.word_swap:
                kept[i][0], kept[i + 1][0] = kept[i + 1][0], kept[i][0]
                edits += 1
        for item in kept:
            w = item[0]
            if len(w) > 1 and rng.random() < self.char_swap:
                j = rng.randrange(len(w) - 1)
                item[0] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
                edits += 1
        return (lead + "".join(w + sep for w, sep in kept), edits) if edits else (text, 0)

    def filter(self, doc: Document) -> tuple[bool, str | None]:
        text, edits = self.augment(doc["text"], self._rng(str(doc["id"])))
        if edits and text.strip():  # every word deleted: the document stays as it was
            doc["text"] = text
            doc["meta"]["augmented"] = {"block": self.name, "edits": edits}
        return True, None
