"""danlu's own BPE trainer against HF tokenizers' BpeTrainer: the same vocabulary, merges and file."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from danlu.errors import ConfigError, TokenizerError
from danlu.tokenizer import Tokenizer, train_tokenizer
from danlu.tokenizer.bpe import ALL_SPECIAL_TOKENS, _new_hf_bpe, hf_trainer
from danlu.tokenizer.bpe_trainer import byte_alphabet, train_bpe, word_counts
from danlu.tokenizer.config import TokenizerConfig
from danlu.tokenizer.ranks import byte_decoder


def _hf_model(texts: list[str], vocab_size: int, min_frequency: int = 2) -> dict:
    hf = _new_hf_bpe()
    hf.train_from_iterator(texts, trainer=hf_trainer(vocab_size, min_frequency))
    model = json.loads(hf.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return {"vocab": model["vocab"], "merges": merges}


def _danlu_model(texts: list[str], vocab_size: int, min_frequency: int = 2) -> dict:
    vocab, merges = train_bpe(word_counts(texts), vocab_size, min_frequency, ALL_SPECIAL_TOKENS)
    return {"vocab": vocab, "merges": merges}


def test_the_byte_alphabet_is_gpt2s():
    assert set(byte_alphabet()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert {c: b for b, c in enumerate(byte_alphabet())} == byte_decoder()


def test_ties_go_to_the_smallest_pair_and_rare_pairs_are_not_merged():
    # words "ab" x1, "Ġab" x2, "Ġcd" x3, "Ġef" x1: (a,b), (c,d) and (Ġ,c) all occur 3 times and go in id
    # order (a < c < Ġ, whose code point is 288); merging (c,d) leaves (Ġ,c) none, (Ġ,cd) 3; then
    # (Ġ,ab) 2; the pairs of "Ġef" occur once, below min_frequency 2
    texts = ["ab ab ab cd cd cd ef"]
    got = _danlu_model(texts, 400)
    assert got["merges"] == [("a", "b"), ("c", "d"), ("Ġ", "cd"), ("Ġ", "ab")]
    assert got == _hf_model(texts, 400)


def test_runs_of_one_symbol_merge_left_to_right_without_overlap():
    # "aaa" is (a,a) twice, but merging the first leaves "aa a": then (aa,a) 3 times, then (Ġ,aaa)
    texts = ["aaa aaa aaa"]
    got = _danlu_model(texts, 400)
    assert got["merges"] == [("a", "a"), ("aa", "a"), ("Ġ", "aaa")]
    assert got == _hf_model(texts, 400)


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(st.text(alphabet="abcab  aé東\n!1", min_size=1, max_size=6), min_size=1, max_size=40),
    repeats=st.integers(1, 4),
    vocab_extra=st.integers(1, 60),
    min_frequency=st.integers(1, 3),
)
def test_merges_equal_hf_on_random_text(words, repeats, vocab_extra, min_frequency):
    texts = [" ".join(words)] * repeats + ["".join(words)]
    vocab_size = len(ALL_SPECIAL_TOKENS) + 256 + vocab_extra
    assert _danlu_model(texts, vocab_size, min_frequency) == _hf_model(texts, vocab_size, min_frequency)


def test_tokenizer_train_with_either_trainer_writes_the_same_file(tmp_path):
    texts = ["Now is the winter of our discontent, made glorious summer by this sun of York."] * 5 + [
        "A: hey!! how's it going?? I'm fine, we'll see... 123 4567 ok\tnaïve café 東京"
    ] * 3
    hf = Tokenizer.train(texts, 360, trainer="hf")
    ours = Tokenizer.train(iter(texts), 360, trainer="danlu")  # a stream works too
    assert ours.hf.to_str() == hf.hf.to_str() and ours.fingerprint() == hf.fingerprint()
    assert ours.encode("glorious summer, naïve") == hf.encode("glorious summer, naïve")
    saved = train_tokenizer(texts, TokenizerConfig(vocab_size=360, trainer="danlu"), tmp_path / "tok")
    assert Tokenizer.load(tmp_path / "tok").fingerprint() == saved.fingerprint() == hf.fingerprint()


def test_bad_trainer_names_and_too_little_text_are_clear_errors():
    with pytest.raises(ConfigError, match=r"tokenizer\.trainer"):
        TokenizerConfig(trainer="sentencepiece")
    with pytest.raises(TokenizerError, match="trainer"):
        Tokenizer.train(["abc"], 400, trainer="bogus")
    with pytest.raises(TokenizerError, match="supports only"):
        Tokenizer.train(["tiny text"], 4096, trainer="danlu")


@pytest.mark.needs_data
def test_merges_equal_hf_on_shakespeare():
    from danlu.data.sources import fetch, get_source

    src = get_source("shakespeare")
    texts = [d["text"] for d in src.read(fetch("shakespeare"))][:12]
    assert _danlu_model(texts, 1024) == _hf_model(texts, 1024)
