"""PII detection and replacement by typed placeholders.

`PIIScrubber().scrub(text)` returns the text with each detected item replaced by its placeholder and a
Counter of kinds. Regexes find candidates; a validator then rejects what only looks like PII, because
false positives destroy ordinary numbers the model should learn from:

  EMAIL            local@domain.tld
  URL_CREDENTIALS  the user:password part of scheme://user:password@host (scheme and host are kept)
  IP               IPv6 and IPv4, each candidate checked with the ipaddress module. A dotted quad is an
                   address when every octet is 0-255 without leading zeros, so "1.2.3.4" is one; a
                   version string differs by having 3 parts ("3.11.2") or a glued prefix ("v1.2.3.4").
                   An IPv6 candidate needs two non-empty groups, so "::" and "::1" alone are left.
  NATIONAL_ID      Chinese 18-digit resident IDs with a real birth date and a valid ISO 7064 MOD 11-2
                   check character; US SSNs AAA-GG-SSSS (dash or space) with area not 000, 666 or 9xx,
                   group not 00 and serial not 0000.
  CREDIT_CARD      13-19 digits, plain or in groups of 3-7 digits (the last 1-4) split by one kind
                   of separator (space or dash), not starting with 0, passing the Luhn check, and not
                   a valid ISBN-13 (978/979 prefix).
  PHONE            NANP numbers written with separators or brackets ("(415) 555-0132",
                   "+1 415.555.0132"); international numbers starting with +country code and 8-15 digits
                   in all. A bare run of digits is never a phone number.
Word boundaries are ASCII (re.ASCII): in Chinese or Japanese text a number sits right next to Han
characters, which Unicode regexes count as word characters like the digits.
Placeholders contain no digits, '@' or ':', so no detector matches one and scrubbing is idempotent.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from danlu.data.sources import Document
from danlu.errors import ConfigError

KINDS = ("URL_CREDENTIALS", "EMAIL", "IP", "NATIONAL_ID", "CREDIT_CARD", "PHONE")
PLACEHOLDERS = {kind: f"<{kind}>" for kind in KINDS}


def luhn_valid(digits: str) -> bool:
    """The Luhn mod-10 check used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def isbn13_valid(digits: str) -> bool:
    return (
        len(digits) == 13
        and digits.startswith(("978", "979"))
        and sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10 == 0
    )


_CN_WEIGHTS = [2 ** (17 - i) % 11 for i in range(17)]


def cn_id_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of a Chinese resident ID's first 17 digits."""
    r = (12 - sum(int(d) * w for d, w in zip(first17, _CN_WEIGHTS, strict=True)) % 11) % 11
    return "X" if r == 10 else str(r)


def cn_id_valid(s: str) -> bool:
    if len(s) != 18 or not s[:17].isdigit():
        return False
    try:
        datetime.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    return cn_id_check_char(s[:17]) == s[17].upper()


def _card_valid(m: re.Match[str]) -> bool:
    s = m.group(0)
    digits = re.sub(r"\D", "", s)
    if not 13 <= len(digits) <= 19 or digits[0] == "0":
        return False
    return luhn_valid(digits) and not isbn13_valid(digits)


def _ipv4_valid(m: re.Match[str]) -> bool:
    try:
        ipaddress.IPv4Address(m.group(0))
    except ValueError:
        return False
    return True


def _ipv6_valid(m: re.Match[str]) -> bool:
    s = m.group(0)
    if sum(1 for g in re.split(r"[:.]", s) if g) < 2:
        return False
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


def _intl_phone_valid(m: re.Match[str]) -> bool:
    s = m.group(0)
    digits = re.sub(r"\D", "", s)
    if not 8 <= len(digits) <= 15 or re.search(r"[ .\-]{2,}", s):
        return False
    if s.count("(") != s.count(")") or s.count("(") > 1:
        return False
    if "(" in s and not re.search(r"\(\d{1,4}\)", s):
        return False
    # without any separator, only a full E.164 number (10+ digits) is a phone rather than a quantity
    return not (digits == s[1:] and len(digits) < 10)


def _cn_id_match_valid(m: re.Match[str]) -> bool:
    return cn_id_valid(m.group(0))


@dataclass(frozen=True)
class _Detector:
    kind: str
    pattern: re.Pattern[str]
    valid: Callable[[re.Match[str]], bool] | None = None
    group: int | str = 0  # the part of the match that is replaced


_DETECTORS = (
    _Detector(
        "URL_CREDENTIALS",
        # scheme, user and password lengths are bounded so that scanning stays linear on long runs
        re.compile(
            r"\b[A-Za-z][A-Za-z0-9+.\-]{0,31}://(?P<cred>[^\s/:@<>]{1,256}:[^\s/@<>]{0,256})@(?=[\w\[])",
            re.ASCII,
        ),
        group="cred",
    ),
    _Detector(
        "EMAIL",
        re.compile(
            r"(?<![\w.%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@"
            r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![\w\-])",
            re.ASCII,
        ),
    ),
    _Detector(
        "IP",
        re.compile(
            r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:]|\.\d)",
            re.ASCII,
        ),
        _ipv6_valid,
    ),
    _Detector("IP", re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)", re.ASCII), _ipv4_valid),
    _Detector(
        "NATIONAL_ID",
        re.compile(
            r"(?<![\w\-])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![\w\-])",
            re.ASCII,
        ),
        _cn_id_match_valid,
    ),
    _Detector(
        "CREDIT_CARD",
        # a plain run, or 2-6 groups of 3-7 digits (the last may be 1-4) split by one kind of separator;
        # bounded so a failed candidate is short and retrying inside a long run of numbers stays linear
        re.compile(
            r"(?<![\w\-.])(?:\d{13,19}|\d{3,7}(?P<sep>[ \-])\d{3,7}(?:(?P=sep)\d{3,7}){0,3}(?:(?P=sep)\d{1,4})?)"
            r"(?![\w\-]|\.\d)",
            re.ASCII,
        ),
        _card_valid,
    ),
    _Detector(
        "NATIONAL_ID",
        re.compile(
            r"(?<![\w\-])(?!000|666|9\d\d)\d{3}(?P<sep>[\- ])(?!00)\d{2}(?P=sep)(?!0000)\d{4}(?![\w\-])",
            re.ASCII,
        ),
    ),
    _Detector(
        "PHONE",
        re.compile(
            r"(?<![\w+\-])(?:\+?1[ .\-]?)?(?:\([2-9]\d{2}\)[ .\-]?|[2-9]\d{2}[ .\-])[2-9]\d{2}[ .\-]\d{4}(?![\w\-]|\.\d)",
            re.ASCII,
        ),
    ),
    _Detector(
        "PHONE",
        re.compile(r"(?<![\w+])\+[1-9][\d ().\-]{6,22}\d(?![\w\-]|\.\d)", re.ASCII),
        _intl_phone_valid,
    ),
)


def _valid_matches(det: _Detector, text: str) -> Iterator[re.Match[str]]:
    """Non-overlapping matches that pass the validator, scanning left to right.

    A greedy candidate that fails validation must not hide a real item inside or after it: in
    "+44 20 7946 0958 4111 1111 1111 1111" the first card-shaped run starts at "44" and fails the
    Luhn check. So a failed candidate is first retried shorter (cut at each space, longest first),
    then the scan resumes one character after its start instead of after its end.
    """
    pos = 0
    while (m := det.pattern.search(text, pos)) is not None:
        good = m if det.valid is None or det.valid(m) else _shorter_valid(det, text, m)
        if good is not None:
            yield good
            pos = max(good.end(), good.start() + 1)
        else:
            pos = m.start() + 1


def _shorter_valid(det: _Detector, text: str, m: re.Match[str]) -> re.Match[str] | None:
    assert det.valid is not None
    for cut in sorted((i for i, ch in enumerate(m.group(0)) if ch == " "), reverse=True):
        # cutting at a space keeps the pattern's end-of-item lookahead truthful: a space follows
        shorter = det.pattern.match(text, m.start(), m.start() + cut)
        if shorter is not None and shorter.end() == m.start() + cut and det.valid(shorter):
            return shorter
    return None


class PIIScrubber:
    """Finds PII of the given kinds (all by default) and replaces it with typed placeholders."""

    def __init__(self, kinds: Iterable[str] = KINDS, placeholders: Mapping[str, str] | None = None) -> None:
        self.kinds = tuple(kinds)
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ConfigError(f"unknown PII kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
        self.placeholders = {**PLACEHOLDERS, **(placeholders or {})}
        for kind, ph in self.placeholders.items():
            if re.search(r"[\d@:]", ph):
                raise ConfigError(
                    f"placeholder {ph!r} for {kind} contains a digit, '@' or ':', which the detectors "
                    "could match again; use letters and brackets only"
                )
        self._detectors = [d for d in _DETECTORS if d.kind in self.kinds]

    def find(self, text: str) -> list[tuple[str, str]]:
        """(kind, matched text) of each item one scrubbing pass would replace, in detector order."""
        found: list[tuple[str, str]] = []
        for det in self._detectors:
            found.extend((det.kind, m.group(det.group)) for m in _valid_matches(det, text))
            text = self._replace(det, text, Counter())
        return found

    def _replace(self, det: _Detector, text: str, counts: Counter[str]) -> str:
        placeholder = self.placeholders[det.kind]
        parts: list[str] = []
        pos = 0
        for m in _valid_matches(det, text):
            start, end = m.span(det.group)
            parts += [text[pos:start], placeholder]
            pos = end
            counts[det.kind] += 1
        return "".join(parts) + text[pos:] if parts else text

    def scrub(self, text: str) -> tuple[str, Counter[str]]:
        """The text with PII replaced, and how many items of each kind were replaced."""
        counts: Counter[str] = Counter()
        # A replacement can turn a neighbour's boundary from a word character into '>' and so expose
        # a new match; repeating until nothing changes makes scrub idempotent. Each pass removes
        # digits or '@' that no placeholder brings back, so this ends quickly (two passes in practice).
        for _ in range(8):
            before = text
            for det in self._detectors:
                text = self._replace(det, text, counts)
            if text == before:
                break
        return text, counts


class PIIFilter:
    """A pipeline block that scrubs each document's text and records counts in doc["meta"]["pii"]."""

    name = "pii"

    def __init__(self, scrubber: PIIScrubber | None = None) -> None:
        self.scrubber = scrubber or PIIScrubber()

    def filter(self, doc: Document) -> tuple[bool, str | None]:
        doc["text"], counts = self.scrubber.scrub(doc["text"])
        meta: dict[str, Any] = dict(sorted(counts.items()))
        doc["meta"][self.name] = meta
        return True, None
