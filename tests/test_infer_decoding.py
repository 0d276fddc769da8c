"""Sampling processors (each filter's defining property, numerically against transformers' processors),
penalties, logit bias, per-request seeds, and streamed text with stop strings."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from danlu.errors import ConfigError
from danlu.infer.params import SamplingParams
from danlu.infer.processors import RowSampler, greedy_plain, warp
from danlu.infer.stops import TextStream
from danlu.tokenizer.bpe import Tokenizer

V = 50


def logits_rows(n: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, V, generator=g) * 3


def kept(x: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(x)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    text = (
        "hello world, the quick brown fox jumps over the lazy dog. 日本語のテキスト héllo ünïcode <stop> END"
    )
    return Tokenizer.train([text] * 40, vocab_size=300)


# --- the filters -------------------------------------------------------------------------------------


def test_greedy_is_argmax_of_raw_logits() -> None:
    params = SamplingParams(temperature=0)
    assert greedy_plain(params)
    assert not greedy_plain(SamplingParams(temperature=0, repetition_penalty=1.2))
    assert not greedy_plain(SamplingParams(temperature=0.5))
    for row in logits_rows():
        assert RowSampler(params, [], V).choose(row).token == int(row.argmax())


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_keeps_the_minimal_set_reaching_p(top_p: float) -> None:
    x = logits_rows()
    ours = warp(x, top_p=top_p)
    ref = TopPLogitsWarper(top_p)(None, x.clone())
    assert torch.equal(kept(ours), kept(ref))
    probs = x.softmax(-1)
    for row, keep in zip(probs, kept(ours), strict=True):
        mass = float(row[keep].sum())
        assert mass >= top_p - 1e-6
        # minimal: without its least likely token the set falls short of top_p
        assert mass - float(row[keep].min()) < top_p
        assert max(row[~keep].tolist(), default=0.0) <= float(row[keep].min())


@pytest.mark.parametrize("min_p", [0.05, 0.2, 0.7])
def test_min_p_threshold_is_min_p_times_top_probability(min_p: float) -> None:
    x = logits_rows()
    ours = warp(x, min_p=min_p)
    assert torch.equal(kept(ours), kept(MinPLogitsWarper(min_p)(None, x.clone())))
    probs = x.softmax(-1)
    assert torch.equal(kept(ours), probs >= min_p * probs.amax(-1, keepdim=True))


@pytest.mark.parametrize("mass", [0.2, 0.5, 0.95])
def test_typical_keeps_the_locally_typical_set(mass: float) -> None:
    x = logits_rows()
    ours = warp(x, typical_p=mass)
    assert torch.equal(kept(ours), kept(TypicalLogitsWarper(mass)(None, x.clone())))
    logp = x.log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1, keepdim=True)
    distance = (-logp - entropy).abs()
    for d, keep, p in zip(distance, kept(ours), logp.exp(), strict=True):
        # every kept token is closer to the entropy than every dropped one, and the kept mass reaches it
        assert float(d[keep].max()) <= min(d[~keep].tolist(), default=math.inf)
        assert float(p[keep].sum()) >= mass - 1e-6


def test_the_filter_chain_matches_transformers_warpers_in_order() -> None:
    x = logits_rows(16, seed=3)
    chain = [
        TemperatureLogitsWarper(0.7),
        TopKLogitsWarper(20),
        TopPLogitsWarper(0.9),
        MinPLogitsWarper(0.05),
        TypicalLogitsWarper(0.9),
    ]
    ref = x.clone()
    for w in chain:
        ref = w(None, ref)
    ours = warp(x, temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, typical_p=0.9)
    assert torch.equal(kept(ours), kept(ref))
    torch.testing.assert_close(ours[kept(ours)], ref[kept(ref)])


def test_samples_follow_the_filtered_distribution() -> None:
    x = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=7)
    want = warp(x, temperature=0.8, top_p=0.9).softmax(-1)
    sampler = RowSampler(params, [], 5)
    counts = torch.bincount(torch.tensor([sampler.choose(x).token for _ in range(4000)]), minlength=5)
    assert counts[want == 0].sum() == 0
    chi2 = float((((counts - 4000 * want) ** 2) / (4000 * want).clamp_min(1e-9))[want > 0].sum())
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom, p = 0.001


# --- penalties and bias ------------------------------------------------------------------------------


def test_repetition_penalty_matches_ctrl_rule_on_prompt_and_output() -> None:
    x = logits_rows(1)[0]
    prompt, output = [3, 7, 7, 11], [20, 3]
    sampler = RowSampler(SamplingParams(temperature=0, repetition_penalty=1.3), prompt, V)
    for t in output:
        sampler.record(t)
    ours = sampler.process(x)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prompt + output]), x[None].clone())[0]
    torch.testing.assert_close(ours, ref)
    changed = (ours != x).nonzero().flatten().tolist()
    assert changed == sorted(set(prompt + output))
    for t in changed:
        assert float(ours[t]) == pytest.approx(float(x[t] / 1.3 if x[t] > 0 else x[t] * 1.3))


def test_penalties_stay_exact_over_many_steps() -> None:
    rows = logits_rows(25, seed=9)
    prompt = [1, 2, 2]
    params = SamplingParams(
        temperature=0.9, repetition_penalty=1.5, frequency_penalty=0.3, presence_penalty=0.2, seed=0
    )
    sampler = RowSampler(params, prompt, V)
    rep = RepetitionPenaltyLogitsProcessor(1.5)
    for row in rows:
        out = sampler.history[len(prompt) :]
        want = rep(torch.tensor([sampler.history]), row[None].clone())[0]
        counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=V).float()
        want = want - counts * 0.3 - (counts > 0).float() * 0.2
        torch.testing.assert_close(sampler.process(row), want)
        sampler.choose(row)


def test_frequency_and_presence_penalties_follow_openai_formula_on_output_only() -> None:
    x = logits_rows(1)[0]
    sampler = RowSampler(SamplingParams(frequency_penalty=0.5, presence_penalty=0.25), [1, 2, 9], V)
    for t in [4, 4, 4, 9]:
        sampler.record(t)
    ours = sampler.process(x)
    want = x.clone()
    want[4] -= 3 * 0.5 + 0.25
    want[9] -= 1 * 0.5 + 0.25
    torch.testing.assert_close(ours, want)  # prompt tokens 1, 2 untouched


@pytest.mark.parametrize("n", [2, 3])
def test_no_repeat_ngram_matches_transformers(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    history = torch.randint(0, 6, (30,), generator=g).tolist()
    sampler = RowSampler(SamplingParams(no_repeat_ngram_size=n), history[:10], V)
    x = logits_rows(1)[0]
    for t in history[10:]:
        sampler.record(t)
    ref = NoRepeatNGramLogitsProcessor(n)(torch.tensor([history]), x[None].clone())[0]
    ours = sampler.process(x)
    assert torch.equal(ours, ref)
    assert torch.isinf(ours).any()  # a short alphabet repeats: some token is banned


def test_logit_bias_adds_to_exactly_its_tokens_and_bans_or_forces() -> None:
    x = logits_rows(1)[0]
    sampler = RowSampler(SamplingParams(logit_bias={5: 2.5, 8: -1.0}), [], V)
    ours = sampler.process(x)
    want = x.clone()
    want[5] += 2.5
    want[8] -= 1.0
    torch.testing.assert_close(ours, want)
    forced = RowSampler(SamplingParams(temperature=1.0, logit_bias={13: 100}, seed=0), [], V)
    assert all(forced.choose(row).token == 13 for row in logits_rows(20))
    banned = RowSampler(SamplingParams(temperature=0, logit_bias={int(x.argmax()): -100}), [], V)
    assert banned.choose(x).token == int(x.topk(2).indices[1])
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        RowSampler(SamplingParams(logit_bias={V: 1.0}), [], V)


def test_logprobs_are_of_the_raw_distribution() -> None:
    x = logits_rows(1)[0]
    params = SamplingParams(temperature=0.3, top_k=3, logit_bias={0: 5.0}, logprobs=4, seed=1)
    choice = RowSampler(params, [], V).choose(x)
    raw = x.log_softmax(-1)
    assert choice.logprob == pytest.approx(float(raw[choice.token]))
    assert [i for i, _ in choice.top] == raw.topk(4).indices.tolist()
    assert [v for _, v in choice.top] == pytest.approx(raw.topk(4).values.tolist())
    assert RowSampler(SamplingParams(), [], V).choose(x).top is None


def test_a_seed_makes_a_request_reproducible_whatever_runs_beside_it() -> None:
    rows = logits_rows(30, seed=5)
    params = SamplingParams(temperature=1.0, seed=42)

    def run(interleave: bool) -> list[int]:
        ours, other = RowSampler(params, [], V), RowSampler(SamplingParams(seed=None), [], V)
        out = []
        for row in rows:
            if interleave:
                other.choose(row)
                torch.rand(3)  # the global generator moves too
            out.append(ours.choose(row).token)
        return out

    assert run(False) == run(True)
    other_seed = [RowSampler(SamplingParams(seed=43), [], V).choose(r).token for r in rows]
    assert other_seed != run(False)


# --- streamed text and stop strings -------------------------------------------------------------------


def stream(tok: Tokenizer, ids: list[int], stop: list[str]) -> tuple[list[str], bool, str]:
    ts = TextStream(tok, stop=stop)
    pieces, stopped = [], False
    for i in ids:
        piece, stopped = ts.push(i)
        pieces.append(piece)
        if stopped:
            break
    tail = "" if stopped else ts.finish()
    assert ts.text == "".join(pieces) + tail
    return pieces, stopped, ts.text


def test_stop_string_spanning_tokens_is_cut_and_not_shown(tok: Tokenizer) -> None:
    text = "the quick brown fox jumps over"
    ids = tok.encode(text)
    stop = "wn fo"  # spans the tokens of "brown" and "fox"
    pieces = [tok.decode([i]) for i in ids]
    assert not any(stop in p for p in pieces)
    _, stopped, shown = stream(tok, ids, [stop, "never"])
    assert stopped and shown == "the quick bro"


def test_text_that_may_become_a_stop_is_held_then_released(tok: Tokenizer) -> None:
    ids = tok.encode("the lazy dog. END")
    ts = TextStream(tok, stop=["lazy cat"])
    released = [ts.push(i)[0] for i in ids]
    assert "lazy" not in "".join(released[: len(tok.encode("the lazy"))])  # held: could be "lazy cat"
    assert ts.text + ts.finish() == "the lazy dog. END"


def test_multibyte_characters_are_never_split(tok: Tokenizer) -> None:
    from danlu.infer.constrain import token_byte_strings

    by_bytes = {data: i for i, data in enumerate(token_byte_strings(tok, tok.vocab_size)) if data}
    ts = TextStream(tok)
    # one token per byte: each character's first bytes alone would decode to U+FFFD
    pieces = [ts.push(by_bytes[bytes([b])])[0] for b in "日本語".encode()]
    assert pieces == ["", "", "日", "", "", "本", "", "", "語"]
    assert ts.finish() == "" and ts.text == "日本語"
    ts = TextStream(tok)
    ts.push(by_bytes["日".encode()[:1]])
    assert ts.finish() == "\ufffd"  # a truncated character at the very end is shown as what it is


ALPHABET = "the quick brown fox 日本語 héllo END<>."


@settings(max_examples=40, deadline=None)
@given(
    text=st.text(alphabet=ALPHABET, min_size=0, max_size=40),
    stop=st.text(alphabet="ox 日本E.", min_size=1, max_size=4),
)
def test_streamed_text_equals_the_decoded_text_up_to_the_first_stop(
    tok: Tokenizer, text: str, stop: str
) -> None:
    ids = tok.encode(text)
    full = tok.decode(ids)
    _, stopped, shown = stream(tok, ids, [stop])
    cut = full.find(stop)
    assert stopped == (cut >= 0)
    assert shown == (full[:cut] if cut >= 0 else full)
