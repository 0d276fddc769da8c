"""The engine: continuous batching gives each request what it gets alone; prefix caching, streaming,
cancellation, queue limits, prompt log-probabilities, per-request seeds."""

from __future__ import annotations

import threading

import pytest
import torch

from danlu.errors import ConfigError, EngineFull
from danlu.infer.engine import Engine
from danlu.infer.params import SamplingParams
from danlu.model import build_model
from danlu.model.config import ModelConfig
from danlu.tokenizer.bpe import Tokenizer

TEXT = ["the quick brown fox jumps over the lazy dog, again and again. " * 3, "héllo wörld ünïcode " * 4]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(TEXT * 20, vocab_size=300, min_frequency=1)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=48, n_head=4, n_kv_head=2, vocab_size=tok.vocab_size, max_seq_len=96)
    return build_model(cfg, "cpu").eval()


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(3, 300, (int(torch.randint(2, 20, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]


def _greedy_reference(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def test_continuous_batching_gives_each_request_its_tokens_alone(model, tok):
    prompts = _prompts(7)
    lengths = [5, 17, 9, 12, 3, 20, 8]  # requests finish at different steps, so others join mid-flight
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in lengths]
    batched = Engine(model, tok, max_batch=3).generate(prompts, params)
    for p, n, c in zip(prompts, lengths, batched, strict=True):
        assert c.token_ids == _greedy_reference(model, p, n)
        assert c.finish_reason == "length"


def test_prefix_cache_reuses_earlier_turns_and_a_shared_system_prompt(model, tok):
    engine = Engine(model, tok, max_batch=2)
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    first = engine.generate([[5, 6, 7, 8, 9]], params)[0]
    turn2 = [5, 6, 7, 8, 9, *first.token_ids, 40, 41]
    second = engine.generate([turn2], params)[0]
    # the slot held the prompt and every output token but the last (never fed back)
    assert second.cached_prompt_tokens == 5 + 6 - 1
    assert second.token_ids == _greedy_reference(model, turn2, 6)
    # two requests at once that share a system prompt: the second copies it from the first's slot
    system = list(range(50, 80))
    h1 = engine.submit([*system, 11, 12], params)
    h2 = engine.submit([*system, 13], params)
    while not (h1.done() and h2.done()):
        engine.step()
    assert h2.result().cached_prompt_tokens == len(system)
    assert h2.result().token_ids == _greedy_reference(model, [*system, 13], 6)


def test_stream_events_add_up_to_the_completion(model, tok):
    engine = Engine(model, tok, max_batch=2)
    events = []
    params = SamplingParams(max_tokens=15, temperature=0.9, seed=3, ignore_eos=True, stop=["o"])
    engine.submit(tok.encode("héllo", bos=True), params, on_event=events.append)
    while not events or not events[-1].finished:
        engine.step()
    done = events[-1]
    assert [e.finished for e in events].count(True) == 1
    text = "".join(e.text for e in events)
    assert "o" not in text  # the stop string is held back and ends the request
    assert done.finish_reason in ("stop", "length")


def test_seeded_sampling_does_not_depend_on_the_batch(model, tok):
    prompts = _prompts(4, seed=1)
    params = [
        SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=i, ignore_eos=True) for i in range(4)
    ]
    together = Engine(model, tok, max_batch=4).generate(prompts, params)
    alone = [
        Engine(model, tok, max_batch=1).generate([p], q)[0] for p, q in zip(prompts, params, strict=True)
    ]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]


def test_cancel_frees_the_slot_and_a_full_queue_is_refused(model, tok):
    engine = Engine(model, tok, max_batch=1, max_queue=2).start()
    try:
        started = threading.Event()
        long = engine.submit(
            [3, 4], SamplingParams(max_tokens=90, ignore_eos=True), on_event=lambda e: started.set()
        )
        assert started.wait(30)
        queued = [engine.submit([5], SamplingParams(max_tokens=2, ignore_eos=True)) for _ in range(2)]
        with pytest.raises(EngineFull):
            engine.submit([6], SamplingParams(max_tokens=2))
        long.cancel()
        assert long.result(30).finish_reason == "cancelled"
        assert all(h.result(30).finish_reason == "length" for h in queued)
        assert engine.stats()["running"] == 0
    finally:
        engine.shutdown(cancel=True, timeout=30)


def test_prompt_logprobs_match_a_full_forward(model, tok):
    prompt = _prompts(1, seed=2)[0]
    c = Engine(model, tok).generate([prompt], SamplingParams(max_tokens=0, prompt_logprobs=2))[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt]))[0], -1)
    want = [float(logp[i - 1, prompt[i]]) for i in range(1, len(prompt))]
    assert c.prompt_logprobs[0] is None
    assert c.prompt_logprobs[1:] == pytest.approx(want, abs=1e-5)
    assert [t[0][0] for t in c.prompt_top_logprobs[1:]] == logp[:-1].argmax(-1).tolist()
    assert c.token_ids == [] and c.finish_reason == "length"


def test_bad_requests_are_clear_errors(model, tok):
    engine = Engine(model, tok)
    with pytest.raises(ConfigError, match="empty"):
        engine.submit([], SamplingParams())
    with pytest.raises(ConfigError, match="exceeds the context of 96"):
        engine.submit([5] * 90, SamplingParams(max_tokens=10))
    with pytest.raises(ConfigError, match="token ids must be in"):
        engine.submit([5, 10_000], SamplingParams())


def test_the_preallocated_slots_stay_in_the_cache_budget(model, tok):
    per_token = 2 * 2 * 2 * 12 * 4  # k and v, 2 layers, 2 kv heads, head dim 12, fp32
    engine = Engine(model, tok, max_batch=3, cache_gb=per_token * 3 * 50 / 2**30)
    assert engine.max_len == 50 and engine.cache.k.shape[3] == 50
    assert Engine(model, tok, max_batch=3).max_len == 96  # the model's context when it fits
    with pytest.raises(ConfigError, match="exceeds the context of 50"):
        engine.submit([5] * 45, SamplingParams(max_tokens=10))


def test_a_burst_of_arrivals_is_prefilled_over_several_steps(model, tok):
    engine = Engine(model, tok, max_batch=4, max_prefill_tokens=10)
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    first = engine.submit(list(range(10, 18)), params)
    engine.step()
    for i in range(3):
        engine.submit(list(range(20 + i, 28 + i)), params)
    engine.step()  # admits until 10 prompt tokens have run: two of the three (8 + 8), then decodes
    assert engine.stats()["running"] == 3 and engine.stats()["queued"] == 1
    engine.step()
    assert engine.stats()["running"] == 4
    assert len(first._r.out) == 4  # the running stream got a token in every step
