"""The edu judge on SmolLM2's real tokenizer and chat template, with a small random model: the prompt is
FineWeb-Edu's rubric in the user turn, the cached-prefix score equals a plain full forward's."""

from __future__ import annotations

import pytest
import torch

from danlu.eval.edu_judge import PREFILL, EduJudge, annotate, prompt_parts, score_token_ids
from danlu.model import build_model
from danlu.model.config import ModelConfig

pytestmark = pytest.mark.needs_data


@pytest.fixture(scope="module")
def tok():
    gguf = pytest.importorskip("gguf")
    from danlu.interop.gguf import gguf_tokenizer, registry_gguf

    return gguf_tokenizer(gguf.GGUFReader(registry_gguf("smollm2-135m-instruct")))


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=2, n_embd=32, n_head=4, n_kv_head=2, vocab_size=tok.vocab_size, max_seq_len=1024
    )
    return build_model(cfg, "cpu").eval()


def test_prompt_is_the_rubric_in_a_chat_turn_prefilled_to_the_score(tok):
    before, after = prompt_parts(tok)
    assert before.startswith("<|im_start|>system\n") and "<|im_start|>user\nBelow is an extract" in before
    assert before.endswith("The extract:\n")
    assert after.endswith(f"<|im_end|>\n<|im_start|>assistant\n{PREFILL}")
    ids = score_token_ids(tok)
    assert [tok.decode([i]).strip() for i in ids] == ["0", "1", "2", "3", "4", "5"]


def test_cached_prefix_score_equals_a_full_forward(tok, model):
    judge = EduJudge(model, tok, max_doc_tokens=40)
    text = "Plants make glucose from light, water and carbon dioxide. " * 10
    rows = list(annotate(judge, [{"id": "a", "text": text, "source": "s"}, {"id": "b", "text": "hi"}]))
    before, after = prompt_parts(tok)
    doc = tok.encode(text)[:40]
    ids = tok.encode(before, allowed_special="all") + doc + tok.encode(after, allowed_special="all")
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0, -1], -1)[score_token_ids(tok)]
    want = torch.softmax(logp, -1).double()
    got = torch.tensor(rows[0]["probs"], dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert rows[0]["score"] == pytest.approx(float((want * torch.arange(6)).sum()), abs=1e-4)
    assert rows[0]["text"] == tok.decode(doc) and rows[1]["id"] == "b"
    assert judge.label(text) == judge.label(text)  # the cache is reset between documents
