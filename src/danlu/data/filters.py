"""Document quality filters: Gopher quality and repetition, C4 line rules, toxicity, normalization.

Each filter is a small block with a `name` and `filter(doc) -> (keep, reason)`; it writes the scores it
computed into `doc["meta"][name]` so a kept document carries why it was kept and a removed one why not.
Filters that rewrite text (C4QualityFilter, Normalizer) change `doc["text"]` in place. They are
DocFilters of danlu.data.block: `run_filter` there streams documents through one and counts in a `Stats`.

Thresholds follow the papers and datatrove's implementations, which the tests compare against:
  Gopher: Rae et al. 2021 (arXiv:2112.11446), section A.1.1 and table A1.
  C4:     Raffel et al. 2020 (JMLR 21), section 2.2, and tensorflow_datasets' c4_utils.
Word splitting is a regex (`split_words`) rather than NLTK's punkt, which would need a model download;
words and punctuation runs become separate tokens, as NLTK's word_tokenize does for English.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate
from typing import Any

from danlu.data.clean import normalize
from danlu.data.sources import Document
from danlu.errors import ConfigError, DataError

_WORD = re.compile(r"\w+(?:['’.\-]\w+)*|[^\w\s]+")
# what datatrove counts as punctuation-only tokens; a token made only of these is not a word
_PUNCT = set("!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»")
_ABBREVIATIONS = ("mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "no", "fig")
# a sentence ends at . ! ? (optionally followed by closing quotes/brackets) before whitespace
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(\s+)")


def split_words(text: str) -> list[str]:
    """Words and punctuation runs, in order: "Hi, you..." -> ["Hi", ",", "you", "..."]."""
    return _WORD.findall(text)


def split_sentences(text: str) -> list[str]:
    """Sentences of one line of text, by terminal punctuation; common abbreviations and initials do not end one."""
    sentences: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        head = text[start : m.start()]
        last = head.rsplit(None, 1)[-1].lower() if head.strip() else ""
        if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
            continue
        sentences.append(text[start : m.start(1)].strip())
        start = m.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return [s for s in sentences if s]


def _is_word(token: str) -> bool:
    return any(ch not in _PUNCT for ch in token)


def _check_fraction(name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}={value} is not a fraction; use a value in [0, 1] (or None to disable)")


# --- Gopher quality ------------------------------------------------------------------------------

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


class GopherQualityFilter:
    """Rae et al. 2021's quality rules; a threshold of None disables its rule.

    Removes a document whose word count is outside [min_words, max_words], whose mean word length is
    outside [min_mean_word_length, max_mean_word_length], whose '#' or ellipsis to word ratio is above
    max_symbol_word_ratio, with more than max_bullet_lines of lines starting with a bullet or more than
    max_ellipsis_lines ending with an ellipsis, with fewer than min_alpha_words of words containing a
    letter, or with fewer than min_stop_words distinct stop words. Boundaries are inclusive (kept).
    """

    name = "gopher_quality"

    def __init__(
        self,
        min_words: int | None = 50,
        max_words: int | None = 100_000,
        min_mean_word_length: float | None = 3,
        max_mean_word_length: float | None = 10,
        max_symbol_word_ratio: float | None = 0.1,
        max_bullet_lines: float | None = 0.9,
        max_ellipsis_lines: float | None = 0.3,
        min_alpha_words: float | None = 0.8,
        min_stop_words: int | None = 2,
        stop_words: Sequence[str] = GOPHER_STOP_WORDS,
        bullets: Sequence[str] = ("•", "-"),
    ) -> None:
        if min_words is not None and max_words is not None and min_words > max_words:
            raise ConfigError(f"min_words={min_words} > max_words={max_words}; make min_words <= max_words")
        for n, v in [
            ("max_bullet_lines", max_bullet_lines),
            ("max_ellipsis_lines", max_ellipsis_lines),
            ("min_alpha_words", min_alpha_words),
        ]:
            _check_fraction(n, v)
        self.min_words = min_words
        self.max_words = max_words
        self.min_mean_word_length = min_mean_word_length
        self.max_mean_word_length = max_mean_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines = max_bullet_lines
        self.max_ellipsis_lines = max_ellipsis_lines
        self.min_alpha_words = min_alpha_words
        self.min_stop_words = min_stop_words
        self.stop_words = frozenset(w.lower() for w in stop_words)
        self.bullets = tuple(bullets)

    def scores(self, text: str) -> dict[str, float]:
        tokens = split_words(text)
        words = [t for t in tokens if _is_word(t)]
        n_tokens = max(len(tokens), 1)
        lines = text.splitlines() or [""]
        return {
            # the word count and mean length ignore punctuation tokens; the ratios divide by all tokens
            "n_words": len(words),
            "mean_word_length": sum(map(len, words)) / len(words) if words else 0.0,
            "hash_ratio": text.count("#") / n_tokens,
            "ellipsis_ratio": (text.count("...") + text.count("…")) / n_tokens,
            "bullet_lines": sum(line.lstrip().startswith(self.bullets) for line in lines) / len(lines),
            "ellipsis_lines": sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines),
            "alpha_words": sum(any(c.isalpha() for c in t) for t in tokens) / n_tokens,
            # case-folded, so a sentence-initial "The" counts (datatrove compares case-sensitively)
            "stop_words": len(self.stop_words.intersection(t.lower() for t in tokens)),
        }

    def filter(self, doc: Document) -> tuple[bool, str | None]:
        s = self.scores(doc["text"])
        doc["meta"][self.name] = s
        checks = [
            (self.min_words is not None and s["n_words"] < self.min_words, "gopher_short_doc"),
            (self.max_words is not None and s["n_words"] > self.max_words, "gopher_long_doc"),
            (
                self.min_mean_word_length is not None and s["mean_word_length"] < self.min_mean_word_length,
                "gopher_below_avg_threshold",
            ),
            (
                self.max_mean_word_length is not None and s["mean_word_length"] > self.max_mean_word_length,
                "gopher_above_avg_threshold",
            ),
            (
                self.max_symbol_word_ratio is not None and s["hash_ratio"] > self.max_symbol_word_ratio,
                "gopher_too_many_hashes",
            ),
            (
                self.max_symbol_word_ratio is not None and s["ellipsis_ratio"] > self.max_symbol_word_ratio,
                "gopher_too_many_ellipsis",
            ),
            (
                self.max_bullet_lines is not None and s["bullet_lines"] > self.max_bullet_lines,
                "gopher_too_many_bullets",
            ),
            (
                self.max_ellipsis_lines is not None and s["ellipsis_lines"] > self.max_ellipsis_lines,
                "gopher_too_many_end_ellipsis",
            ),
            (
                self.min_alpha_words is not None and s["alpha_words"] < self.min_alpha_words,
                "gopher_below_alpha_threshold",
            ),
            (
                self.min_stop_words is not None and s["stop_words"] < self.min_stop_words,
                "gopher_enough_stop_words",
            ),
        ]
        return _first_failure(checks)


def _first_failure(checks: list[tuple[bool, str]]) -> tuple[bool, str | None]:
    for failed, reason in checks:
        if failed:
            return False, reason
    return True, None


# --- Gopher repetition ---------------------------------------------------------------------------


def duplicates(items: Sequence[str]) -> tuple[int, int]:
    """(number, total characters) of items that repeat an earlier item."""
    seen: set[str] = set()
    n = chars = 0
    for item in items:
        if item in seen:
            n += 1
            chars += len(item)
        else:
            seen.add(item)
    return n, chars


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(words[i:] for i in range(n)), strict=False))


def top_ngram_chars(words: Sequence[str], n: int) -> int:
    """Characters covered by the most frequent n-gram: len(" ".join(ngram)) * its count (0 if none).

    Ties go to the n-gram seen first, as with datatrove's Counter over joined strings.
    """
    counts = Counter(_ngrams(words, n))
    if not counts:
        return 0
    gram, count = counts.most_common(1)[0]
    return (sum(map(len, gram)) + n - 1) * count


def duplicate_ngram_chars(words: Sequence[str], n: int) -> int:
    """Characters of words inside n-grams that repeat an earlier n-gram, counting each word once.

    Scans left to right; a repeated n-gram's words are counted and skipped (and not remembered), so
    overlapping repeats are not double counted: datatrove's find_all_duplicate, with n-grams compared
    as word tuples where datatrove compares "".join(words), which makes ("ab", "c") equal ("a", "bc").
    """
    grams = _ngrams(words, n)
    if len(set(grams)) == len(grams):  # the common case for prose: nothing repeats, nothing to scan
        return 0
    ends = [0, *accumulate(map(len, words))]
    seen: set[tuple[str, ...]] = set()
    remember = seen.add
    chars = i = 0
    n_grams = len(grams)
    while i < n_grams:
        gram = grams[i]
        if gram in seen:
            chars += ends[i + n] - ends[i]
            i += n
        else:
            remember(gram)
            i += 1
    return chars


_PARAGRAPH_SPLIT = re.compile(r"\n{2,}")
_LINE_SPLIT = re.compile(r"\n+")
TOP_NGRAMS = ((2, 0.20), (3, 0.18), (4, 0.16))
DUP_NGRAMS = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))


class GopherRepetitionFilter:
    """Rae et al. 2021 table A1: removes documents with too many repeated lines, paragraphs or n-grams.

    Character fractions divide by the document's length. `top_ngrams` are (n, max fraction of characters
    in the most frequent n-gram); `dup_ngrams` are (n, max fraction of characters in repeated n-grams).
    """

    name = "gopher_repetition"

    def __init__(
        self,
        dup_line_frac: float | None = 0.3,
        dup_para_frac: float | None = 0.3,
        dup_line_char_frac: float | None = 0.2,
        dup_para_char_frac: float | None = 0.2,
        top_ngrams: Sequence[tuple[int, float]] = TOP_NGRAMS,
        dup_ngrams: Sequence[tuple[int, float]] = DUP_NGRAMS,
    ) -> None:
        for n, v in [
            ("dup_line_frac", dup_line_frac),
            ("dup_para_frac", dup_para_frac),
            ("dup_line_char_frac", dup_line_char_frac),
            ("dup_para_char_frac", dup_para_char_frac),
            *((f"top_{k}_gram", f) for k, f in top_ngrams),
            *((f"dup_{k}_gram", f) for k, f in dup_ngrams),
        ]:
            _check_fraction(n, v)
        if any(k < 1 for k, _ in (*top_ngrams, *dup_ngrams)):
            raise ConfigError("n-gram sizes must be >= 1")
        self.dup_line_frac = dup_line_frac
        self.dup_para_frac = dup_para_frac
        self.dup_line_char_frac = dup_line_char_frac
        self.dup_para_char_frac = dup_para_char_frac
        self.top_ngrams = tuple(top_ngrams)
        self.dup_ngrams = tuple(dup_ngrams)

    def scores(self, text: str) -> dict[str, float]:
        n_chars = len(text)
        paragraphs = _PARAGRAPH_SPLIT.split(text.strip())
        lines = _LINE_SPLIT.split(text)
        n_para, para_chars = duplicates(paragraphs)
        n_line, line_chars = duplicates(lines)
        words = split_words(text)
        s = {
            "dup_para_frac": n_para / len(paragraphs),
            "dup_para_char_frac": para_chars / n_chars,
            "dup_line_frac": n_line / len(lines),
            "dup_line_char_frac": line_chars / n_chars,
        }
        for n, _ in self.top_ngrams:
            s[f"top_{n}_gram_char_frac"] = top_ngram_chars(words, n) / n_chars
        for n, _ in self.dup_ngrams:
            s[f"dup_{n}_gram_char_frac"] = duplicate_ngram_chars(words, n) / n_chars
        return s

    def filter(self, doc: Document) -> tuple[bool, str | None]:
        text = doc["text"]
        if not text.strip():
            return False, "empty"
        s = self.scores(text)
        doc["meta"][self.name] = s
        checks = [
            (self.dup_para_frac is not None and s["dup_para_frac"] > self.dup_para_frac, "dup_para_frac"),
            (
                self.dup_para_char_frac is not None and s["dup_para_char_frac"] > self.dup_para_char_frac,
                "dup_para_char_frac",
            ),
            (self.dup_line_frac is not None and s["dup_line_frac"] > self.dup_line_frac, "dup_line_frac"),
            (
                self.dup_line_char_frac is not None and s["dup_line_char_frac"] > self.dup_line_char_frac,
                "dup_line_char_frac",
            ),
            *((s[f"top_{n}_gram_char_frac"] > f, f"top_{n}_gram") for n, f in self.top_ngrams),
            *((s[f"dup_{n}_gram_char_frac"] > f, f"duplicated_{n}_n_grams") for n, f in self.dup_ngrams),
        ]
        return _first_failure(checks)


# --- C4 ------------------------------------------------------------------------------------------

_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
C4_END_PUNCTUATION = (".", "?", "!", '"', "'")
C4_POLICY_PHRASES = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)


class C4QualityFilter:
    """Raffel et al. 2020's C4 rules, applied per line; rewrites the text to the kept lines.

    Drops lines that: hold a word longer than max_word_length, do not end in terminal punctuation (or
    end in an ellipsis), have fewer than min_words_per_line words, mention javascript, or hold a
    cookie/terms-of-use policy phrase. Removes the whole document if a line says "lorem ipsum", holds a
    curly brace, or if fewer than min_sentences sentences remain. Wikipedia citation marks are removed.
    Set a number to None (a flag to False) to disable its rule.
    """

    name = "c4_quality"

    def __init__(
        self,
        min_sentences: int | None = 5,
        min_words_per_line: int | None = 3,
        max_word_length: int | None = 1000,
        remove_citations: bool = True,
        filter_no_terminal_punct: bool = True,
        filter_lorem_ipsum: bool = True,
        filter_javascript: bool = True,
        filter_curly_bracket: bool = True,
        filter_policy: bool = True,
        policy_phrases: Sequence[str] = C4_POLICY_PHRASES,
    ) -> None:
        for n, v in [
            ("min_sentences", min_sentences),
            ("min_words_per_line", min_words_per_line),
            ("max_word_length", max_word_length),
        ]:
            if v is not None and v < 0:
                raise ConfigError(f"{n}={v} is negative; use a count >= 0 or None to disable")
        self.min_sentences = min_sentences
        self.min_words_per_line = min_words_per_line
        self.max_word_length = max_word_length
        self.remove_citations = remove_citations
        self.filter_no_terminal_punct = filter_no_terminal_punct
        self.filter_lorem_ipsum = filter_lorem_ipsum
        self.filter_javascript = filter_javascript
        self.filter_curly_bracket = filter_curly_bracket
        self.filter_policy = filter_policy
        self.policy_phrases = tuple(p.lower() for p in policy_phrases)

    def _line_verdict(self, line: str) -> tuple[str, str]:
        """(kept line, "") or (line, why it goes); why is "doc:<reason>" when the whole document goes."""
        words = line.split()
        if self.max_word_length is not None and any(len(w) > self.max_word_length for w in words):
            return line, "too_long_word"
        if self.remove_citations:
            line = _CITATION.sub("", line)
        if self.filter_no_terminal_punct and (not line.endswith(C4_END_PUNCTUATION) or line.endswith("...")):
            return line, "no_terminal_punct"
        # the word count is of the line before citations were removed, as in c4_utils
        if self.min_words_per_line is not None and len(words) < self.min_words_per_line:
            return line, "too_few_words"
        lower = line.lower()
        if self.filter_lorem_ipsum and "lorem ipsum" in lower:
            return line, "doc:lorem_ipsum"
        if self.filter_javascript and "javascript" in lower:
            return line, "javascript"
        if self.filter_curly_bracket and "{" in line:
            return line, "doc:curly_bracket"
        if self.filter_policy and any(p in lower for p in self.policy_phrases):
            return line, "policy"
        return line, ""

    def filter(self, doc: Document) -> tuple[bool, str | None]:
        kept: list[str] = []
        dropped: Counter[str] = Counter()
        n_sentences = 0
        lines = doc["text"].splitlines()
        meta: dict[str, Any] = {"lines_in": len(lines)}
        doc["meta"][self.name] = meta
        for raw in lines:
            line, why = self._line_verdict(raw.strip())
            if why.startswith("doc:"):
                meta["lines_removed"] = dict(dropped)
                return False, why[4:]
            if why:
                dropped[why] += 1
                continue
            n_sentences += len(split_sentences(line))
            kept.append(line)
        meta.update(lines_kept=len(kept), lines_removed=dict(dropped), sentences=n_sentences)
        if self.min_sentences is not None and n_sentences < self.min_sentences:
            return False, "too_few_sentences"
        doc["text"] = "\n".join(kept).strip()
        return True, None


# --- toxicity ------------------------------------------------------------------------------------

# A deliberately short list of unambiguous English obscenities; pass `words=` for a real list
# (e.g. LDNOOBW). Words are matched whole and case-folded, so "Scunthorpe" or "assessment" never count.
TOXIC_WORDS = frozenset(
    {
        "fuck",
        "fucked",
        "fucker",
        "fucking",
        "motherfucker",
        "shit",
        "shitty",
        "bullshit",
        "cunt",
        "asshole",
        "bitch",
        "bastard",
        "dickhead",
        "wanker",
        "whore",
        "slut",
        "cocksucker",
    }
)


_LETTER_RUN = re.compile(r"[^\W\d_]+")


class ToxicityFilter:
    """Removes documents whose fraction of flagged words exceeds max_score, or whose classifier score
    exceeds max_classifier_score when a `classifier(text) -> probability of toxic` is given."""

    name = "toxicity"

    def __init__(
        self,
        max_score: float = 0.01,
        words: Iterable[str] = TOXIC_WORDS,
        classifier: Callable[[str], float] | None = None,
        max_classifier_score: float = 0.5,
    ) -> None:
        _check_fraction("max_score", max_score)
        _check_fraction("max_classifier_score", max_classifier_score)
        self.max_score = max_score
        self.words = frozenset(w.lower() for w in words)
        if not self.words and classifier is None:
            raise ConfigError("ToxicityFilter needs a non-empty word list or a classifier")
        self.classifier = classifier
        self.max_classifier_score = max_classifier_score

    def score(self, text: str) -> tuple[float, int, int]:
        """(flagged / words, flagged, words); words are runs of letters, so "fuck-off" flags "fuck"."""
        words = _LETTER_RUN.findall(text.lower())
        flagged = sum(w in self.words for w in words)
        return (flagged / len(words) if words else 0.0), flagged, len(words)

    def filter(self, doc: Document) -> tuple[bool, str | None]:
        score, flagged, n_words = self.score(doc["text"])
        meta: dict[str, Any] = {"score": score, "flagged_words": flagged, "words": n_words}
        doc["meta"][self.name] = meta
        if score > self.max_score:
            return False, "toxic_words"
        if self.classifier is not None:
            p = float(self.classifier(doc["text"]))
            if not 0.0 <= p <= 1.0:
                raise DataError(f"toxicity classifier returned {p}; it must return a probability in [0, 1]")
            meta["classifier_score"] = p
            if p > self.max_classifier_score:
                return False, "toxic_classifier"
        return True, None


# --- normalization -------------------------------------------------------------------------------

# Lines that are page furniture rather than content; match a whole (stripped, case-folded) line.
DEFAULT_BOILERPLATE = (
    r"(all rights reserved\.?|copyright ©?.*)",
    r"(share|share this|tweet|print|email this)( on \w+)?",
    r"(skip to (main )?content|back to top|read more|click here.*)",
    r"(accept( all)? cookies|cookie settings)",
)


class Normalizer:
    """Repairs mojibake with ftfy, removes boilerplate lines, then applies clean.normalize.

    `boilerplate_patterns` are regexes matched against each whole stripped line, ignoring case;
    `boilerplate_lines` are exact lines (compared stripped and case-folded). A document left empty is
    removed with reason "empty_after_normalize".
    """

    name = "normalize"

    def __init__(
        self,
        ftfy: bool = True,
        boilerplate_patterns: Sequence[str] = DEFAULT_BOILERPLATE,
        boilerplate_lines: Iterable[str] = (),
    ) -> None:
        self.ftfy = ftfy
        try:
            self._patterns = [re.compile(p, re.IGNORECASE) for p in boilerplate_patterns]
        except re.error as e:
            raise ConfigError(f"boilerplate pattern {e.pattern!r} is not a valid regex: {e}") from None
        self._lines = frozenset(line.strip().casefold() for line in boilerplate_lines)
        self._fix_text: Callable[[str], str] | None = None
        if ftfy:
            try:
                import ftfy as _ftfy
            except ImportError:
                raise ConfigError(
                    "Normalizer(ftfy=True) needs the ftfy package: pip install 'danlu[data]' "
                    "(or pass ftfy=False)"
                ) from None
            # repair encoding only: curly quotes and fullwidth CJK punctuation are real text, keep them
            config = _ftfy.TextFixerConfig(uncurl_quotes=False, fix_character_width=False, explain=False)
            self._fix_text = lambda text: _ftfy.fix_text(text, config)

    def is_boilerplate(self, line: str) -> bool:
        s = line.strip()
        if not s:
            return False
        return s.casefold() in self._lines or any(p.fullmatch(s) for p in self._patterns)

    def normalize(self, text: str) -> tuple[str, dict[str, Any]]:
        fixed = self._fix_text(text) if self._fix_text is not None else text
        # normalize first so lines are split on "\n" alone (str.splitlines would also split on
        # characters such as U+0085 that normalize removes), and again after lines went away
        lines = normalize(fixed).split("\n")
        kept = [line for line in lines if not self.is_boilerplate(line)]
        out = normalize("\n".join(kept)) if len(kept) < len(lines) else "\n".join(kept)
        return out, {"ftfy_changed": fixed != text, "boilerplate_lines": len(lines) - len(kept)}

    def filter(self, doc: Document) -> tuple[bool, str | None]:
        doc["text"], meta = self.normalize(doc["text"])
        doc["meta"][self.name] = meta
        if not doc["text"]:
            return False, "empty_after_normalize"
        return True, None
