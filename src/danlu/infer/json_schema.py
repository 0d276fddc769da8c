"""JSON for constrained decoding: a JSON schema as a regex, and a byte matcher for any JSON object.

A schema is regular as long as it does not recurse, so it compiles to a regex (then a DFA,
regex_dfa.py). The subset: type string (minLength, maxLength, pattern, format date, time,
date-time, uuid, email, ipv4), integer (minimum, maximum and their exclusive forms), number, boolean,
null, array (items, minItems, maxItems), object (properties in their listed order, required ones
always present, optional ones possibly absent; no others), enum, const, anyOf/oneOf, a list of types
and local `#/$defs/...` references. Keywords outside it are named in a warning. A `pattern` is
narrowed to the characters a JSON string holds unescaped, so its matches stay valid JSON. A schema without a type (or an object without properties)
accepts any JSON value nested up to FREE_DEPTH levels. The output is laid out like `json.dumps`:
", " between items and ": " after keys, no other whitespace, so the text is a canonical rendering.

"Any JSON object" nests without bound, which no finite automaton can follow: JSONMatcher keeps the
open brackets in its state instead (a pushdown automaton) and reads the same layout.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from danlu.errors import ConfigError
from danlu.infer.regex_dfa import escape, negate, parse, render, restrict

STRING_CHAR = r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})'
STRING = f'"{STRING_CHAR}*"'
INTEGER = r"-?(?:0|[1-9][0-9]*)"
NUMBER = INTEGER + r"(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
ITEM_SEP, KEY_SEP = ", ", ": "
FREE_DEPTH = 2
# characters a JSON string holds unescaped: a `pattern` is narrowed to them, so its text stays valid JSON
PLAIN_CHARS = negate([(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)])
# real calendar dates: month lengths, and February 29 only in leap years (year 0000 does not exist)
_YEAR = r"(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
_LEAP = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_DATE = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP}-02-29)"
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
_OFFSET = r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
FORMATS = {
    "date": _DATE,
    "time": _TIME + _OFFSET + "?",
    "date-time": f"{_DATE}T{_TIME}{_OFFSET}",
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "email": r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,4}",
    "ipv4": r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])",
}
# keywords that narrow what a value may be but that this compiler cannot express: a warning names them
UNSUPPORTED = (
    "multipleOf",
    "uniqueItems",
    "patternProperties",
    "not",
    "allOf",
    "if",
    "contains",
    "prefixItems",
)
MAX_DEPTH = 32  # JSONMatcher: open brackets at most

log = logging.getLogger(__name__)


def free_value(depth: int = FREE_DEPTH) -> str:
    """Any JSON value nested at most `depth` levels deep."""
    leaf = f"{STRING}|{NUMBER}|true|false|null"
    if depth == 0:
        return f"(?:{leaf})"
    inner = free_value(depth - 1)
    sep, colon = escape(ITEM_SEP), escape(KEY_SEP)
    array = rf"\[(?:{inner}(?:{sep}{inner})*)?\]"
    obj = rf"\{{(?:{STRING}{colon}{inner}(?:{sep}{STRING}{colon}{inner})*)?\}}"
    return f"(?:{leaf}|{array}|{obj})"


def _literal(value: Any) -> str:
    return escape(json.dumps(value, ensure_ascii=False))


def _count(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"{{{lo},}}"
    if hi < lo:
        raise ConfigError(f"json_schema: a maximum ({hi}) below its minimum ({lo})")
    return f"{{{lo},{hi}}}"


class _Compiler:
    def __init__(self, root: dict[str, Any]):
        self.root = root
        self.resolving: list[str] = []

    def compile(self, schema: Any) -> str:
        if schema is True or schema == {}:
            return free_value()
        if not isinstance(schema, dict):
            raise ConfigError(f"json_schema: expected a schema object, got {schema!r}")
        ignored = [k for k in UNSUPPORTED if k in schema]
        if ignored:
            log.warning("json_schema: %s not supported; the output may not satisfy them", ", ".join(ignored))
        if "$ref" in schema:
            return self._ref(schema["$ref"])
        if "const" in schema:
            return _literal(schema["const"])
        if "enum" in schema:
            if not schema["enum"]:
                raise ConfigError("json_schema: an empty enum matches nothing")
            return "(?:" + "|".join(_literal(v) for v in schema["enum"]) + ")"
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return "(?:" + "|".join(self.compile(s) for s in schema[key]) + ")"
        kind = schema.get("type")
        if isinstance(kind, list):
            return "(?:" + "|".join(self.compile({**schema, "type": k}) for k in kind) + ")"
        if kind is None:
            return self._object(schema) if "properties" in schema else free_value()
        compilers = {
            "string": self._string,
            "integer": self._integer,
            "number": self._number,
            "boolean": lambda s: "(?:true|false)",
            "null": lambda s: "null",
            "array": self._array,
            "object": self._object,
        }
        if kind not in compilers:
            raise ConfigError(
                f"json_schema: type {kind!r} is not supported (use one of {', '.join(compilers)})"
            )
        return compilers[kind](schema)

    def _ref(self, ref: str) -> str:
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise ConfigError(f"json_schema: only local references (#/$defs/...) are supported, got {ref!r}")
        if ref in self.resolving:
            raise ConfigError(f"json_schema: {ref} refers to itself; recursive schemas are not supported")
        node: Any = self.root
        for part in ref[2:].split("/") if ref != "#" else ():
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"json_schema: reference {ref} points at nothing")
            node = node[part]
        self.resolving.append(ref)
        try:
            return self.compile(node)
        finally:
            self.resolving.pop()

    def _string(self, schema: dict[str, Any]) -> str:
        if "pattern" in schema:
            pattern = schema["pattern"].removeprefix("^").removesuffix("$")
            return '"' + render(restrict(parse(pattern), PLAIN_CHARS)) + '"'
        if "format" in schema:
            if schema["format"] in FORMATS:
                return f'"{FORMATS[schema["format"]]}"'
            log.warning(
                "json_schema: string format %r is not supported; any string is allowed", schema["format"]
            )
        lo, hi = int(schema.get("minLength", 0)), schema.get("maxLength")
        if lo == 0 and hi is None:
            return STRING
        return f'"{STRING_CHAR}{_count(lo, None if hi is None else int(hi))}"'

    def _integer(self, schema: dict[str, Any]) -> str:
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if "exclusiveMinimum" in schema:
            lo = _floor(schema["exclusiveMinimum"]) + 1
        if "exclusiveMaximum" in schema:
            hi = _ceil(schema["exclusiveMaximum"]) - 1
        if lo is None and hi is None:
            return INTEGER
        return integer_range(None if lo is None else _ceil(lo), None if hi is None else _floor(hi))

    def _number(self, schema: dict[str, Any]) -> str:
        bounds = [k for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in schema]
        if bounds:
            log.warning("json_schema: %s on a number is not supported (only on integers)", ", ".join(bounds))
        return NUMBER

    def _array(self, schema: dict[str, Any]) -> str:
        item = self.compile(schema.get("items", {}))
        lo, hi = int(schema.get("minItems", 0)), schema.get("maxItems")
        hi = None if hi is None else int(hi)
        sep = escape(ITEM_SEP)
        if hi == 0:
            return r"\[\]"
        rest = _count(max(lo - 1, 0), None if hi is None else hi - 1)
        body = f"{item}(?:{sep}{item}){rest}"
        return rf"\[{body}\]" if lo > 0 else rf"\[(?:{body})?\]"

    def _object(self, schema: dict[str, Any]) -> str:
        props = schema.get("properties")
        if not props:
            return free_value() if schema.get("additionalProperties", True) is not False else r"\{\}"
        required = set(schema.get("required", []))
        unknown = required - set(props)
        if unknown:
            raise ConfigError(f"json_schema: required {sorted(unknown)} are not among the properties")
        colon = escape(KEY_SEP)
        pieces = [(name in required, _literal(name) + colon + self.compile(s)) for name, s in props.items()]
        return r"\{" + _properties(pieces, 0, first=True) + r"\}"


def _floor(x: float) -> int:
    return int(x // 1)


def _ceil(x: float) -> int:
    return -int(-x // 1)


def integer_range(lo: int | None, hi: int | None) -> str:
    """A regex of the integers in [lo, hi] (either end open when None), in JSON's form."""
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"json_schema: no integer lies between minimum {lo} and maximum {hi}")
    parts = []
    if lo is None or lo < 0:  # the negative part: -[max(1, -hi), -lo]
        neg_hi = None if lo is None else -lo
        neg_lo = 1 if hi is None or hi >= 0 else -hi
        parts.append("-" + _natural_range(neg_lo, neg_hi))
    if hi is None or hi >= 0:
        parts.append(_natural_range(max(lo or 0, 0), hi))
    return "(?:" + "|".join(parts) + ")"


def _natural_range(lo: int, hi: int | None) -> str:
    """Regex of the integers lo..hi >= 0 without leading zeros (hi None: no upper end)."""
    if hi is None:
        n = len(str(lo))
        longer = f"[1-9][0-9]{{{n},}}"  # every number with more digits than lo
        return f"(?:{_natural_range(lo, 10**n - 1)}|{longer})"
    parts = []
    while lo <= hi:  # split at each power of ten: the pieces have one length each
        top = min(hi, 10 ** len(str(lo)) - 1)
        parts.append(_same_length(str(lo), str(top)))
        lo = top + 1
    return "(?:" + "|".join(parts) + ")"


def _same_length(a: str, b: str) -> str:
    """Regex of the numbers a..b written with the same number of digits."""
    if len(a) == 1:
        return f"[{a}-{b}]"
    if a[0] == b[0]:
        return a[0] + _same_length(a[1:], b[1:])
    n = len(a) - 1
    parts = [a[0] + _same_length(a[1:], "9" * n)]
    if int(b[0]) - int(a[0]) > 1:
        parts.append(f"[{int(a[0]) + 1}-{int(b[0]) - 1}][0-9]{{{n}}}")
    parts.append(b[0] + _same_length("0" * n, b[1:]))
    return "(?:" + "|".join(parts) + ")"


def _properties(pieces: list[tuple[bool, str]], i: int, first: bool) -> str:
    """The properties from i on, in order; `first`: none was written yet (no separator before)."""
    if i == len(pieces):
        return ""
    required, body = pieces[i]
    here = ("" if first else escape(ITEM_SEP)) + body
    present = here + _properties(pieces, i + 1, first=False)
    if required:
        return present
    return f"(?:{present}|{_properties(pieces, i + 1, first)})"


def schema_regex(schema: Any) -> str:
    """The regex of the JSON texts (json.dumps layout) that match `schema`."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ConfigError(f"json_schema is not valid JSON: {e}") from None
    return _Compiler(schema if isinstance(schema, dict) else {}).compile(schema)


# --- any JSON object: a pushdown matcher over bytes ------------------------------------------------

# modes; the state is (open brackets as a string of "{" and "[", mode, detail)
VALUE, FIRST_ITEM, KEY, STR, ESC, HEX, UTF8, COLON, AFTER, NUM, LIT, DONE, START = range(13)
WS_AFTER = (ord(","), ord(":"))
HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")
DIGITS = frozenset(b"0123456789")
# number parts: (part, byte class) -> next part; a part in NUM_END may end the number
NUM_NEXT = {
    ("minus", "0"): "zero",
    ("minus", "1"): "int",
    ("zero", "."): "dot",
    ("int", "0"): "int",
    ("int", "1"): "int",
    ("int", "."): "dot",
    ("dot", "0"): "frac",
    ("dot", "1"): "frac",
    ("frac", "0"): "frac",
    ("frac", "1"): "frac",
    ("e", "0"): "exp",
    ("e", "1"): "exp",
    ("e", "+"): "sign",
    ("sign", "0"): "exp",
    ("sign", "1"): "exp",
    ("exp", "0"): "exp",
    ("exp", "1"): "exp",
}
NUM_END = {"zero", "int", "frac", "exp"}


class JSONMatcher:
    """Byte matcher of one JSON object (any keys and values, nested up to MAX_DEPTH) in json.dumps
    layout; states are hashable tuples."""

    start: tuple = ("", START, None)

    def accepting(self, state: tuple) -> bool:
        return state[1] == DONE

    def can_continue(self, state: tuple) -> bool:
        return state[1] != DONE

    def step(self, state: tuple, byte: int) -> tuple | None:
        stack, mode, detail = state
        c = chr(byte)
        if mode == START:
            return ("{", FIRST_ITEM, None) if c == "{" else None
        if mode == STR:
            if c == '"':
                return (stack, COLON if detail else AFTER, None)
            if c == "\\":
                return (stack, ESC, detail)
            if byte < 0x20:
                return None
            if byte < 0x80:
                return state
            need = (
                1 if 0xC2 <= byte <= 0xDF else 2 if 0xE0 <= byte <= 0xEF else 3 if 0xF0 <= byte <= 0xF4 else 0
            )
            return (stack, UTF8, (detail, need)) if need else None
        if mode == UTF8:
            key, need = detail
            if not 0x80 <= byte <= 0xBF:
                return None
            return (stack, STR, key) if need == 1 else (stack, UTF8, (key, need - 1))
        if mode == ESC:
            if c == "u":
                return (stack, HEX, (detail, 4))
            return (stack, STR, detail) if c in '"\\/bfnrt' else None
        if mode == HEX:
            key, left = detail
            if byte not in HEXDIGITS:
                return None
            return (stack, STR, key) if left == 1 else (stack, HEX, (key, left - 1))
        if mode == NUM:
            cls = "0" if c == "0" else "1" if byte in DIGITS else "+" if c in "+-" else c
            if c in "eE" and detail in ("zero", "int", "frac"):
                return (stack, NUM, "e")
            nxt = NUM_NEXT.get((detail, cls))
            if nxt is not None:
                return (stack, NUM, nxt)
            return self.step((stack, AFTER, None), byte) if detail in NUM_END else None
        if mode == LIT:
            return (
                (stack, LIT, detail[1:])
                if c == detail[0] and len(detail) > 1
                else ((stack, AFTER, None) if c == detail else None)
            )
        if mode == COLON:
            return (stack, VALUE, ":") if c == ":" else None
        if mode == FIRST_ITEM:
            if stack[-1] == "{":
                return (stack, STR, True) if c == '"' else (self._close(stack) if c == "}" else None)
            return self._close(stack) if c == "]" else self._value(stack, c)
        if mode == KEY:
            if c == " " and detail == ",":
                return (stack, KEY, " ")
            return (stack, STR, True) if c == '"' else None
        if mode == VALUE:
            if c == " " and detail == ":":
                return (stack, VALUE, " ")
            return self._value(stack, c)
        if mode == AFTER:
            if c == ",":
                return (stack, KEY, ",") if stack[-1] == "{" else (stack, VALUE, ":")
            if (c == "}" and stack[-1] == "{") or (c == "]" and stack[-1] == "["):
                return self._close(stack)
        return None

    def _close(self, stack: str) -> tuple:
        rest = stack[:-1]
        return (rest, AFTER, None) if rest else ("", DONE, None)

    def _value(self, stack: str, c: str) -> tuple | None:
        if c in "{[":
            return (stack + c, FIRST_ITEM, None) if len(stack) < MAX_DEPTH else None
        if c == '"':
            return (stack, STR, False)
        if c == "-":
            return (stack, NUM, "minus")
        if c == "0":
            return (stack, NUM, "zero")
        if c in "123456789":
            return (stack, NUM, "int")
        for word in ("true", "false", "null"):
            if c == word[0]:
                return (stack, LIT, word[1:])
        return None
