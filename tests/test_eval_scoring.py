"""Log-likelihood scoring, MC metrics and perplexity on a tiny random model vs direct computation."""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.errors import ConfigError
from danlu.eval.harness import evaluate_mc
from danlu.eval.perplexity import loss_by_position, perplexity, rolling_windows, text_token_logprobs
from danlu.eval.scoring import Score, Scorer, argmax_first, encode_pair, mc_metrics, mean_stderr
from danlu.eval.tasks import MCDoc
from danlu.model import build_model, resolve_model_config
from danlu.model.config import ModelConfig


class ByteTok:
    """UTF-8 bytes as ids; 256 is end-of-text, 257 beginning-of-text."""

    eos_id, bos_id, vocab_size = 256, 257, 258

    def encode(self, text: str, bos: bool = False) -> list[int]:
        return ([self.bos_id] if bos else []) + list(text.encode("utf-8"))

    def decode(self, ids, skip_special: bool = False) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = resolve_model_config(ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=48), 258)
    model = build_model(cfg)
    model.eval()
    return model, ByteTok()


def direct_logprob(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """The definition: sum of log p(cont_i | ctx, cont_<i) from one unbatched forward."""
    ids = torch.tensor([(ctx + cont)[:-1]])  # the last token is only a target
    with torch.no_grad():
        logp = F.log_softmax(model(ids)[0].double(), -1)
    rows = logp[len(ctx) - 1 : len(ctx) + len(cont) - 1]
    lp = rows[torch.arange(len(cont)), torch.tensor(cont)]
    return float(lp.sum()), bool((rows.argmax(-1) == torch.tensor(cont)).all())


def _random_requests(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"]
    return [
        (
            " ".join(rng.choices(words, k=rng.randint(1, 5))),
            " " + " ".join(rng.choices(words, k=rng.randint(1, 3))),
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_scores_equal_direct_computation_for_any_batching(tiny, batch_size):
    model, tok = tiny
    reqs = _random_requests(12)
    scores = Scorer(model, tok, batch_size=batch_size).loglikelihood(reqs)
    for (c, x), s in zip(reqs, scores, strict=True):
        ctx, cont = encode_pair(tok, c, x)
        want, greedy = direct_logprob(model, ctx, cont)
        assert s.logprob == pytest.approx(want, abs=1e-4)
        assert s.greedy == greedy and s.n_tokens == len(cont)


def test_shared_context_one_token_options_share_a_forward(tiny):
    model, tok = tiny
    reqs = [("Question: pick one\nAnswer:", f" {letter}") for letter in "ABCD"]
    scorer = Scorer(model, tok, batch_size=16)
    scores = scorer.loglikelihood(reqs)
    assert scorer.forward_calls == 1 and scorer.tokens_forwarded == len(tok.encode(reqs[0][0])) + 1
    ctx = tok.encode("Question: pick one\nAnswer:")
    with torch.no_grad():
        last = F.log_softmax(model(torch.tensor([[*ctx, ord(" ")]]))[0, -1].double(), -1)
    for s, letter in zip(scores, "ABCD", strict=True):
        assert s.logprob == pytest.approx(
            float(last[ord(letter)]) + direct_logprob(model, ctx, [32])[0], abs=1e-4
        )


def test_long_inputs_keep_their_last_max_len_plus_one_tokens(tiny):
    model, tok = tiny
    ctx, cont = list(range(65, 65 + 60)), [66, 67, 68]
    s = Scorer(model, tok, max_length=48).loglikelihood_tokens([(ctx, cont)])[0]
    whole = (ctx + cont)[-49:]
    want, _ = direct_logprob(model, whole[:-3], cont)
    assert s.logprob == pytest.approx(want, abs=1e-4)
    with pytest.raises(ConfigError, match="empty continuation"):
        Scorer(model, tok).loglikelihood_tokens([(ctx, [])])


def test_encode_pair_follows_lm_eval():
    tok = ByteTok()
    # trailing spaces of the context move to the continuation
    assert encode_pair(tok, "Answer: ", "yes") == (tok.encode("Answer:"), tok.encode(" yes"))
    # an empty context becomes the end-of-text prefix token
    assert encode_pair(tok, "", "hello") == ([256], tok.encode("hello"))


def test_mc_metrics_on_hand_made_scores():
    # option 0 has the best total, option 1 the best per character, option 2 the best per token
    scores = [Score(-4.0, False, 4), Score(-6.0, False, 6), Score(-5.0, False, 10)]
    choices = ["ab", "abcdefghij", "abc"]
    m = mc_metrics(scores, choices, gold=0)
    assert m == {"acc": 1.0, "acc_norm": 0.0, "acc_norm_tokens": 0.0}
    assert mc_metrics(scores, choices, gold=1)["acc_norm"] == 1.0  # -6/10 > -4/2 > -5/3
    assert mc_metrics(scores, choices, gold=2)["acc_norm_tokens"] == 1.0  # -0.5 > -1 = -1
    assert argmax_first([1.0, 3.0, 3.0]) == 1  # ties go to the first, as numpy.argmax


def test_mean_stderr_is_sample_std_over_sqrt_n():
    values = [1.0, 0.0, 1.0, 1.0, 0.0]
    assert mean_stderr(values) == pytest.approx(statistics.stdev(values) / math.sqrt(5))
    assert math.isnan(mean_stderr([1.0]))


def test_evaluate_mc_scores_partial_and_grouped_items(tiny):
    model, tok = tiny
    docs = [
        MCDoc(("The cat", "The dog"), (" sat.", " sat."), ("The cat", "The dog"), 0, group="pets"),
        MCDoc(("Q:",) * 2, (" yes", " no"), ("yes", "no"), 1, group="qa"),
        MCDoc(("Q2:",) * 2, (" yes", " no"), ("yes", "no"), 0, group="qa"),
    ]
    res, per_item = evaluate_mc(Scorer(model, tok), docs)
    for d, m in zip(docs, per_item, strict=True):
        lls = [
            direct_logprob(model, *encode_pair(tok, c, x))[0]
            for c, x in zip(d.contexts, d.continuations, strict=True)
        ]
        assert m["acc"] == float(max(range(len(lls)), key=lambda i: (lls[i], -i)) == d.gold)
    assert res["acc"] == pytest.approx(sum(m["acc"] for m in per_item) / 3)
    assert res["subsets"]["qa"]["n"] == 2 and res["subsets"]["pets"]["n"] == 1


# --- perplexity -------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 80), max_len=st.integers(1, 16), data=st.data())
def test_rolling_windows_score_every_token_once_with_enough_context(n, max_len, data):
    stride = data.draw(st.integers(1, max_len))
    tokens = list(range(1000, 1000 + n))
    windows = list(rolling_windows(tokens, -1, max_len, stride))
    predicted = [t for _, cont in windows for t in cont]
    assert predicted == tokens
    for k, (ctx, cont) in enumerate(windows):
        assert len(ctx) + len(cont) - 1 <= max_len  # the model input fits
        assert ctx, "every window has context"
        if k == 0:
            assert ctx == [-1]
        else:
            first = tokens.index(cont[0])
            assert ctx == tokens[first - len(ctx) : first]  # context is what precedes the window
            assert len(ctx) >= min(first, max_len - stride + 1)


def test_rolling_windows_match_lm_eval():
    utils = pytest.importorskip("lm_eval.utils")
    tokens = list(range(100, 137))
    for max_len, stride in [(8, 8), (8, 3), (40, 40), (5, 1)]:
        ref = [
            utils.make_disjoint_window(w)
            for w in utils.get_rolling_token_windows(tokens, 0, max_len, max_len - stride + 1)
        ]
        assert list(rolling_windows(tokens, 0, max_len, stride)) == ref


def test_perplexity_equals_full_context_loss_and_bpb(tiny):
    model, tok = tiny
    text = "the cat sat on the mat"  # 22 bytes: fits one window of 48
    ids = [tok.eos_id, *tok.encode(text)]
    with torch.no_grad():
        nll = F.cross_entropy(
            model(torch.tensor([ids[:-1]]))[0].double(), torch.tensor(ids[1:]), reduction="none"
        )
    res = perplexity(Scorer(model, tok), [text])
    assert res["tokens"] == 22 and res["bytes"] == 22
    assert res["perplexity"] == pytest.approx(math.exp(float(nll.mean())), rel=1e-5)
    assert res["bits_per_byte"] == pytest.approx(float(nll.sum()) / (math.log(2) * 22), rel=1e-5)
    assert res["loss_by_position"] == pytest.approx(nll.tolist(), abs=1e-4)


def test_strided_windows_on_a_long_text_equal_manual_windows(tiny):
    model, tok = tiny
    text = "abcdefghij" * 10  # 100 tokens, max_len 48
    lp = text_token_logprobs(Scorer(model, tok), text, max_len=48, stride=16)
    ids = tok.encode(text)
    want = []
    for ctx, cont in rolling_windows(ids, tok.eos_id, 48, 16):
        want.append(direct_logprob(model, ctx, cont)[0])
    assert len(lp) == 100 and float(lp.sum()) == pytest.approx(sum(want), abs=1e-3)
    # with more context (smaller stride) the loss does not get worse by much on a periodic text
    full = text_token_logprobs(Scorer(model, tok), text, max_len=48, stride=48)
    assert len(full) == 100


def test_loss_by_position_averages_over_texts_that_reach_it():
    import numpy as np

    out = loss_by_position([np.array([-1.0, -2.0, -3.0]), np.array([-3.0])])
    assert out.tolist() == [2.0, 2.0, 3.0]
