"""Beam search: equal to exhaustive search on a tiny vocabulary, and to transformers' generate(num_beams)."""

from __future__ import annotations

import itertools

import pytest
import torch

from danlu.errors import ConfigError
from danlu.infer.beam import beam_search
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def peaked_model(vocab: int, seed: int = 0, n_kv_head: int | None = None) -> torch.nn.Module:
    """A tiny model with weights far from init, so its distributions are peaked (no near ties)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, n_kv_head=n_kv_head, vocab_size=vocab, max_seq_len=64)
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.3)
    return model.eval()


def sequence_logprob(model: torch.nn.Module, prompt: list[int], seqs: list[list[int]]) -> list[float]:
    """Sum of log p(token | prefix) of each continuation, by one full forward without a cache."""
    out = []
    with torch.no_grad():
        for seq in seqs:
            ids = torch.tensor([prompt + seq])
            logp = model(ids)[0, :-1].log_softmax(-1)
            out.append(float(logp[torch.arange(len(prompt) - 1, ids.size(1) - 1), torch.tensor(seq)].sum()))
    return out


def test_beam_search_with_vocab_pow_depth_beams_ranks_every_sequence_exactly() -> None:
    V, depth = 6, 3
    model = peaked_model(V)
    prompt = [1, 4]
    hyps = beam_search(model, prompt, num_beams=V**depth, max_new_tokens=depth, num_return=V**depth)
    seqs = [list(s) for s in itertools.product(range(V), repeat=depth)]
    exact = sequence_logprob(model, prompt, seqs)
    ranking = sorted(zip(exact, seqs, strict=True), key=lambda x: -x[0])
    assert [h.tokens for h in hyps] == [s for _, s in ranking]
    for h, (score, _) in zip(hyps, ranking, strict=True):
        assert h.logprob == pytest.approx(score, abs=1e-4)
        assert h.score == pytest.approx(score / depth, abs=1e-4)  # length_penalty 1: mean log-probability


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_search_with_an_end_id_finds_the_best_penalized_hypothesis(length_penalty: float) -> None:
    V, depth, eos = 5, 3, 0
    model = peaked_model(V, seed=1)
    prompt = [2, 3, 1]
    # every continuation: ended by eos at some length, or cut at the depth
    seqs = [[*s, eos] for n in range(depth) for s in itertools.product(range(1, V), repeat=n)]
    seqs += [list(s) for s in itertools.product(range(1, V), repeat=depth)]
    exact = sequence_logprob(model, prompt, seqs)
    best = max(zip(exact, seqs, strict=True), key=lambda x: x[0] / len(x[1]) ** length_penalty)
    hyps = beam_search(
        model, prompt, V**depth, depth, end_ids=[eos], length_penalty=length_penalty, early_stopping="never"
    )
    assert hyps[0].tokens == best[1]
    assert hyps[0].score == pytest.approx(best[0] / len(best[1]) ** length_penalty, abs=1e-4)


@pytest.mark.parametrize("eos", [1, 20])
@pytest.mark.parametrize(
    ("beams", "length_penalty", "early_stopping"),
    [(4, 1.0, False), (3, 0.5, True), (5, 2.0, "never"), (2, -1.0, False)],
)
def test_beam_search_matches_transformers_generate(
    beams: int, length_penalty: float, early_stopping, eos: int
) -> None:
    transformers = pytest.importorskip("transformers")
    from danlu.interop.hf_llama import to_hf_config, to_hf_state_dict

    V, new = 40, 10  # with this model, both end ids end some beams early
    model = peaked_model(V, seed=2, n_kv_head=2)
    hf = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**to_hf_config(model.cfg), attn_implementation="eager")
    )
    hf.load_state_dict(to_hf_state_dict(model), strict=False)
    hf.eval()
    prompt = [5, 9, 11, 2]
    ours = beam_search(
        model,
        prompt,
        beams,
        new,
        end_ids=[eos],
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        num_return=beams,
    )
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=new,
            num_beams=beams,
            num_return_sequences=beams,
            do_sample=False,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            eos_token_id=eos,
            pad_token_id=eos,
            return_dict_in_generate=True,
            output_scores=True,
        )
    got = [h.tokens for h in ours]
    want = []
    for row in ref.sequences[:, len(prompt) :].tolist():
        cut = row.index(eos) + 1 if eos in row else len(row)
        want.append(row[:cut])
    assert got == want
    if length_penalty <= 1.0:
        assert any(h.tokens[-1] == eos for h in ours)  # the end-id path is exercised
    assert [h.score for h in ours] == pytest.approx(ref.sequences_scores.tolist(), abs=1e-4)


def test_bad_beam_settings_are_one_line_errors() -> None:
    model = peaked_model(8)
    with pytest.raises(ConfigError, match="num_return"):
        beam_search(model, [1], 2, 3, num_return=3)
    with pytest.raises(ConfigError, match="early_stopping"):
        beam_search(model, [1], 2, 3, early_stopping="sometimes")
    with pytest.raises(ConfigError, match="context"):
        beam_search(model, [1] * 60, 2, 10)
