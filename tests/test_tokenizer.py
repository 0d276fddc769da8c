"""The tokenizer: ids identical to HF tokenizers, round trips, specials, chat masks, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from danlu.errors import TokenizerError
from danlu.tokenizer import SPECIAL_TOKENS, Tokenizer, encode_text, tokenizer_stats, train_tokenizer
from danlu.tokenizer.bpe import ALL_SPECIAL_TOKENS
from danlu.tokenizer.config import TokenizerConfig
from danlu.tokenizer.ranks import GPT2_PATTERN, byte_decoder, mergeable_ranks

SAMPLE = (
    "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n"
    "A: hey!! how's it going?? I'm fine, we'll see... 123 4567 ok\n\tTabs\t and   spaces   \n"
    "Ünïcödé façade, naïve café, 東京, Привет, مرحبا, emoji 🎭🚀 and a <|bos|> in plain text.\n"
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([SAMPLE * 3, SAMPLE.upper(), SAMPLE.replace(" ", "  ")] * 10, vocab_size=400)


def _hf_ids(tok: Tokenizer, text: str) -> list[int]:
    """The reference: HF tokenizers encoding the same tokenizer.json, specials treated as text."""
    hf = HFTokenizer.from_str(tok.hf.to_str())
    hf.encode_special_tokens = True
    return hf.encode(text, add_special_tokens=False).ids


def test_special_tokens_have_fixed_ids_then_bytes(tok):
    assert tok.special_tokens == {t: i for i, t in enumerate(ALL_SPECIAL_TOKENS)}
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    tb = tok.token_bytes()
    n = len(ALL_SPECIAL_TOKENS)
    assert tb[:n].sum() == 0
    assert (tb[n : n + 256] == 1).all()  # the 256 single bytes
    assert tok.decode([tok.special_tokens["<|mask|>"], *tok.encode("a")], skip_special=True) == "a"
    assert tok.vocab_size == 400 and tb.shape == (400,)


def test_byte_map_matches_hf_alphabet():
    assert set(byte_decoder()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert sorted(byte_decoder().values()) == list(range(256))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.text(alphabet=" \n\t\r\u00a0\u3000'sdlvemtr!?.😀東京abcAB", max_size=60))
def test_ids_identical_to_hf_and_round_trip(tok, text):
    ids = tok.encode(text)
    assert ids == _hf_ids(tok, text)
    assert tok.encode_batch([text, text]) == [ids, ids]
    assert tok.decode(ids) == text
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))


@pytest.mark.needs_data
def test_ids_identical_to_hf_on_shakespeare(shakespeare_docs):
    texts = [d["text"] for d in shakespeare_docs]
    tok = Tokenizer.train(texts, vocab_size=4096)
    assert tok.inconsistent == []  # the fast tiktoken path is in use
    hf = HFTokenizer.from_str(tok.hf.to_str())
    hf.encode_special_tokens = True
    assert tok.encode_batch(texts) == [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    assert tok.decode(tok.encode(texts[0])) == texts[0]


def _hand_made_bpe(merges: list[tuple[str, str]], extra: tuple[str, ...] = ()) -> Tokenizer:
    """A BPE whose merged tokens take ids in the order given by `extra + merges` (listed first: no merge)."""
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda c: byte_decoder()[c]):
        vocab[ch] = len(vocab)
    for t in [*extra, *(a + b for a, b in merges)]:
        vocab.setdefault(t, len(vocab))
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    for t in SPECIAL_TOKENS:
        hf.add_special_tokens([t])
    return Tokenizer(hf)


def test_merges_where_tiktoken_would_differ_are_detected_and_encoded_by_hf():
    # b+c is learned first, so HF can never form "abc" from [a, bc]; tiktoken's rank rule would.
    tok = _hand_made_bpe([("b", "c"), ("a", "b"), ("ab", "c")])
    assert tok.inconsistent == ["abc"]
    ranks = mergeable_ranks(json.loads(tok.hf.to_str())["model"]["vocab"], set(range(len(SPECIAL_TOKENS))))
    import tiktoken

    naive = tiktoken.Encoding(name="naive", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    assert naive.encode_ordinary("abc") == [tok.token_to_id("abc")]  # what the naive conversion gives
    assert tok.encode("abc") == _hf_ids(tok, "abc") == [tok.token_to_id("a"), tok.token_to_id("bc")]
    consistent = _hand_made_bpe([("b", "c"), ("a", "bc")])
    assert consistent.inconsistent == [] and consistent.encode("abc") == [consistent.token_to_id("abc")]


@pytest.mark.parametrize(
    "merges, extra, text, flagged",
    [
        # ids out of merge order: HF merges (a,b) first (listed first), tiktoken b+c (lower id)
        ([("a", "b"), ("b", "c")], ("bc",), "abc", ["bc"]),
        # a multi-byte token that no merge makes: tiktoken would emit it, HF never does
        ([("a", "b")], ("xy",), "abxy", ["xy"]),
    ],
)
def test_tokenizer_json_files_tiktoken_cannot_mirror_fall_back_to_hf(merges, extra, text, flagged):
    tok = _hand_made_bpe(merges, extra)
    assert tok.inconsistent == flagged
    assert tok.encode(text) == _hf_ids(tok, text)
    assert tok.encode_batch([text]) == [_hf_ids(tok, text)]
    assert tok.decode(tok.encode(text)) == text
    import tiktoken

    naive = tiktoken.Encoding(
        name="naive", pat_str=GPT2_PATTERN, mergeable_ranks=tok._ranks, special_tokens={}
    )
    assert naive.encode_ordinary(text) != _hf_ids(tok, text)  # the case the check exists for


def test_specials_only_when_allowed(tok):
    text = "<|user|>hi<|end|>"
    plain = tok.encode(text)
    assert not set(plain) & set(tok.special_tokens.values())
    assert tok.encode(text, allowed_special="all") == [tok.special_tokens["<|user|>"], *tok.encode("hi"), 6]
    assert tok.encode(text, allowed_special=["<|end|>"])[-1] == 6
    assert tok.encode("x", bos=True, eos=True) == [0, *tok.encode("x"), 1]
    with pytest.raises(TokenizerError, match="unknown special"):
        tok.encode(text, allowed_special=["<|nope|>"])
    ids = tok.encode(text, allowed_special="all")
    assert tok.decode(ids) == text and tok.decode(ids, skip_special=True) == "hi"


def test_chat_template_and_loss_mask(tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
    ]
    text = tok.apply_chat_template(msgs)
    assert text == "<|bos|><|system|>Be brief.<|end|><|user|>Hi there<|end|><|assistant|>Hello!<|end|>"
    ids, mask = tok.encode_chat(msgs)
    assert ids == tok.encode(text, allowed_special="all")
    learned = [i for i, m in zip(ids, mask, strict=True) if m]
    assert learned == [*tok.encode("Hello!"), tok.special_tokens["<|end|>"]]
    prompt = tok.apply_chat_template(msgs[:2], add_generation_prompt=True)
    assert prompt.endswith("<|end|><|assistant|>")
    with pytest.raises(TokenizerError, match="roles are system, user, assistant"):
        tok.encode_chat([{"role": "bot", "content": "x"}])


def test_save_load_round_trip_and_corruption(tok, tmp_path):
    tok.save(tmp_path / "t")
    again = Tokenizer.load(tmp_path / "t")
    assert again.fingerprint() == tok.fingerprint() and again.encode(SAMPLE) == tok.encode(SAMPLE)
    meta = json.loads((tmp_path / "t" / "danlu_tokenizer.json").read_text())
    assert meta["fingerprint"] == tok.fingerprint() and meta["tiktoken_exact"] is True
    with pytest.raises(TokenizerError, match="not a tokenizer directory"):
        Tokenizer.load(tmp_path / "missing")
    (tmp_path / "t" / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(TokenizerError, match="corrupt tokenizer"):
        Tokenizer.load(tmp_path / "t")


def test_bad_training_input(tmp_path):
    with pytest.raises(TokenizerError, match="empty"):
        Tokenizer.train([], vocab_size=400)
    with pytest.raises(TokenizerError, match="below 283"):
        Tokenizer.train(["plenty of text " * 100], vocab_size=200)
    with pytest.raises(TokenizerError, match=r"supports only \d+ tokens .* lower tokenizer.vocab_size"):
        Tokenizer.train(["a small text, not enough for many merges"], vocab_size=5000)


def test_train_tokenizer_stage_and_stats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = tmp_path / "docs"
    docs.mkdir()
    rows = [SAMPLE] * 5
    pq.write_table(
        pa.table({"id": ["a"] * 5, "text": rows, "source": ["s"] * 5, "meta": ["{}"] * 5}),
        docs / "train.parquet",
    )
    from danlu.data.documents import document_texts  # the run layer reads the documents for the stage

    tok = train_tokenizer(document_texts(docs), TokenizerConfig(vocab_size=320), tmp_path / "tok")
    assert Tokenizer.load(tmp_path / "tok").fingerprint() == tok.fingerprint()
    stats = tokenizer_stats(tok, [SAMPLE])
    n = len(tok.encode(SAMPLE))
    assert encode_text(tok, SAMPLE) == tok.encode(SAMPLE) == _hf_ids(tok, SAMPLE)
    assert stats["tokens"] == n and stats["bytes_per_token"] == pytest.approx(len(SAMPLE.encode()) / n)
    assert 0 < stats["vocab_used"] <= 1 and stats["bytes_per_token"] > 1.2
    assert np.isclose(stats["chars_per_token"], len(SAMPLE) / n)


def test_transformers_loads_the_tokenizer_file(tok, tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok.save(tmp_path / "t")
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "t" / "tokenizer.json"))
    text = SAMPLE.replace("<|bos|>", "")
    assert fast.encode(text, add_special_tokens=False) == tok.encode(text)
    assert fast.decode(tok.encode(text)) == text
