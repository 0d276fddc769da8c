"""Regular expressions compiled to a deterministic automaton over UTF-8 bytes.

Constrained decoding walks each vocabulary token's bytes through the automaton, and a token may end in
the middle of a character, so the automaton reads bytes, not characters: every character class becomes
the UTF-8 byte sequences of its code points (split into byte ranges the way RE2 does), then Thompson's
construction and the subset construction give the DFA, and states that cannot reach acceptance are
dropped, so any state the walk reaches can still be completed.

The syntax is the usual subset: literals, escapes (\\d \\w \\s and their negations, \\n \\t \\xHH \\uHHHH,
escaped metacharacters), classes with ranges and negation, `.` (anything but newline), groups `(...)`
and `(?:...)`, `|`, and the quantifiers `* + ? {m} {m,} {m,n}`. The whole text must match (anchors
`^`/`$` at the ends are accepted and ignored). Backreferences and lookaround are not regular: rejected.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from danlu.errors import ConfigError

MAX_CP = 0x10FFFF
MAX_STATES = 50_000
Ranges = list[tuple[int, int]]  # sorted, disjoint, inclusive code point ranges

DIGIT: Ranges = [(0x30, 0x39)]
WORD: Ranges = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
SPACE: Ranges = [(0x09, 0x0D), (0x20, 0x20)]
SIMPLE_ESCAPES = {"n": 0x0A, "t": 0x09, "r": 0x0D, "f": 0x0C, "v": 0x0B, "0": 0x00}


def normalize(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def negate(ranges: Ranges) -> Ranges:
    out, nxt = [], 0
    for lo, hi in normalize(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CP:
        out.append((nxt, MAX_CP))
    return out


# --- parsing: a tree of ("set", ranges) ("cat", [..]) ("alt", [..]) ("rep", node, min, max|None) ---


class _Parser:
    def __init__(self, pattern: str):
        self.p = pattern
        self.i = 0

    def error(self, msg: str) -> ConfigError:
        return ConfigError(f"regex {self.p!r}: {msg} at position {self.i}")

    def peek(self) -> str | None:
        return self.p[self.i] if self.i < len(self.p) else None

    def take(self) -> str:
        if self.i >= len(self.p):
            raise self.error("unexpected end")
        c = self.p[self.i]
        self.i += 1
        return c

    def parse(self) -> tuple:
        node = self.alt()
        if self.i != len(self.p):
            raise self.error("unbalanced ')'")
        return node

    def alt(self) -> tuple:
        options = [self.cat()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.cat())
        return options[0] if len(options) == 1 else ("alt", options)

    def cat(self) -> tuple:
        items = []
        while self.peek() not in (None, "|", ")"):
            items.append(self.repeat())
        return ("cat", items)

    def repeat(self) -> tuple:
        node = self.atom()
        while True:
            c = self.peek()
            bounds = self._counted() if c == "{" else None
            if c in ("*", "+", "?"):
                self.i += 1
                node = ("rep", node, 0 if c != "+" else 1, 1 if c == "?" else None)
            elif bounds is not None:
                node = ("rep", node, *bounds)
            else:
                return node
            if self.peek() == "?":  # lazy and greedy match the same set of strings
                self.i += 1

    def _counted(self) -> tuple[int, int | None] | None:
        end = self.p.find("}", self.i)
        body = self.p[self.i + 1 : end] if end > 0 else ""
        lo, sep, hi = body.partition(",")
        if not (lo.isdigit() or sep) or (lo and not lo.isdigit()) or (hi and not hi.isdigit()):
            return None  # a literal "{"
        lo = lo or "0"  # {,n} is {0,n} and {,} is {0,}, as in Python
        self.i = end + 1
        bounds = (int(lo), (int(hi) if hi else None) if sep else int(lo))
        if bounds[1] is not None and bounds[1] < bounds[0]:
            raise self.error(f"bad repetition {{{body}}}")
        return bounds

    def atom(self) -> tuple:
        c = self.take()
        if c == "(":
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.peek() == "?":
                raise self.error("lookaround and named groups are not supported")
            node = self.alt()
            if self.take() != ")":
                raise self.error("missing ')'")
            return node
        if c == "[":
            return ("set", self.char_class())
        if c == ".":
            return ("set", negate([(0x0A, 0x0A)]))
        if c in "^$":
            return ("cat", [])
        if c == "\\":
            return ("set", self.escape(in_class=False))
        if c in "*+?":
            raise self.error(f"nothing to repeat before {c!r}")
        return ("set", [(ord(c), ord(c))])

    def escape(self, in_class: bool) -> Ranges:
        c = self.take()
        classes = {"d": DIGIT, "w": WORD, "s": SPACE}
        if c in classes:
            return classes[c]
        if c in "DWS":
            return negate(classes[c.lower()])
        if c in SIMPLE_ESCAPES:
            return [(SIMPLE_ESCAPES[c], SIMPLE_ESCAPES[c])]
        if c in "xuU":
            n = {"x": 2, "u": 4, "U": 8}[c]
            digits = self.p[self.i : self.i + n]
            try:
                cp = int(digits, 16)
            except ValueError:
                raise self.error(f"bad \\{c} escape") from None
            self.i += n
            return [(cp, cp)]
        if c.isdigit() or (c.isalpha() and not in_class and c in "bBAZ"):
            raise self.error(f"\\{c} (backreference or anchor) is not supported")
        return [(ord(c), ord(c))]

    def char_class(self) -> Ranges:
        neg = self.peek() == "^"
        self.i += neg
        out: Ranges = []
        first = True
        while True:
            c = self.take()
            if c == "]" and not first:
                break
            first = False
            if c == "\\":
                got = self.escape(in_class=True)
                if len(got) != 1 or got[0][0] != got[0][1]:
                    out += got
                    continue
                lo = got[0][0]
            else:
                lo = ord(c)
            if self.peek() == "-" and self.p[self.i + 1 : self.i + 2] not in ("]", ""):
                self.i += 1
                h = self.take()
                hi = self.escape(in_class=True)[0][0] if h == "\\" else ord(h)
                if hi < lo:
                    raise self.error("bad class range")
                out.append((lo, hi))
            else:
                out.append((lo, lo))
        return negate(out) if neg else normalize(out)


# --- code point ranges as UTF-8 byte range sequences ------------------------------------------------


def utf8_sequences(lo: int, hi: int) -> Iterator[list[tuple[int, int]]]:
    """Byte-range sequences whose concatenations are exactly the UTF-8 encodings of [lo, hi]
    (surrogates excluded)."""
    if lo > hi:
        return
    if lo <= 0xDFFF and hi >= 0xD800:
        yield from utf8_sequences(lo, 0xD7FF)
        yield from utf8_sequences(0xE000, hi)
        return
    for bound in (0x7F, 0x7FF, 0xFFFF):  # one encoded length per piece
        if lo <= bound < hi:
            yield from utf8_sequences(lo, bound)
            yield from utf8_sequences(bound + 1, hi)
            return
    if hi <= 0x7F:
        yield [(lo, hi)]
        return
    n = len(chr(lo).encode("utf-8"))
    for i in range(1, n):  # split until each trailing byte spans its full range or a single value
        m = (1 << (6 * i)) - 1
        if lo & ~m != hi & ~m:
            if lo & m:
                yield from utf8_sequences(lo, lo | m)
                yield from utf8_sequences((lo | m) + 1, hi)
                return
            if hi & m != m:
                yield from utf8_sequences(lo, (hi & ~m) - 1)
                yield from utf8_sequences(hi & ~m, hi)
                return
    yield list(zip(chr(lo).encode("utf-8"), chr(hi).encode("utf-8"), strict=True))


# --- Thompson NFA over bytes ---------------------------------------------------------------------


class _NFA:
    def __init__(self) -> None:
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[int, int, int]]] = []

    def state(self) -> int:
        self.eps.append([])
        self.edges.append([])
        if len(self.eps) > 20 * MAX_STATES:
            raise ConfigError("the constraint's pattern is too large (expand fewer counted repetitions)")
        return len(self.eps) - 1

    def build(self, node: tuple) -> tuple[int, int]:
        kind = node[0]
        if kind == "set":
            s, e = self.state(), self.state()
            for lo, hi in node[1]:
                for seq in utf8_sequences(lo, hi):
                    cur = s
                    for j, (a, b) in enumerate(seq):
                        nxt = e if j == len(seq) - 1 else self.state()
                        self.edges[cur].append((a, b, nxt))
                        cur = nxt
            return s, e
        if kind == "cat":
            s = e = self.state()
            for item in node[1]:
                a, b = self.build(item)
                self.eps[e].append(a)
                e = b
            return s, e
        if kind == "alt":
            s, e = self.state(), self.state()
            for item in node[1]:
                a, b = self.build(item)
                self.eps[s].append(a)
                self.eps[b].append(e)
            return s, e
        _, sub, lo, hi = node
        s = e = self.state()
        for _ in range(lo):
            a, b = self.build(sub)
            self.eps[e].append(a)
            e = b
        if hi is None:
            a, b = self.build(sub)
            self.eps[e].append(a)
            self.eps[b].append(a)
            end = self.state()
            self.eps[e].append(end)
            self.eps[b].append(end)
            return s, end
        end = self.state()
        for _ in range(hi - lo):
            self.eps[e].append(end)
            a, b = self.build(sub)
            self.eps[e].append(a)
            e = b
        self.eps[e].append(end)
        return s, end


@dataclass
class DFA:
    """A trimmed byte DFA: state 0 starts; every state can still reach acceptance."""

    trans: list[dict[int, int]]
    accept: list[bool]

    start: int = 0
    _table: tuple[np.ndarray, int] | None = field(default=None, repr=False, compare=False)

    def step(self, state: int, byte: int) -> int | None:
        return self.trans[state].get(byte)

    def accepting(self, state: int) -> bool:
        return self.accept[state]

    def can_continue(self, state: int) -> bool:
        return bool(self.trans[state])

    def table(self) -> tuple[np.ndarray, int]:
        """(transitions [states + 1, 256] int32, the dead state): row `dead` is the sink that every
        missing transition leads to, for walking many byte strings at once."""
        if self._table is None:
            dead = len(self.trans)
            table = np.full((dead + 1, 256), dead, dtype=np.int32)
            for s, row in enumerate(self.trans):
                for b, t in row.items():
                    table[s, b] = t
            self._table = (table, dead)
        return self._table

    def matches(self, data: bytes) -> bool:
        state: int | None = 0
        for b in data:
            state = self.step(state, b)  # type: ignore[arg-type]
            if state is None:
                return False
        return self.accepting(state)  # type: ignore[arg-type]


def compile_regex(pattern: str) -> DFA:
    """The DFA of the UTF-8 encodings of the strings that `pattern` matches in full."""
    nfa = _NFA()
    start, final = nfa.build(parse(pattern))

    def closure(states: set[int]) -> frozenset[int]:
        todo, seen = list(states), set(states)
        while todo:
            for t in nfa.eps[todo.pop()]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return frozenset(seen)

    first = closure({start})
    ids = {first: 0}
    order = [first]
    trans: list[dict[int, int]] = []
    for cur in order:  # grows as new subsets appear
        edges = [edge for s in cur for edge in nfa.edges[s]]
        cuts = sorted({a for a, _, _ in edges} | {b + 1 for _, b, _ in edges})
        row: dict[int, int] = {}
        for a, nxt_cut in pairwise(cuts):
            targets = {t for lo, hi, t in edges if lo <= a and nxt_cut - 1 <= hi}
            if not targets:
                continue
            target = closure(targets)
            if target not in ids:
                ids[target] = len(order)
                order.append(target)
                if len(order) > MAX_STATES:
                    raise ConfigError(
                        f"regex {pattern!r} needs over {MAX_STATES} automaton states; simplify it"
                    )
            for byte in range(a, nxt_cut):
                row[byte] = ids[target]
        trans.append(row)
    accept = [final in s for s in order]
    return _trim(trans, accept, pattern)


def _trim(trans: list[dict[int, int]], accept: list[bool], pattern: str) -> DFA:
    """Drop the states that cannot reach acceptance, renumbering the rest with the start at 0."""
    back: list[list[int]] = [[] for _ in trans]
    for s, row in enumerate(trans):
        for t in set(row.values()):
            back[t].append(s)
    live = {s for s, a in enumerate(accept) if a}
    todo = list(live)
    while todo:
        for s in back[todo.pop()]:
            if s not in live:
                live.add(s)
                todo.append(s)
    if 0 not in live:
        raise ConfigError(f"regex {pattern!r} matches no string")
    keep = sorted(live)
    new = {s: i for i, s in enumerate(keep)}
    rows = [{b: new[t] for b, t in trans[s].items() if t in new} for s in keep]
    return DFA(rows, [accept[s] for s in keep])


def intersect(a: Ranges, b: Ranges) -> Ranges:
    out = []
    for lo, hi in normalize(a):
        for lo2, hi2 in normalize(b):
            if max(lo, lo2) <= min(hi, hi2):
                out.append((max(lo, lo2), min(hi, hi2)))
    return normalize(out)


def parse(pattern: str) -> tuple:
    """The syntax tree of a pattern (see the module docstring for the syntax)."""
    return _Parser(pattern).parse()


def restrict(node: tuple, allowed: Ranges) -> tuple:
    """The tree with every character class narrowed to `allowed`."""
    kind = node[0]
    if kind == "set":
        return ("set", intersect(node[1], allowed))
    if kind in ("cat", "alt"):
        return (kind, [restrict(n, allowed) for n in node[1]])
    return ("rep", restrict(node[1], allowed), node[2], node[3])


def render(node: tuple) -> str:
    """A pattern whose tree is `node`."""
    kind = node[0]
    if kind == "set":
        ranges = node[1]
        if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
            return escape(chr(ranges[0][0])) if 0x20 < ranges[0][0] < 0x7F else f"\\U{ranges[0][0]:08X}"
        if not ranges:
            return f"[^\\x00-\\U{MAX_CP:08X}]"  # matches nothing
        return "[" + "".join(f"\\U{lo:08X}" + (f"-\\U{hi:08X}" if hi > lo else "") for lo, hi in ranges) + "]"
    if kind == "cat":
        return "(?:" + "".join(render(n) for n in node[1]) + ")"
    if kind == "alt":
        return "(?:" + "|".join(render(n) for n in node[1]) + ")"
    _, sub, lo, hi = node
    return f"(?:{render(sub)}){{{lo},{'' if hi is None else hi}}}"


def escape(text: str) -> str:
    """A regex that matches exactly `text`."""
    return "".join("\\" + c if c in r"\.^$|?*+()[]{}-/" else c for c in text)
