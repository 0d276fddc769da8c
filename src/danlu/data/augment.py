"""Augmentation blocks' shared machinery, and noise injection: character and word edits.

`Augmenter` is the base of the blocks that write new text from a document (eda, paraphrase): it picks
a `fraction` of the documents by a generator seeded by (seed, document id), and either rewrites each
picked document in place or, with keep_original, keeps it as it was and adds the new text as a
document of its own, right after it (DocBlock.run yields what `expand` returns). The new text's
meta["augmented"] names the block, the source document's id and the block's own details (an earlier
augmentation's mark nested under "of"); an added
document's id is "<source id>~<block>" and it has "added": true, so the split keeps it with its
source (danlu.data.documents) and a reader can tell it from an original.

The noise block:

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
from collections import Counter
from typing import Any

from danlu.data.sources import Document
from danlu.errors import ConfigError

_WORDS = re.compile(r"(\S+)(\s*)")


def doc_rng(seed: int, doc_id: str) -> random.Random:
    """A generator for one document: the same for the same (seed, id), whatever the shard layout."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


class Augmenter:
    """Base of the blocks that write new text: which documents, in place or added beside the original.

    A subclass sets `name` and implements `rewrite(text, rng) -> (new text, details) | None` (None:
    nothing to write for this document); `counts` collects its per-block totals for the manifest."""

    name = "augment"
    reasons = ()

    def __init__(self, fraction: float = 1.0, keep_original: bool = False, seed: int = 0) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"{self.name}: fraction must be in [0, 1], got {fraction}")
        if not isinstance(keep_original, bool):
            raise ConfigError(f"{self.name}: keep_original must be true or false, got {keep_original!r}")
        self.fraction, self.keep_original, self.seed = fraction, keep_original, seed
        self.counts: Counter[str] = Counter()

    def rewrite(self, text: str, rng: random.Random) -> tuple[str, dict[str, Any]] | None:
        raise NotImplementedError

    def _augmented(self, doc: Document) -> tuple[str, dict[str, Any]] | None:
        rng = doc_rng(self.seed, str(doc["id"]))
        if not rng.random() < self.fraction:
            return None
        self.counts["documents_picked"] += 1
        got = self.rewrite(doc["text"], rng)
        if got is None or not got[0].strip() or got[0] == doc["text"]:
            self.counts["documents_unchanged"] += 1
            return None
        self.counts["documents_augmented"] += 1
        earlier = doc["meta"].get("augmented")  # an earlier block's mark stays, nested
        mark = {
            "block": self.name,
            "source_id": str(doc["id"]),
            **got[1],
            **({"of": earlier} if earlier else {}),
        }
        return got[0], mark

    def filter(self, doc: Document) -> tuple[bool, str | None]:
        if not self.keep_original:
            got = self._augmented(doc)
            if got is not None:
                doc["text"], doc["meta"]["augmented"] = got
        return True, None

    def expand(self, doc: Document) -> list[Document]:
        """The documents added after `doc` (with keep_original), each marked as added."""
        got = self._augmented(doc) if self.keep_original else None
        if got is None:
            return []
        text, mark = got
        meta = {**doc["meta"], "augmented": {**mark, "added": True}}
        return [{**doc, "id": f"{doc['id']}~{self.name}", "text": text, "meta": meta}]

    def take_counts(self) -> Counter[str]:
        """The totals since the last call (DocBlock.run moves them into the block's stats)."""
        out, self.counts = self.counts, Counter()
        return out


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
        return doc_rng(self.seed, doc_id)

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
