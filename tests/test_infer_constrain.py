"""Constrained decoding: the regex automaton against Python's re, UTF-8 byte ranges, JSON schemas and any
JSON object, token masks against a brute-force walk, and sampled output that always matches."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from danlu.errors import ConfigError
from danlu.infer.constrain import compile_constraint, token_byte_strings
from danlu.infer.engine import Engine
from danlu.infer.json_schema import JSONMatcher, integer_range, schema_regex
from danlu.infer.params import SamplingParams
from danlu.infer.regex_dfa import compile_regex, utf8_sequences
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model
from danlu.tokenizer.bpe import Tokenizer

TEXT = 'person: {"name": "Ann", "age": 31, "tags": ["a", "b"], "ok": true} foo@bar.com 日本 héllo [1, -2.5e3]'
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer"},
        "score": {"type": "number"},
        "tags": {"type": "array", "items": {"enum": ["red", "green", 7]}, "maxItems": 3},
        "ok": {"type": "boolean"},
        "pet": {
            "type": "object",
            "properties": {
                "kind": {"enum": ["cat", "dog"]},
                "nick": {"type": ["string", "null"], "maxLength": 3},
            },
            "required": ["kind"],
        },
    },
    "required": ["name", "pet"],
}
REGEXES = [r"[a-z]{2,5}@(foo|bar)\.(com|org)", r"(\+|-)?\d{1,3}(\.\d\d)?", r"(日本|héllo|x)+ ?end"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models run fastest on one thread, and far faster than two threads on a busy machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([TEXT] * 40, vocab_size=300)


@pytest.fixture(scope="module")
def engine(tok: Tokenizer) -> Engine:
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(n_layer=2, n_embd=32, n_head=2, vocab_size=tok.vocab_size, max_seq_len=512)
    )
    return Engine(model, tok, max_batch=4)


# --- the automaton ------------------------------------------------------------------------------------


def test_utf8_byte_ranges_encode_exactly_the_code_point_range() -> None:
    rng = random.Random(0)
    for lo, hi in [(0x80, 0x7FF), (0x7F0, 0x1234), (0xD700, 0xE100), (0xFFF0, 0x10010), (0, 0x10FFFF)]:
        seqs = list(utf8_sequences(lo, hi))
        for cp in [rng.randint(max(0, lo - 99), min(0x10FFFF, hi + 99)) for _ in range(1500)]:
            if 0xD800 <= cp <= 0xDFFF:
                continue
            data = chr(cp).encode()
            hit = any(
                len(s) == len(data) and all(a <= b <= c for (a, c), b in zip(s, data, strict=True))
                for s in seqs
            )
            assert hit == (lo <= cp <= hi), hex(cp)


PATTERNS = [
    r"a+b?c*",
    r"(ab|cd){2,3}",
    r"[^a-c\d]x",
    r"(?:foo|bar)+baz",
    r"é|日本",
    r".{0,3}",
    r"[a-z]+@[a-z]+\.(com|org)",
    r"x{2,}[\w.]\s?",
    r"\[\]|\{[0-9]\}",
    r"a{,2}b|x{}|c{,}",
]


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(0, len(PATTERNS) - 1),
    text=st.text(alphabet="abcdx0123-@.éz日本fobr\n _[]{}", max_size=9),
)
def test_the_dfa_accepts_what_python_re_fullmatches(index: int, text: str) -> None:
    pattern = PATTERNS[index]
    assert compile_regex(pattern).matches(text.encode()) == bool(re.fullmatch(pattern, text, re.ASCII))


@pytest.mark.parametrize("bad", ["(ab", "a)", "*a", r"(a)\1", "(?=a)b", "a{3,1}"])
def test_unsupported_or_broken_regexes_are_one_line_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="regex"):
        compile_regex(bad)


# --- JSON -----------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


def matcher_accepts(data: bytes) -> bool:
    m = JSONMatcher()
    state = m.start
    for b in data:
        state = m.step(state, b)
        if state is None:
            return False
    return m.accepting(state)


@settings(max_examples=150, deadline=None)
@given(obj=st.dictionaries(st.text(max_size=4), json_values, max_size=4))
def test_any_json_matcher_accepts_every_object_in_both_layouts(obj: dict) -> None:
    assert matcher_accepts(json.dumps(obj).encode())
    assert matcher_accepts(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())
    assert not matcher_accepts(json.dumps(obj).encode()[:-1])
    assert not matcher_accepts(json.dumps([obj]).encode())  # an object, not an array


@settings(max_examples=300, deadline=None)
@given(data=st.text(alphabet='{}[]",: 0123-.eEtrufalsn\\xé', max_size=14))
def test_any_json_matcher_accepts_only_json_objects(data: str) -> None:
    if matcher_accepts(data.encode()):
        assert isinstance(json.loads(data), dict)


def test_schema_regex_matches_valid_instances_only() -> None:
    dfa = compile_regex(schema_regex(SCHEMA))
    good = [
        {"name": "Ann", "pet": {"kind": "cat"}},
        {
            "name": "",
            "age": -3,
            "score": 1.5e3,
            "tags": ["red", 7],
            "ok": False,
            "pet": {"kind": "dog", "nick": None},
        },
        {"name": "日本", "tags": [], "pet": {"kind": "dog", "nick": "Rex"}},
    ]
    bad = [
        {"name": "Ann"},  # required pet missing
        {"name": "toolongname", "pet": {"kind": "cat"}},
        {"name": "A", "age": 1.5, "pet": {"kind": "cat"}},
        {"name": "A", "tags": ["blue"], "pet": {"kind": "cat"}},
        {"pet": {"kind": "cat"}, "name": "A"},  # properties in the schema's order
    ]
    for value in good:
        jsonschema.validate(value, SCHEMA)
        assert dfa.matches(json.dumps(value, ensure_ascii=False).encode()), value
    for value in bad:
        assert not dfa.matches(json.dumps(value, ensure_ascii=False).encode()), value


@settings(max_examples=60, deadline=None)
@given(
    lo=st.none() | st.integers(-3000, 3000),
    span=st.none() | st.integers(0, 5000),
    values=st.lists(st.integers(-10_000, 10_000), min_size=20, max_size=20),
)
def test_integer_range_regex_holds_exactly_the_integers_in_range(lo, span, values) -> None:
    hi = None if span is None else (span if lo is None else lo + span)
    dfa = compile_regex(integer_range(lo, hi))
    for v in [*values, lo or 0, hi or 0, (lo or 0) - 1, (hi or 0) + 1]:
        assert dfa.matches(str(v).encode()) == ((lo is None or v >= lo) and (hi is None or v <= hi)), v
    assert not dfa.matches(b"007")


FORMATTED = {
    "type": "object",
    "properties": {
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "delta": {"type": "integer", "exclusiveMinimum": -5, "exclusiveMaximum": 5},
        "day": {"type": "string", "format": "date"},
        "id": {"type": "string", "format": "uuid"},
        "ip": {"type": "string", "format": "ipv4"},
        "word": {"type": "string", "pattern": "^.{1,6}$"},  # "." may not produce a bare quote
    },
    "required": ["age", "delta", "day", "id", "ip", "word"],
}


def test_formats_ranges_and_patterns_sample_valid_json(engine: Engine) -> None:
    quoted = compile_regex(schema_regex({"type": "string", "pattern": ".+"}))
    assert quoted.matches(b'"ab"') and not quoted.matches(b'"a"b"') and not quoted.matches(b'"a\\"')
    checker = jsonschema.FormatChecker()
    for seed in (0, 4):
        for text in generate(engine, seed, {"type": "json_schema", "schema": FORMATTED}):
            jsonschema.validate(json.loads(text), FORMATTED, format_checker=checker)


@pytest.mark.parametrize(
    "schema, message",
    [
        ({"type": "object", "properties": {"a": {"$ref": "#"}}}, "itself"),
        ({"type": "tuple"}, "not supported"),
        ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "required"),
        ({"$ref": "#/$defs/missing"}, "points at nothing"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_schemas_are_one_line_errors(schema: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        schema_regex(schema)


# --- token masks ------------------------------------------------------------------------------------------


def test_mask_is_exactly_the_tokens_whose_bytes_the_matcher_reads(tok: Tokenizer) -> None:
    constraint = compile_constraint({"type": "json_schema", "schema": SCHEMA}, tok, tok.vocab_size)
    dfa, pieces = constraint.matcher, token_byte_strings(tok, tok.vocab_size)
    state = constraint.start
    for t in tok.encode('{"name": "A')[:3]:
        assert bool(constraint.mask(state)[t])
        state = constraint.advance(state, t)
    for s in (constraint.start, state):
        want = []
        for data in pieces:
            cur = s
            for b in data or b"":
                cur = dfa.step(cur, b) if cur is not None else None
            want.append(data is not None and cur is not None)
        assert constraint.mask(s).tolist() == want
    assert not constraint.mask(constraint.start)[tok.eos_id]  # EOS only where the text is complete


@pytest.mark.parametrize("pattern", [*REGEXES, schema_regex(SCHEMA)])
def test_vectorized_dfa_walk_equals_the_trie_walk_in_every_state(tok: Tokenizer, pattern: str) -> None:
    from danlu.infer.constrain import vocab_trie

    dfa, trie = compile_regex(pattern), vocab_trie(tok, tok.vocab_size)
    for state in range(len(dfa.trans)):
        assert sorted(trie.walk_dfa(dfa, state).tolist()) == sorted(trie.walk(dfa, state))


# --- sampled output always matches ------------------------------------------------------------------------


def generate(engine: Engine, seed: int, constraint: dict, bias: dict[int, float] | None = None) -> list:
    params = [
        SamplingParams(
            temperature=1.0, seed=seed + k, constraint=constraint, max_tokens=400, logit_bias=bias or {}
        )
        for k in range(4)
    ]
    out = engine.generate([engine.tokenizer.encode("x", bos=True)] * 4, params)
    assert all(o.finish_reason == "stop" for o in out), [o.text for o in out]
    return [o.text for o in out]


SLOW_FIXTURE = settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@SLOW_FIXTURE
@given(seed=st.integers(0, 2**31))
def test_sampled_json_always_matches_its_schema(engine: Engine, seed: int) -> None:
    for text in generate(engine, seed, {"type": "json_schema", "schema": SCHEMA}):
        jsonschema.validate(json.loads(text), SCHEMA)


@SLOW_FIXTURE
@given(seed=st.integers(0, 2**31))
def test_sampled_regex_and_choice_output_always_matches(engine: Engine, seed: int) -> None:
    for pattern in REGEXES:
        for text in generate(engine, seed, {"type": "regex", "pattern": pattern}):
            assert re.fullmatch(pattern, text, re.ASCII), (pattern, text)
    choices = ["yes", "no", "maybe 日本"]
    assert set(generate(engine, seed, {"type": "choice", "choices": choices})) <= set(choices)


@SLOW_FIXTURE
@given(seed=st.integers(0, 2**31))
def test_sampled_any_json_is_always_an_object(engine: Engine, seed: int) -> None:
    tok = engine.tokenizer
    # an untrained model rarely closes a string: favouring the closing tokens keeps outputs short
    enders = [i for i in range(tok.vocab_size) if any(c in (tok.id_to_token(i) or "") for c in '"}],')]
    for text in generate(engine, seed, {"type": "json"}, {i: 4.0 for i in enders}):
        assert isinstance(json.loads(text), dict)


def test_choices_cover_more_than_one_option_over_seeds(engine: Engine) -> None:
    seen = set()
    for seed in range(0, 40, 4):
        seen |= set(generate(engine, seed, {"type": "choice", "choices": ["red", "green", "blue"]}))
    assert seen <= {"red", "green", "blue"} and len(seen) >= 2
