"""EDA (Wei and Zou 2019, "Easy Data Augmentation"): synonym replacement, random insertion, random swap
and random deletion, with synonyms from WordNet 3.0 as shipped offline (danlu.data.thesaurus).

For a picked document of n words (maximal runs of non-space characters; the spacing between kept words
stays as it was), in this order:
  synonym_replace  r = max(1, int(synonym_replace * n)) distinct words that are not stop words and have
                   synonyms are replaced, each by one of its synonyms drawn at random (EDA's SR, alpha_sr)
  random_insert    max(1, int(random_insert * n)) times, a synonym of a random such word is inserted at a
                   random place (RI, alpha_ri)
  random_swap      max(1, int(random_swap * n)) times, two random words trade places (RS, alpha_rs)
  random_delete    each word is deleted with this probability; one word is always left (RD, p_rd)
A rate of 0 turns its operation off. Words are matched lowercased with their leading and trailing
punctuation set aside, which is put back; a capitalized or upper-case word gets its synonym the same
way. EDA applies one operation per augmented sentence; here every operation whose rate is above 0
applies to each picked document. meta["augmented"] counts each operation's edits. Seeded per
document (danlu.data.augment.Augmenter), so the output does not depend on shards or workers.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from danlu.data.augment import Augmenter
from danlu.errors import ConfigError

_WORDS = re.compile(r"(\S+)(\s*)")
_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


def _split(word: str) -> tuple[str, str, str]:
    """(leading punctuation, the word, trailing punctuation)."""
    m = _CORE.match(word)
    assert m is not None
    return m.group(1), m.group(2), m.group(3)


def _cased(synonym: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return synonym.upper()
    if like[:1].isupper():
        return synonym[:1].upper() + synonym[1:]
    return synonym


class EdaAugmenter(Augmenter):
    """Pipeline block `eda`: WordNet synonym replacement, random insertion, swap and deletion."""

    name = "eda"

    def __init__(
        self,
        synonym_replace: float = 0.1,
        random_insert: float = 0.0,
        random_swap: float = 0.0,
        random_delete: float = 0.0,
        fraction: float = 1.0,
        keep_original: bool = False,
        seed: int = 0,
        extra_stop_words: list[str] | None = None,
        thesaurus: Mapping[str, Sequence[str]] | None = None,
        stop_list: frozenset[str] | None = None,
    ) -> None:
        """`thesaurus` (word -> synonyms) and `stop_list` default to WordNet's (Python callers only)."""
        super().__init__(fraction, keep_original, seed)
        rates = {
            "synonym_replace": synonym_replace,
            "random_insert": random_insert,
            "random_swap": random_swap,
            "random_delete": random_delete,
        }
        for key, p in rates.items():
            if not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
                raise ConfigError(f"eda: {key} must be a rate in [0, 1], got {p!r}")
        if not any(rates.values()):
            raise ConfigError("eda: every rate is 0, so the block would change nothing; set one above 0")
        self.sr, self.ri, self.rs, self.rd = synonym_replace, random_insert, random_swap, random_delete
        if thesaurus is None or stop_list is None:
            from danlu.data.thesaurus import load_stop_words, load_synonyms

            thesaurus = load_synonyms() if thesaurus is None else thesaurus
            stop_list = load_stop_words() if stop_list is None else stop_list
        self.synonyms = thesaurus
        self.stop_words = frozenset(stop_list) | {w.lower() for w in extra_stop_words or ()}

    def _choices(self, word: str) -> Sequence[str]:
        core = _split(word)[1].lower()
        if core in self.stop_words:
            return ()
        return self.synonyms.get(core, ())

    def rewrite(self, text: str, rng: random.Random) -> tuple[str, dict[str, Any]] | None:
        lead = text[: len(text) - len(text.lstrip())]
        words = [[w, sep] for w, sep in _WORDS.findall(text[len(lead) :])]
        if not words:
            return None
        n = len(words)
        edits = {"synonyms": 0, "inserted": 0, "swapped": 0, "deleted": 0}
        if self.sr:
            candidates = [i for i, (w, _) in enumerate(words) if self._choices(w)]
            rng.shuffle(candidates)
            for i in candidates[: max(1, int(self.sr * n))]:
                pre, core, post = _split(words[i][0])
                words[i][0] = pre + _cased(rng.choice(self._choices(words[i][0])), core) + post
                edits["synonyms"] += 1
        if self.ri:
            candidates = [w for w, _ in words if self._choices(w)]
            for _ in range(max(1, int(self.ri * n)) if candidates else 0):
                synonym = rng.choice(self._choices(rng.choice(candidates)))
                words.insert(rng.randrange(len(words)), [synonym, " "])
                edits["inserted"] += 1
        if self.rs and len(words) > 1:
            for _ in range(max(1, int(self.rs * n))):
                i, j = rng.sample(range(len(words)), 2)
                words[i][0], words[j][0] = words[j][0], words[i][0]
                edits["swapped"] += 1
        if self.rd and len(words) > 1:
            trailing = words[-1][1]
            kept = [w for w in words if not rng.random() < self.rd]
            if not kept:
                kept = [rng.choice(words)]
            edits["deleted"] = len(words) - len(kept)
            words = kept
            words[-1][1] = trailing  # the text keeps its trailing whitespace
        if not any(edits.values()):
            return None
        return lead + "".join(w + sep for w, sep in words), edits
