"""Every tokenizer.trainer (BPE by HF or danlu, byte-level WordPiece and Unigram) makes a directory the
rest of danlu loads: exact round trips, danlu's special tokens and chat template, compression reported."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.errors import ConfigError, TokenizerError
from danlu.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer
from danlu.tokenizer.bpe import ALL_SPECIAL_TOKENS, SubwordTokenizer
from danlu.tokenizer.config import TRAINERS, TokenizerConfig
from danlu.tokenizer.subword import CONTINUE, UNK
from danlu.tokenizer.tools import tokenizer_report

SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "ul", "an", "est", "ing", "th", "qu"]
ODD = "zzq ÿ😀 \x00\x01\x7f <|bos|> ~~~ ## ▸x naïve 東京\t\r\n  " + "a" * 300 + " " * 200 + "!"


def _corpus(n: int, seed: int) -> list[str]:
    """Pseudo-words of random syllables: enough distinct substrings for a Unigram of 600 pieces."""
    rng = random.Random(seed)
    words = lambda k: " ".join("".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(k))  # noqa: E731
    return [f"{words(30)}{rng.choice(['.', '!', '? 12', ', 345'])}\n{words(10)}" for _ in range(n)]


TRAIN, HELD_OUT = _corpus(300, 0), _corpus(40, 1)


@pytest.fixture(scope="module", params=TRAINERS)
def trained(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "tok"
    cfg = TokenizerConfig(vocab_size=600, trainer=request.param)
    return request.param, train_tokenizer(TRAIN, cfg, out, held_out=HELD_OUT), out


def test_the_saved_directory_loads_and_encodes_alike(trained):
    trainer, tok, out = trained
    loaded = Tokenizer.load(out)
    assert type(loaded) is type(tok) and loaded.fingerprint() == tok.fingerprint()
    assert isinstance(loaded, SubwordTokenizer) == (trainer in ("wordpiece", "unigram"))
    assert loaded.vocab_size == tok.vocab_size == 600
    for text in [*HELD_OUT[:5], ODD]:
        ids = loaded.encode(text)
        assert ids == tok.encode(text) and loaded.decode(ids) == text
        assert loaded.encode_batch([text, text]) == [ids, ids]
        # the bits-per-byte denominator: the tokens' bytes add up to the text's UTF-8 length
        assert int(loaded.token_bytes()[ids].sum()) == len(text.encode("utf-8"))
    if trainer == "wordpiece":
        assert loaded.token_to_id(UNK) not in loaded.encode(ODD)


def test_special_tokens_and_the_chat_template(trained):
    _, tok, _ = trained
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert all(tok.special_tokens[t] == i for i, t in enumerate(ALL_SPECIAL_TOKENS))
    assert tok.bos_id not in tok.encode("<|bos|> typed as text")  # specials in plain text stay text
    assert tok.encode("<|bos|>hi", allowed_special="all") == [tok.bos_id, *tok.encode("hi")]
    assert tok.encode("x", bos=True, eos=True) == [tok.bos_id, *tok.encode("x"), tok.eos_id]
    msgs = [{"role": "user", "content": "kalo ne?"}, {"role": "assistant", "content": "suta ## ri."}]
    ids, mask = tok.encode_chat(msgs)
    user, asst = (tok.special_tokens[f"<|{r}|>"] for r in ("user", "assistant"))
    end = tok.special_tokens["<|end|>"]
    answer = tok.encode("suta ## ri.")
    assert ids == [tok.bos_id, user, *tok.encode("kalo ne?"), end, asst, *answer, end]
    assert mask == [0] * (len(ids) - len(answer) - 1) + [1] * (len(answer) + 1)
    rendered = tok.apply_chat_template(msgs, add_generation_prompt=True)
    assert tok.decode(tok.encode(rendered, allowed_special="all")) == rendered
    assert tok.decode(ids, skip_special=True) == "kalo ne?suta ## ri."


def test_compression_on_held_out_text_is_reported(trained):
    trainer, tok, out = trained
    report = tokenizer_report(out)
    n_bytes = sum(len(t.encode("utf-8")) for t in HELD_OUT)
    n_tokens = sum(len(tok.encode(t)) for t in HELD_OUT)
    assert report["trainer"] == trainer
    assert report["held_out"]["texts"] == len(HELD_OUT) and report["held_out"]["bytes"] == n_bytes
    assert report["held_out"]["bytes_per_token"] == pytest.approx(n_bytes / n_tokens)
    assert report["held_out"]["bytes_per_token"] > 2.0  # it learned the syllables (1 byte/token: none)


@pytest.fixture(scope="module")
def subword_pair():
    return {k: Tokenizer.train(TRAIN, 600, trainer=k) for k in ("wordpiece", "unigram")}


@settings(max_examples=150, deadline=None)
@given(text=st.text(st.characters(codec="utf-8"), max_size=80))
def test_wordpiece_and_unigram_round_trip_any_text_byte_exact(subword_pair, text):
    # no normalizer and a byte-level pre-tokenizer: nothing is lowercased, stripped or made unknown
    for tok in subword_pair.values():
        assert tok.decode(tok.encode(text)) == text


def test_wordpiece_marks_continuations_and_keeps_every_byte(subword_pair):
    wp = subword_pair["wordpiece"]
    vocab = wp.hf.get_vocab()
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    assert all(c in vocab and CONTINUE + c in vocab for c in alphabet)
    pieces = [wp.id_to_token(i) for i in wp.encode("kaloqu")]
    assert len(pieces) >= 1 and not pieces[0].startswith(CONTINUE)
    assert all(p.startswith(CONTINUE) for p in pieces[1:])
    model = json.loads(wp.hf.to_str())["model"]
    assert model["type"] == "WordPiece" and model["continuing_subword_prefix"] == CONTINUE


def test_bad_trainer_and_too_small_vocabularies_are_one_clear_error():
    with pytest.raises(ConfigError) as e:
        TokenizerConfig(trainer="sentencepiece")
    assert str(e.value) == (
        "tokenizer.trainer: must be one of hf, danlu, wordpiece, unigram, got 'sentencepiece'"
    )
    with pytest.raises(TokenizerError, match="smallest wordpiece vocabulary"):
        Tokenizer.train(TRAIN, 400, trainer="wordpiece")
    with pytest.raises(TokenizerError, match="supports only"):
        Tokenizer.train(["tiny text"] * 3, 4096, trainer="unigram")


# the tiny corpus holds few distinct words: a Unigram of it has at most ~310 pieces
@pytest.mark.parametrize(("trainer", "vocab"), [("wordpiece", 560), ("unigram", 300)])
def test_the_recipe_stage_trains_it_and_reports_compression(trainer, vocab, tmp_path, word_lines, capsys):
    from danlu.cli import main
    from danlu.run import RunLayout, read_stamp
    from run_support import tiny_recipe

    recipe = str(tiny_recipe(tmp_path, word_lines, "t") / "r.yaml")
    assert main(["data", recipe]) == 0
    over = [f"--tokenizer.trainer={trainer}", f"--tokenizer.vocab_size={vocab}"]
    assert main(["tokenizer", "train", recipe, *over]) == 0
    out = capsys.readouterr().out
    result = read_stamp(RunLayout(tmp_path / "out"), "tokenizer")["result"]
    assert result["trainer"] == trainer and result["vocab_size"] == vocab
    assert f"{trainer}, {result['held_out']['bytes_per_token']:.3f} bytes/token on val" in out
    tok = Tokenizer.load(tmp_path / "out" / "tokenizer")
    assert isinstance(tok, SubwordTokenizer) and tok.kind == trainer
    assert main(["pack", recipe, *over]) == 0  # the next stage reads it


def test_an_unknown_trainer_on_the_command_line_is_one_error_line(tmp_path, word_lines, capsys):
    from danlu.cli import main
    from run_support import tiny_recipe

    recipe = str(tiny_recipe(tmp_path, word_lines, "t") / "r.yaml")
    assert main(["tokenizer", "train", recipe, "--tokenizer.trainer=bpe2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "hf, danlu, wordpiece, unigram" in err and "'bpe2'" in err
