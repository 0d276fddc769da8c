"""The contrast edu judge: its cached two-description margin equals two plain full forwards, and the score
is 5 * sigmoid(margin / temperature)."""

from __future__ import annotations

import math

import pytest
import torch

from danlu.eval.edu_judge import EduContrastJudge, annotate
from danlu.model import build_model
from danlu.model.config import ModelConfig


class ByteTok:
    """Bytes as token ids: enough tokenizer for the judge's encode/decode."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, n_kv_head=2, vocab_size=256, max_seq_len=256)
    return build_model(cfg, "cpu").eval()


def full_forward_mean_logp(model, prefix: list[int], doc: list[int]) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prefix + doc]))[0], -1)
    pos = torch.arange(len(prefix) - 1, len(prefix) + len(doc) - 1)
    return float(logp[pos, torch.tensor(doc)].mean())


def test_margin_equals_two_full_forwards_and_score_is_its_sigmoid(model):
    tok = ByteTok()
    descriptions = ("A lesson for school:\n", "Idle chat, no value at all:\n")  # different lengths
    judge = EduContrastJudge(model, tok, max_doc_tokens=40, descriptions=descriptions, temperature=0.1)
    text = "Plants make glucose from light and water. " * 3
    doc = tok.encode(text)[:40]
    want = full_forward_mean_logp(model, tok.encode(descriptions[0]), doc) - full_forward_mean_logp(
        model, tok.encode(descriptions[1]), doc
    )
    assert judge.margin(text) == pytest.approx(want, abs=1e-5)
    got = judge.label(text)
    assert got.score == pytest.approx(5 / (1 + math.exp(-want / 0.1)), abs=1e-4)
    assert got.probs[1] == pytest.approx(got.score / 5) and got.label == round(got.score)
    # the cache is reset between documents: a second, shorter document does not change the first's margin
    assert judge.margin("hi there") != pytest.approx(want)
    assert judge.margin(text) == pytest.approx(want, abs=1e-5)
    rows = list(annotate(judge, [{"id": "a", "text": text, "source": "s"}]))
    assert rows[0]["text"] == tok.decode(doc) and rows[0]["score"] == pytest.approx(got.score)


def test_swapping_the_descriptions_negates_the_margin(model):
    tok = ByteTok()
    a, b = "Textbook:\n", "Chat log here:\n"
    text = "The heart pumps blood through the body."
    m1 = EduContrastJudge(model, tok, 32, (a, b)).margin(text)
    m2 = EduContrastJudge(model, tok, 32, (b, a)).margin(text)
    assert m1 == pytest.approx(-m2, abs=1e-5) and m1 != 0


def test_bad_settings_are_config_errors(model):
    from danlu.errors import ConfigError

    with pytest.raises(ConfigError):
        EduContrastJudge(model, ByteTok(), max_doc_tokens=0)
    with pytest.raises(ConfigError):
        EduContrastJudge(model, ByteTok(), max_doc_tokens=250)  # past the context with the descriptions


def test_token_margins_are_per_token_log_ratios_whose_mean_is_the_margin(model):
    tok = ByteTok()
    descriptions = ("A lesson for school:\n", "Idle chat:\n")
    judge = EduContrastJudge(model, tok, max_doc_tokens=24, descriptions=descriptions)
    text = "Water boils at one hundred degrees."
    doc = tok.encode(text)[:24]
    got = judge.token_margins(text)
    assert len(got) == 24 and got.mean() == pytest.approx(judge.margin(text), abs=1e-6)
    # token i's log ratio is the gain in the full forward's mean over i + 1 tokens times i + 1, minus i's
    for i in (0, 5, 23):
        want = [
            (i + 1) * full_forward_mean_logp(model, tok.encode(d), doc[: i + 1])
            - i * (full_forward_mean_logp(model, tok.encode(d), doc[:i]) if i else 0.0)
            for d in descriptions
        ]
        assert got[i] == pytest.approx(want[0] - want[1], abs=1e-4)
    assert len(judge.token_margins("")) == 0 and judge.margin("") == 0.0
