"""JSON for constrained decoding: a JSON schema as a regex, and a byte matcher for any JSON object.

A schema is regular as long as it does not recurse, so it compiles to a regex (then a DFA,
regex_dfa.py). The subset: type string (minLength, maxLength, pattern, enum), number, integer,
boolean, null, array (items, minItems, maxItems), object (properties in their listed order, required
ones always present, optional ones possibly absent; no others), enum, const, anyOf/oneOf, a list of
types and local `#/$defs/...` references. A schema without a type (or an object without properties)
accepts any JSON value nested up to FREE_DEPTH levels. The output is laid out like `json.dumps`:
", " between items and ": " after keys, no other whitespace, so the text is a canonical rendering.

"Any JSON object" nests without bound, which no finite automaton can follow: JSONMatcher keeps the
open brackets in its state instead (a pushdown automaton) and reads the same layout.
"""

from __future__ import annotations

import json
from typing import Any

from danlu.errors import ConfigError
from danlu.infer.regex_dfa import escape

STRING_CHAR = r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})'
STRING = f'"{STRING_CHAR}*"'
INTEGER = r"-?(?:0|[1-9][0-9]*)"
NUMBER = INTEGER + r"(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
ITEM_SEP, KEY_SEP = ", ", ": "
FREE_DEPTH = 2
MAX_DEPTH = 32  # JSONMatcher: open brackets at most


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
            "integer": lambda s: INTEGER,
            "number": lambda s: NUMBER,
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
            return '"' + schema["pattern"].removeprefix("^").removesuffix("$") + '"'
        lo, hi = int(schema.get("minLength", 0)), schema.get("maxLength")
        if lo == 0 and hi is None:
            return STRING
        return f'"{STRING_CHAR}{_count(lo, None if hi is None else int(hi))}"'

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
