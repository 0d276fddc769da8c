"""Next-token filters against hand-computed distributions and HF's warpers; streaming generation."""

from __future__ import annotations

import math

import pytest
import torch

from danlu.errors import ConfigError
from danlu.infer.sampling import filter_logits, generate, sample_next
from danlu.model import build_model, resolve_model_config
from danlu.model.config import ModelConfig

PROBS = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
LOGITS = PROBS.log()


def _dist(**kw) -> list[float]:
    return filter_logits(LOGITS, **kw).softmax(-1)[0].tolist()


def test_filters_on_hand_computed_distributions():
    assert _dist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert _dist(top_k=2) == pytest.approx([0, 0, 3 / 7, 4 / 7])
    assert _dist(top_k=1) == pytest.approx([0, 0, 0, 1])
    assert _dist(top_k=10) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    # nucleus: the smallest most-likely set whose mass reaches top_p
    assert _dist(top_p=0.5) == pytest.approx([0, 0, 3 / 7, 4 / 7])  # 0.4 < 0.5, 0.4 + 0.3 >= 0.5
    assert _dist(top_p=0.75) == pytest.approx([0, 2 / 9, 3 / 9, 4 / 9])
    assert _dist(top_p=0.01) == pytest.approx([0, 0, 0, 1])  # always at least one token
    # temperature T: p ** (1 / T), renormalised; it applies before top-k / top-p
    z = sum(p**2 for p in (0.1, 0.2, 0.3, 0.4))
    assert _dist(temperature=0.5) == pytest.approx([p**2 / z for p in (0.1, 0.2, 0.3, 0.4)])
    assert _dist(temperature=0.5, top_p=0.6) == pytest.approx([0, 0, 9 / 25, 16 / 25])  # 16/30 < 0.6


def test_filters_agree_with_transformers_warpers():
    generation = pytest.importorskip("transformers.generation.logits_process")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 50, generator=g) * 3
    for top_k, top_p, temp in ((5, 1.0, 1.0), (0, 0.9, 1.0), (10, 0.8, 0.7), (0, 0.3, 1.5)):
        ref = logits / temp
        if top_k:
            ref = generation.TopKLogitsWarper(top_k)(None, ref)
        if top_p < 1:
            ref = generation.TopPLogitsWarper(top_p)(None, ref)
        ours = filter_logits(logits, temp, top_k, top_p)
        assert torch.equal(torch.isinf(ours), torch.isinf(ref))
        torch.testing.assert_close(ours.softmax(-1), ref.softmax(-1))


def test_sampling_follows_the_filtered_distribution():
    g = torch.Generator().manual_seed(0)
    n = 20000
    ids = sample_next(LOGITS.expand(n, 4), temperature=1.0, top_k=3, generator=g)
    freq = torch.bincount(ids, minlength=4).float() / n
    expected = torch.tensor([0, 2 / 9, 3 / 9, 4 / 9])
    assert freq[0] == 0
    assert (freq - expected).abs().max() < 4 * math.sqrt(0.25 / n)  # 4 standard errors


def test_greedy_and_bad_settings():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, -1.0, 0.0]])
    assert sample_next(logits, temperature=0).tolist() == [1, 0]
    with pytest.raises(ConfigError, match="top_p"):
        sample_next(logits, temperature=1.0, top_p=0.0)
    with pytest.raises(ConfigError, match="temperature"):
        sample_next(logits, temperature=-1.0)


@pytest.fixture(scope="module")
def model():
    cfg = resolve_model_config(ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=24), 50)
    torch.manual_seed(0)
    m = build_model(cfg, "cpu").eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(10)  # sharper distributions: greedy paths and sampling differ visibly
    return m


def test_greedy_generate_equals_repeated_full_forward(model):
    prompt = [3, 17, 5]
    got = list(generate(model, prompt, 10, temperature=0))
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(10):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert got == seq[len(prompt) :]


def test_seeded_sampling_is_deterministic(model):
    run = lambda seed: list(generate(model, [1, 2], 15, temperature=1.0, top_k=20, top_p=0.9, seed=seed))  # noqa: E731
    assert run(7) == run(7)
    assert len({tuple(run(s)) for s in range(5)}) > 1


def test_stop_ids_and_context_limit(model):
    free = list(generate(model, [4], 8, temperature=0))
    stop = free[3]
    first = free.index(stop)
    assert list(generate(model, [4], 8, temperature=0, stop_ids=(stop,))) == free[: first + 1]
    # prompt + output never exceed max_seq_len (24)
    assert len(list(generate(model, list(range(1, 11)), 100, temperature=0))) == 14
    assert len(list(generate(model, list(range(1, 21)), 4, temperature=0))) == 4


def test_long_prompt_is_cropped_from_the_left(model):
    prompt = [i % 50 for i in range(40)]
    # room for 5 new tokens: keep the last 24 - 5 = 19 prompt tokens
    assert list(generate(model, prompt, 5, temperature=0)) == list(
        generate(model, prompt[-19:], 5, temperature=0)
    )
    # asking for more than half the context keeps the last 12 tokens (half the context)
    out = list(generate(model, prompt, 100, temperature=0))
    assert out == list(generate(model, prompt[-12:], 12, temperature=0)) and len(out) == 12


def test_empty_prompt_is_refused(model):
    with pytest.raises(ConfigError, match="prompt is empty"):
        list(generate(model, [], 5))
