"""Constraints and streamed text on a real 49k vocabulary: SmolLM2's tokenizer, read from its GGUF."""

from __future__ import annotations

import json
import time

import pytest
import torch

from danlu.infer.constrain import compile_constraint, token_byte_strings
from danlu.infer.stops import TextStream

pytestmark = pytest.mark.needs_data

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "population": {"type": "integer"}},
    "required": ["city", "population"],
}


@pytest.fixture(scope="module")
def tok():
    gguf = pytest.importorskip("gguf")
    from danlu.interop.gguf import gguf_tokenizer, registry_gguf

    return gguf_tokenizer(gguf.GGUFReader(registry_gguf("smollm2-135m-instruct")))


def test_token_bytes_are_what_each_token_decodes_to(tok) -> None:
    pieces = token_byte_strings(tok, tok.vocab_size)
    specials = set(tok.special_tokens.values())
    assert all(pieces[i] is None for i in specials)
    checked = 0
    for i, data in enumerate(pieces):
        if data is None:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a piece of a character: decodes to U+FFFD on its own
        assert tok.decode([i]) == text, i
        checked += 1
    assert checked > 40_000


def test_streamed_text_with_stops_on_multilingual_text(tok) -> None:
    text = "Hello world! 中文 and ünïcödé 🙂 then STOP here"
    stream = TextStream(tok, stop=["STOP"])
    shown = "".join(stream.push(i)[0] for i in tok.encode(text))
    assert stream.stopped and shown == text[: text.index("STOP")]


def test_schema_masks_allow_a_valid_instance_and_stay_fast(tok) -> None:
    constraint = compile_constraint({"type": "json_schema", "schema": SCHEMA}, tok, tok.vocab_size)
    state = constraint.start
    slowest = 0.0
    for t in tok.encode(json.dumps({"city": "Zürich 中文", "population": 421878})):
        start = time.perf_counter()
        mask = constraint.mask(state)
        slowest = max(slowest, time.perf_counter() - start)
        assert bool(mask[t]), tok.decode([t])
        state = constraint.advance(state, t)
    assert constraint.finished(state)
    assert slowest < 5.0  # one walk of the vocabulary trie; about 0.3 s here
    first = constraint.mask(constraint.start)
    assert int(first.sum()) < 50 and not bool(first[tok.eos_id])  # only tokens that start '{"city": '
    assert isinstance(first, torch.Tensor)
