"""Diagnostics: attention recomputation, the logit lens, the part-of-speech probe's pieces, distinct-n,
repetition and memorization, each pinned on crafted inputs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from danlu.errors import ConfigError
from danlu.eval.diagnose import diagnose
from danlu.eval.diagnostic_tasks import PREFIX_TOKENS, SUFFIX_TOKENS, memorization_rates, windows
from danlu.eval.introspect import attention_qkv, lens_table, logit_lens, trace
from danlu.eval.probes import brown_sentences, coarse_tag, fit_softmax, parse_tagged
from danlu.eval.textstats import distinct_n, matched_prefix, repetition_rate, words
from danlu.model import build_model, resolve_model_config
from danlu.model.config import ModelConfig


class ByteTok:
    eos_id, bos_id, vocab_size = 256, 257, 258

    def encode(self, text: str, bos: bool = False) -> list[int]:
        return ([self.bos_id] if bos else []) + list(text.encode("utf-8"))

    def decode(self, ids, skip_special: bool = False) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def _model(**kw):
    torch.manual_seed(0)
    base = {"n_layer": 2, "n_embd": 64, "n_head": 4, "max_seq_len": 48}
    model = build_model(resolve_model_config(ModelConfig(**(base | kw)), 258))
    model.eval()
    return model


@pytest.mark.parametrize(
    "options", [{}, {"n_kv_head": 2}, {"qk_norm": True}, {"pos": "alibi"}, {"sliding_window": 4}]
)
def test_attention_probabilities_reproduce_the_module_output(options):
    model = _model(**options)
    ids = ByteTok().encode("attention, please!")
    outputs, inputs = [], []

    def keep(_m, args, out) -> None:
        outputs.append(out)
        inputs.append(args)

    hooks = [b.attn.register_forward_hook(keep) for b in model.blocks]
    t = trace(model, ids)
    for h in hooks:
        h.remove()
    T = len(ids)
    assert len(t.attention) == 2 and len(t.hidden) == 3
    for layer, probs in enumerate(t.attention):
        assert probs.shape == (4, T, T)
        torch.testing.assert_close(probs.sum(-1), torch.ones(4, T))
        assert float(probs.triu(1).abs().max()) == 0.0  # causal: no weight on later tokens
        if options.get("sliding_window"):
            assert float(probs.tril(-4).abs().max()) == 0.0
        attn = model.blocks[layer].attn
        x, _, rope, _bias = inputs[layer][:4]
        _, _, v = attention_qkv(attn, x, rope)
        y = (probs[None] @ v.float()).transpose(1, 2).reshape(1, T, -1)
        torch.testing.assert_close(attn.proj(y), outputs[layer], atol=1e-5, rtol=1e-4)


def test_logit_lens_last_layer_is_the_model_output_and_the_table_ranks_it():
    model = _model()
    ids = ByteTok().encode("hello there")
    t = trace(model, ids, attention=False)
    lens = logit_lens(model, t.hidden)
    assert lens.shape == (3, len(ids), 258)
    torch.testing.assert_close(lens[-1], torch.log_softmax(t.logits, -1), atol=1e-5, rtol=1e-5)
    rows = lens_table(ByteTok(), lens, k=3)
    assert rows[-1]["final_token_rank"] == 0
    assert len(rows[0]["top"]) == 3
    assert rows[-1]["top"][0][1] == pytest.approx(float(lens[-1, -1].exp().max()))


def test_diagnose_writes_a_png_per_layer_and_the_lens(tmp_path):
    rep = diagnose(_model(), ByteTok(), "To be", tmp_path, top_k=2)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "attention_layer00.png",
        "attention_layer01.png",
    ]
    assert (tmp_path / "attention_layer00.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "logit_lens.json").is_file() and "| embed |" in rep["table"]
    with pytest.raises(ConfigError, match=r"layers 0\.\.1"):
        diagnose(_model(), ByteTok(), "To be", tmp_path, layers=(5,))


def test_trace_refuses_a_prompt_longer_than_the_context():
    with pytest.raises(ConfigError, match="context of 48"):
        trace(_model(), list(range(49)))


@pytest.mark.parametrize(
    ("tag", "coarse"),
    [
        ("nn", "NOUN"), ("nns", "NOUN"), ("nn-tl", "NOUN"), ("np$", "PROPN"), ("vbd", "VERB"), ("md", "AUX"),
        ("ber", "AUX"), ("jj-tl", "ADJ"), ("rb", "ADV"), ("wrb", "ADV"), ("in", "ADP"), ("at", "DET"),
        ("cc", "CONJ"), ("cd", "NUM"), ("ppss+ber", "PRON"), ("to", "PRT"), (".", "PUNCT"), ("``", "PUNCT"),
        ("fw-nn", "NOUN"), ("uh", "X"),
    ],
)  # fmt: skip
def test_brown_tags_fold_into_coarse_classes(tag, coarse):
    assert coarse_tag(tag) == coarse


def test_tagged_sentences_parse_at_the_last_slash(tmp_path):
    assert parse_tagged("The/at 1/2/cd jury/nn ./.") == [
        ("The", "DET"),
        ("1/2", "NUM"),
        ("jury", "NOUN"),
        (".", "PUNCT"),
    ]
    (tmp_path / "ca01").write_text(
        "\n\tThe/at jury/nn said/vbd it/pps ./.\n\n\tShort/jj ./.\n", encoding="utf-8"
    )
    sents = brown_sentences(tmp_path, 10, seed=0)
    assert sents == [[("The", "DET"), ("jury", "NOUN"), ("said", "VERB"), ("it", "PRON"), (".", "PUNCT")]]


def test_softmax_probe_separates_separable_classes():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    x = torch.randn(300, 8, generator=g) * 0.1
    x[torch.arange(300), y] += 3.0  # class c lives along axis c
    predict = fit_softmax(x[:200], y[:200], 3)
    assert float((predict(x[200:]) == y[200:]).float().mean()) == 1.0


def test_distinct_n_and_repetition_rate_on_crafted_text():
    assert words("The cat, the CAT!") == ["the", "cat", ",", "the", "cat", "!"]
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)  # pooled over generations
    assert distinct_n([""], 2) == 0.0
    assert repetition_rate("a b c d a b c d", 4) == pytest.approx(1 - 4 / 5)
    assert repetition_rate("one two three four five", 4) == 0.0
    assert repetition_rate("x x x x x x", 1) == pytest.approx(5 / 6)


def test_memorization_counts_exact_and_partial_suffixes():
    assert matched_prefix([1, 2, 3], [1, 2, 4]) == 2 and matched_prefix([], [1]) == 0
    memorized = list(range(PREFIX_TOKENS + SUFFIX_TOKENS))
    half = [100 + i for i in range(PREFIX_TOKENS + SUFFIX_TOKENS)]
    answers = {tuple(memorized[:PREFIX_TOKENS]): memorized[PREFIX_TOKENS:]}
    answers[tuple(half[:PREFIX_TOKENS])] = half[PREFIX_TOKENS : PREFIX_TOKENS + SUFFIX_TOKENS // 2] + [0] * (
        SUFFIX_TOKENS // 2
    )

    ctx = SimpleNamespace(continue_ids=lambda prefix, n: answers[tuple(prefix)][:n])
    exact, matched = memorization_rates(ctx, [memorized, half])
    assert exact == [1.0, 0.0]
    assert matched == [1.0, 0.5]


def test_memorization_windows_are_seeded_and_skip_short_documents():
    tok = ByteTok()
    texts = ["short", "x" * 10 + "".join(chr(65 + i % 26) for i in range(200))]
    a, b = windows(tok, texts, 5, seed=3), windows(tok, texts, 5, seed=3)
    assert a == b and len(a) == 1 and len(a[0]) == PREFIX_TOKENS + SUFFIX_TOKENS
    assert bytes(a[0]).decode() in texts[1]
