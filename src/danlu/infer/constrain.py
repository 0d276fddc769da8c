"""Constrained decoding by token masks: a choice list, a regex, a JSON schema or any JSON object.

A constraint is a byte matcher (a DFA from regex_dfa.py, or json_schema.JSONMatcher) plus the
vocabulary: the tokens allowed in a matcher state are those whose bytes the matcher can read from that
state without getting stuck. The vocabulary is kept as a byte trie, so one walk from a state visits
each shared prefix once and abandons a whole subtree at its first impossible byte; the mask of each
state is computed once and cached. Every state the matcher reaches can still be completed (the DFA is
trimmed), so a masked sample never paints itself into a corner. The end-of-text tokens are allowed
only in accepting states; special tokens never appear inside the constrained text.

Token bytes come from the tokenizer's byte-level vocabulary (GPT-2's byte-to-character map), from
`<0xHH>` byte-fallback tokens, or from the token's text.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from functools import cached_property, lru_cache
from typing import Any, Protocol

import numpy as np
import torch

from danlu.errors import ConfigError
from danlu.infer.json_schema import JSONMatcher, schema_regex
from danlu.infer.regex_dfa import DFA, compile_regex, escape
from danlu.tokenizer.pretrained import byte_decoder

log = logging.getLogger(__name__)

MAX_MASKS = 512  # per constraint: 512 states of a 50k vocabulary hold 25 MB
BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class Matcher(Protocol):
    start: Any

    def step(self, state: Any, byte: int) -> Any | None: ...
    def accepting(self, state: Any) -> bool: ...
    def can_continue(self, state: Any) -> bool: ...


def token_byte_strings(tokenizer: Any, vocab_size: int) -> list[bytes | None]:
    """The bytes of each id below vocab_size; None for special tokens and ids the tokenizer lacks."""
    specials = set(getattr(tokenizer, "special_tokens", {}).values())
    if getattr(tokenizer, "eos_id", None) is not None:
        specials.add(tokenizer.eos_id)
    enc = getattr(tokenizer, "enc", None)
    decoder = byte_decoder()
    out: list[bytes | None] = []
    for i in range(vocab_size):
        if i in specials or i >= getattr(tokenizer, "vocab_size", vocab_size):
            out.append(None)
        elif enc is not None and hasattr(enc, "decode_single_token_bytes"):
            out.append(enc.decode_single_token_bytes(i))
        else:
            text = tokenizer.id_to_token(i)
            if text is None:
                out.append(None)
            elif all(ch in decoder for ch in text):
                out.append(bytes(decoder[ch] for ch in text))
            elif m := BYTE_FALLBACK.fullmatch(text):
                out.append(bytes([int(m.group(1), 16)]))
            else:  # sentencepiece: "▁" stands for a space
                out.append(text.replace("\u2581", " ").encode("utf-8"))
    return out


class _Trie:
    """Vocabulary tokens by their bytes: node = (children by byte, ids ending here)."""

    def __init__(self, tokens: list[bytes | None]):
        self.tokens = tokens
        self.root: tuple[dict[int, Any], list[int]] = ({}, [])
        for i, data in enumerate(tokens):
            if not data:
                continue
            node = self.root
            for b in data:
                node = node[0].setdefault(b, ({}, []))
            node[1].append(i)

    def walk(self, matcher: Matcher, state: Any) -> list[int]:
        """The ids whose bytes the matcher reads from `state`."""
        allowed: list[int] = []
        todo = [(self.root, state)]
        while todo:
            (children, ids), s = todo.pop()
            allowed += ids  # the root holds none (no token is empty)
            for b, child in children.items():
                nxt = matcher.step(s, b)
                if nxt is not None:
                    todo.append((child, nxt))
        return allowed

    @cached_property
    def _matrix(self) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(ids, bytes [n, longest] uint8, rows still reading at each column): the tokens longest
        first, so the tokens that have a byte at column j are the first rows."""
        ids = sorted((i for i, t in enumerate(self.tokens) if t), key=lambda i: -len(self.tokens[i] or b""))
        lengths = np.array([len(self.tokens[i] or b"") for i in ids], dtype=np.int64)
        data = np.zeros((len(ids), int(lengths.max(initial=0))), dtype=np.uint8)
        for row, i in enumerate(ids):
            data[row, : lengths[row]] = np.frombuffer(self.tokens[i] or b"", dtype=np.uint8)
        reading = [int((lengths > j).sum()) for j in range(data.shape[1])]
        return np.array(ids, dtype=np.int64), data, reading

    def walk_dfa(self, dfa: DFA, state: int) -> np.ndarray:
        """The ids a DFA reads from `state`: every token at once, one byte column at a time."""
        ids, data, reading = self._matrix
        table, dead = dfa.table()
        states = np.full(len(ids), state, dtype=np.int32)
        for j, n in enumerate(reading):
            states[:n] = table[states[:n], data[:n, j]]
        return ids[states != dead]


# tries are built once per tokenizer (keyed by id, holding the tokenizer so the id stays its own)
_TRIES: OrderedDict[tuple[int, int], tuple[Any, _Trie]] = OrderedDict()


def vocab_trie(tokenizer: Any, vocab_size: int) -> _Trie:
    key = (id(tokenizer), vocab_size)
    if key not in _TRIES:
        _TRIES[key] = (tokenizer, _Trie(token_byte_strings(tokenizer, vocab_size)))
        while len(_TRIES) > 4:
            _TRIES.popitem(last=False)
    return _TRIES[key][1]


class TokenConstraint:
    """Allowed-token masks over a byte matcher; the state after each token."""

    def __init__(self, matcher: Matcher, trie: _Trie, end_ids: set[int], vocab_size: int):
        self.matcher = matcher
        self.trie = trie
        self.end_ids = sorted(i for i in end_ids if 0 <= i < vocab_size)
        self.vocab_size = vocab_size
        self.start = matcher.start
        # masks only, the most recent MAX_MASKS: the state after a token is a walk over its few bytes
        self._masks: OrderedDict[Any, torch.Tensor] = OrderedDict()

    def mask(self, state: Any) -> torch.Tensor:
        """Bool [V]: the tokens allowed next (computed once per state)."""
        if state in self._masks:
            self._masks.move_to_end(state)
        else:
            if isinstance(self.matcher, DFA):  # vectorized over the vocabulary
                allowed = torch.from_numpy(self.trie.walk_dfa(self.matcher, state))
            else:
                allowed = torch.tensor(self.trie.walk(self.matcher, state), dtype=torch.long)
            mask = torch.zeros(self.vocab_size, dtype=torch.bool)
            mask[allowed] = True
            if self.matcher.accepting(state):
                mask[self.end_ids] = True
            if not bool(mask.any()):
                log.warning("the constraint cannot continue with this vocabulary; the output stops here")
            self._masks[state] = mask
            if len(self._masks) > MAX_MASKS:
                self._masks.popitem(last=False)
        return self._masks[state]

    def advance(self, state: Any, token: int) -> Any:
        """The state after `token` (an end id leaves it as it is)."""
        if token in self.end_ids:
            return state
        data = self.trie.tokens[token] if 0 <= token < len(self.trie.tokens) else None
        for b in data or b"":
            state = self.matcher.step(state, b)
            if state is None:
                break
        if not data or state is None:
            raise ConfigError(f"token {token} is not allowed by the constraint here")
        return state

    def finished(self, state: Any) -> bool:
        """Accepting and no byte may follow, or nothing at all is allowed."""
        if self.matcher.accepting(state) and not self.matcher.can_continue(state):
            return True
        return not bool(self.mask(state).any())


def constraint_regex(spec: dict[str, Any]) -> str | None:
    """The regex of a choice / regex / json_schema constraint (None for "json": any object)."""
    kind = spec.get("type")
    if kind == "choice":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
            raise ConfigError("constraint choices must be a non-empty list of non-empty strings")
        return "(?:" + "|".join(escape(c) for c in choices) + ")"
    if kind == "regex":
        pattern = spec.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError("constraint pattern must be a non-empty regex string")
        return pattern
    if kind == "json_schema":
        if "schema" not in spec:
            raise ConfigError('a json_schema constraint needs its "schema"')
        return schema_regex(spec["schema"])
    if kind == "json":
        return None
    raise ConfigError(f"unknown constraint type {kind!r} (choice, regex, json_schema, json)")


@lru_cache(maxsize=32)
def _dfa(pattern: str) -> DFA:
    return compile_regex(pattern)


# compiled constraints are shared by requests (their mask caches too); keyed like the tries
_CONSTRAINTS: OrderedDict[tuple[str | None, int, int], tuple[Any, TokenConstraint]] = OrderedDict()
_LOCK = threading.Lock()


def compile_constraint(spec: dict[str, Any], tokenizer: Any, vocab_size: int) -> TokenConstraint:
    """The token-mask constraint of SamplingParams.constraint for this tokenizer."""
    if not isinstance(spec, dict):
        raise ConfigError(f"a constraint is a dict with a 'type', got {spec!r}")
    pattern = constraint_regex(spec)
    key = (pattern, id(tokenizer), vocab_size)
    with _LOCK:  # requests may arrive on several threads (the server's)
        if key in _CONSTRAINTS:
            _CONSTRAINTS.move_to_end(key)
            return _CONSTRAINTS[key][1]
        matcher: Matcher = JSONMatcher() if pattern is None else _dfa(pattern)
        ends = {tokenizer.eos_id}
        if hasattr(tokenizer, "chat_stop_ids"):
            ends |= set(tokenizer.chat_stop_ids())
        constraint = TokenConstraint(matcher, vocab_trie(tokenizer, vocab_size), ends, vocab_size)
        _CONSTRAINTS[key] = (tokenizer, constraint)
        while len(_CONSTRAINTS) > 16:
            _CONSTRAINTS.popitem(last=False)
        return constraint
