"""Speculative decoding (exactly greedy when greedy; the target's distribution when sampling) and
contrastive decoding (the plausibility cutoff and the expert-minus-amateur score)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.errors import ConfigError
from danlu.infer.contrastive import contrastive_generate, contrastive_scores
from danlu.infer.params import SamplingParams
from danlu.infer.processors import warp
from danlu.infer.speculative import SpeculativeStats, speculative_generate, verify
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def model(vocab: int, seed: int, std: float = 0.3, n_layer: int = 2, n_embd: int = 32) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = build_model(ModelConfig(n_layer=n_layer, n_embd=n_embd, n_head=4, vocab_size=vocab, max_seq_len=96))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" not in name:
                p.normal_(0, std)
    return m.eval()


@torch.no_grad()
def greedy_reference(
    m: torch.nn.Module, prompt: list[int], n: int, ends: set[int] = frozenset()
) -> list[int]:
    """Plain greedy by a full forward per token (no cache at all)."""
    seq = list(prompt)
    for _ in range(n):
        token = int(m(torch.tensor([seq]))[0, -1].argmax())
        seq.append(token)
        if token in ends:
            break
    return seq[len(prompt) :]


# --- speculative --------------------------------------------------------------------------------------


@pytest.mark.parametrize("draft_k", [1, 3, 6])
def test_speculative_greedy_equals_plain_greedy_token_for_token(draft_k: int) -> None:
    target, draft = model(64, seed=0), model(64, seed=1, n_layer=1, n_embd=16)
    prompt = [3, 17, 42, 5]
    stats = SpeculativeStats()
    got = list(
        speculative_generate(
            target, draft, prompt, SamplingParams(temperature=0, max_tokens=40), draft_k, stats=stats
        )
    )
    assert got == greedy_reference(target, prompt, 40)
    assert stats.drafted > 0 and 0 <= stats.acceptance_rate < 1
    # the target as its own draft: every proposal is kept
    same = SpeculativeStats()
    assert (
        list(
            speculative_generate(
                target, target, prompt, SamplingParams(temperature=0, max_tokens=20), draft_k, stats=same
            )
        )
        == got[:20]
    )
    assert same.acceptance_rate == 1.0


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    return model(64, seed=10), model(64, seed=11, n_layer=1, n_embd=16)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    prompt=st.lists(st.integers(0, 63), min_size=1, max_size=12),
    draft_k=st.integers(1, 8),
    max_tokens=st.integers(1, 16),
)
def test_speculative_greedy_equals_greedy_for_any_prompt_and_k(
    pair, prompt: list[int], draft_k: int, max_tokens: int
) -> None:
    target, draft = pair
    got = speculative_generate(
        target, draft, prompt, SamplingParams(temperature=0, max_tokens=max_tokens), draft_k
    )
    assert list(got) == greedy_reference(target, prompt, max_tokens)


def test_speculative_stops_after_an_end_id_like_greedy() -> None:
    target, draft = model(32, seed=4), model(32, seed=5)
    prompt = [1, 2, 3]
    plain = greedy_reference(target, prompt, 30)
    end = plain[7]
    got = list(
        speculative_generate(
            target, draft, prompt, SamplingParams(temperature=0, max_tokens=30), 4, end_ids=[end]
        )
    )
    assert got == plain[: plain.index(end) + 1]


def test_verify_keeps_the_target_distribution() -> None:
    g = torch.Generator().manual_seed(0)
    V, N = 5, 20000
    p = torch.randn(2, V, generator=g).mul(1.5).softmax(-1)
    q = torch.randn(1, V, generator=g).mul(1.5).softmax(-1)
    counts = torch.zeros(V)
    kept = 0
    for _ in range(N):
        d = int(torch.multinomial(q[0], 1, generator=g))
        n, nxt = verify(p, q, [d], g)
        counts[d if n == 1 else nxt] += 1
        kept += n
    chi2 = float(((counts - N * p[0]) ** 2 / (N * p[0])).sum())
    assert chi2 < 18.5  # chi-square, 4 degrees of freedom, p = 0.001
    # the acceptance rate is sum min(p, q) (Leviathan et al., section 3)
    assert kept / N == pytest.approx(float(torch.minimum(p[0], q[0]).sum()), abs=0.015)


@pytest.mark.parametrize(
    ("temperature", "top_p"), [(1.0, 1.0), pytest.param(0.8, 0.9, marks=pytest.mark.slow)]
)
def test_speculative_sampling_matches_the_target_distribution(temperature: float, top_p: float) -> None:
    V, N = 5, 1000
    target, draft = model(V, seed=2, std=0.15), model(V, seed=3, std=0.15)
    prompt = [1, 4, 2]

    def dist(logits: torch.Tensor) -> torch.Tensor:
        return warp(logits, temperature, top_p=top_p).softmax(-1)

    with torch.no_grad():  # the target's exact distribution of the first two tokens
        first = dist(target(torch.tensor([prompt]))[0, -1])
        joint = torch.stack([first[a] * dist(target(torch.tensor([[*prompt, a]]))[0, -1]) for a in range(V)])
    counts = torch.zeros(V, V)
    stats = SpeculativeStats()
    for seed in range(N):
        params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=3, seed=seed)
        a, b, _ = speculative_generate(target, draft, prompt, params, draft_k=2, stats=stats)
        counts[a, b] += 1
    expected = (N * joint).flatten()
    big = expected >= 5  # pool the rare cells into one
    obs = torch.cat([counts.flatten()[big], counts.flatten()[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    chi2 = float(((obs - exp) ** 2 / exp.clamp_min(1e-9)).sum())
    assert chi2 < 52.6  # chi-square with at most 25 degrees of freedom: p < 0.001 above 52.6
    assert 0.2 < stats.acceptance_rate < 1.0  # both paths ran: kept drafts and residual draws


def test_speculative_rejects_what_it_cannot_do() -> None:
    target = model(16, seed=0)
    with pytest.raises(ConfigError, match="vocabulary"):
        next(speculative_generate(target, model(17, seed=1), [1], SamplingParams(temperature=0)))
    with pytest.raises(ConfigError, match="penalties"):
        next(speculative_generate(target, target, [1], SamplingParams(repetition_penalty=1.2)))
    with pytest.raises(ConfigError, match="context"):
        next(speculative_generate(target, target, [1] * 90, SamplingParams(max_tokens=10)))


# --- contrastive --------------------------------------------------------------------------------------


def test_contrastive_score_is_expert_minus_amateur_on_the_plausible_set() -> None:
    expert = torch.tensor([3.0, 2.9, 1.0, -2.0, 1.0]).log_softmax(-1)
    amateur = torch.tensor([4.0, 0.0, 0.0, -10.0, 0.0]).log_softmax(-1)
    s = contrastive_scores(expert, amateur, alpha=0.1)
    p = expert.exp()
    plausible = p >= 0.1 * p.max()
    assert plausible.tolist() == [True, True, True, False, True]
    torch.testing.assert_close(s[plausible], (expert - amateur)[plausible])
    assert torch.isneginf(s[~plausible]).all()
    # token 3 has the largest difference but the expert finds it implausible; the amateur loves token 0
    assert int((expert - amateur).argmax()) == 3 and int(s.argmax()) == 1
    assert int(contrastive_scores(expert, amateur, alpha=1.0).argmax()) == 0  # only the expert's argmax


def test_contrastive_generation_recomputes_to_the_same_tokens_and_alpha_one_is_greedy() -> None:
    expert, amateur = model(48, seed=6), model(48, seed=7, n_layer=1, n_embd=16)
    prompt = [5, 6, 7]
    got = list(contrastive_generate(expert, amateur, prompt, 15, alpha=0.1))
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(15):
            ids = torch.tensor([seq])
            seq.append(int(contrastive_scores(expert(ids)[0, -1], amateur(ids)[0, -1], 0.1).argmax()))
    assert got == seq[len(prompt) :]
    assert got != greedy_reference(expert, prompt, 15)  # the amateur changed something
    assert list(contrastive_generate(expert, amateur, prompt, 15, alpha=1.0)) == greedy_reference(
        expert, prompt, 15
    )
    with pytest.raises(ConfigError, match="vocabulary"):
        next(contrastive_generate(expert, model(40, seed=1), prompt, 3))
