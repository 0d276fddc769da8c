"""GPT-2's tokenizer from the tiktoken ranks in the openai-whisper sdist: GPT-2's published ids."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.errors import TokenizerError
from danlu.tokenizer import Tokenizer
from danlu.tokenizer.gpt2 import GPT2Tokenizer

pytestmark = pytest.mark.needs_data


@pytest.fixture(scope="module")
def gpt2() -> GPT2Tokenizer:
    return GPT2Tokenizer.default()


def test_known_gpt2_ids(gpt2):
    assert gpt2.vocab_size == 50257 and gpt2.eos_id == 50256
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" the") == [262]
    assert gpt2.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert gpt2.encode("<|endoftext|>") != [50256]  # typed text stays text
    assert gpt2.encode("hi", bos=True, eos=True) == [50256, 5303, 50256]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_round_trip_and_bytes(gpt2, text):
    ids = gpt2.encode(text)
    assert gpt2.decode(ids) == text
    assert int(gpt2.token_bytes()[ids].sum()) == len(text.encode("utf-8"))


def test_save_load_and_tamper(gpt2, tmp_path):
    gpt2.save(tmp_path / "tok")
    back = Tokenizer.load(tmp_path / "tok")
    assert isinstance(back, GPT2Tokenizer) and back.encode("Hello world") == [15496, 995]
    with open(tmp_path / "tok" / "gpt2.tiktoken", "a") as f:
        f.write("IQ== 50300\n")
    with pytest.raises(TokenizerError, match="fingerprint"):
        Tokenizer.load(tmp_path / "tok")
