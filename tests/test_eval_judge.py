"""LLM-as-judge (position swapping, Elo, Bradley-Terry) and needle-in-a-haystack."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from danlu.errors import ConfigError, DataError
from danlu.eval import judge as J
from danlu.eval import needle as N

# --- verdicts and position swapping ----------------------------------------------------------------


def test_parse_verdict():
    assert J.parse_verdict("A is more detailed. [[A]]") == "A"
    assert J.parse_verdict("first I thought [[A]] but in the end [[ B ]]") == "B"
    assert J.parse_verdict("[[C]]") == "C"
    assert J.parse_verdict("A is better") is None and J.parse_verdict("[[D]]") is None


def test_prompt_carries_both_answers_in_order():
    p = J.judge_prompt("Q?", "first answer", "second answer")
    assert p.index("first answer") < p.index("second answer") and "[[C]]" in p and "Q?" in p


def _answer_of(prompt: str, who: str) -> str:
    start = prompt.index(f"[The Start of Assistant {who}'s Answer]\n") + len(
        f"[The Start of Assistant {who}'s Answer]\n"
    )
    return prompt[start : prompt.index(f"\n[The End of Assistant {who}'s Answer]")]


def test_position_biased_judge_gives_only_ties():
    calls = []

    def always_a(prompt: str) -> str:
        calls.append(prompt)
        return "Assistant A is clearly better. [[A]]"

    answers = {"m1": ["good", "fine"], "m2": ["bad", "poor"], "m3": ["x", "y"]}
    matches = J.run_tournament(always_a, ["q1", "q2"], answers)
    assert len(matches) == 3 * 2 and len(calls) == 2 * len(matches)  # both orders judged
    assert all(m.score == 0.5 for m in matches)
    assert J.win_rates(matches) == {"m1": 0.5, "m2": 0.5, "m3": 0.5}


def test_consistent_judge_wins_count_and_unparseable_is_tie():
    def prefers_longer(prompt: str) -> str:
        a, b = _answer_of(prompt, "A"), _answer_of(prompt, "B")
        return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"

    assert J.judge_pair(prefers_longer, "q", "a long answer", "short") == 1.0
    assert J.judge_pair(prefers_longer, "q", "short", "a long answer") == 0.0
    assert J.judge_pair(prefers_longer, "q", "same", "same") == 0.5
    assert J.judge_pair(lambda p: "no idea", "q", "a long answer", "short") == 0.5
    answers = {"long": ["aaaaaa"] * 3, "mid": ["aaa"] * 3, "short": ["a"] * 3}
    rates = J.win_rates(J.run_tournament(prefers_longer, ["q"] * 3, answers))
    assert rates == {"long": 1.0, "mid": 0.5, "short": 0.0}
    with pytest.raises(DataError, match="answers"):
        J.run_tournament(prefers_longer, ["q"], {"a": ["x"], "b": []})


# --- ratings ---------------------------------------------------------------------------------------

TRUE = {"m0": 0.0, "m1": 0.4, "m2": 0.8, "m3": 1.2, "m4": 2.0}  # natural-log strengths


def _simulate(games_per_pair: int, seed: int, ties: float = 0.0) -> list[J.Match]:
    rng = np.random.default_rng(seed)
    out = []
    for a, b in itertools.combinations(TRUE, 2):
        p = 1 / (1 + math.exp(TRUE[b] - TRUE[a]))
        for _ in range(games_per_pair):
            if rng.random() < ties:
                out.append(J.Match(a, b, 0.5))
            else:
                out.append(J.Match(a, b, float(rng.random() < p)))
    return out


def test_bradley_terry_recovers_known_strengths():
    ratings = J.bradley_terry(_simulate(1500, seed=0))
    # Elo-scale ratings -> natural-log strengths, centred like the truth
    est = {m: r * math.log(10) / 400 for m, r in ratings.items()}
    mean_est, mean_true = np.mean(list(est.values())), np.mean(list(TRUE.values()))
    for m in TRUE:
        assert est[m] - mean_est == pytest.approx(TRUE[m] - mean_true, abs=0.08)
    assert np.mean(list(ratings.values())) == pytest.approx(1000.0)


def test_bradley_terry_is_the_mle():
    matches = _simulate(60, seed=1, ties=0.2)
    ratings = J.bradley_terry(matches)
    names = sorted(ratings)
    theta = np.array([ratings[n] for n in names]) * math.log(10) / 400

    def loglik(t):
        ix = {n: i for i, n in enumerate(names)}
        ll = 0.0
        for m in matches:
            d = t[ix[m.model_a]] - t[ix[m.model_b]]
            ll += m.score * -np.log1p(np.exp(-d)) + (1 - m.score) * -np.log1p(np.exp(d))
        return ll

    base = loglik(theta)
    rng = np.random.default_rng(0)
    for _ in range(20):  # any perturbation lowers the likelihood
        assert loglik(theta + rng.normal(scale=0.05, size=theta.size)) < base


def test_bradley_terry_diverging_data_needs_a_prior():
    matches = [J.Match("a", "b", 1.0)] * 5 + [J.Match("b", "c", 0.5)] * 5
    with pytest.raises(DataError, match="prior"):
        J.bradley_terry(matches)
    r = J.bradley_terry(matches, prior=1.0)
    assert all(math.isfinite(v) for v in r.values())
    assert r["a"] == max(r.values())


def test_elo_orders_models_and_is_seeded():
    matches = _simulate(200, seed=2)
    ratings = J.elo(matches, n_shuffles=20, seed=5)
    assert sorted(ratings, key=ratings.get) == list(TRUE)
    assert ratings == J.elo(matches, n_shuffles=20, seed=5)
    assert np.mean(list(ratings.values())) == pytest.approx(1000.0)  # Elo is zero-sum
    # the spread grows with K
    small = J.elo(matches, k=4, n_shuffles=5)
    assert small["m4"] - small["m0"] > 0
    with pytest.raises(ConfigError):
        J.elo(matches, k=0)


def test_elo_single_game_update_formula():
    r = J.elo([J.Match("a", "b", 1.0)], k=32, n_shuffles=1)
    assert r == {"a": 1016.0, "b": 984.0}  # equal ratings: expected 0.5, so +-K/2


# --- needle in a haystack --------------------------------------------------------------------------

HAY = " ".join(f"Sentence number {i} says nothing at all." for i in range(5000))


def test_insert_needle_places_it_at_the_depth_on_a_sentence_boundary():
    for depth in (0, 10, 33, 50, 90, 100):
        ctx, off = N.insert_needle(HAY, 1000, depth)
        assert len(ctx.split()) <= 1000
        assert ctx[off:].startswith(N.NEEDLE)
        # on a sentence boundary (the 100% needle goes after the last word, wherever it ends)
        assert off == 0 or depth == 100 or ctx[:off].rstrip().endswith(".")
        # within one sentence (7 words, < 45 chars) of the requested depth
        assert depth / 100 * len(ctx) - 60 <= off <= depth / 100 * len(ctx) + 1
    with pytest.raises(ConfigError):
        N.insert_needle(HAY, 1000, 120)
    with pytest.raises(DataError, match="fewer"):
        N.insert_needle("too short.", 1000, 50)


def test_custom_token_counter_sets_the_length():
    count_chars = len  # one "token" per character
    ctx, _ = N.insert_needle(HAY, 500, 50, count_tokens=count_chars)
    assert 440 <= len(ctx) <= 500


def test_needle_grid_with_fake_generator_that_only_sees_the_tail(tmp_path):
    tail = 1500  # the fake model "remembers" only the last 1500 characters of the context

    def generate(prompt: str) -> str:
        context = prompt[: prompt.rindex("\n\n" + N.QUESTION)]
        return f"The magic number is {N.ANSWER}." if N.NEEDLE in context[-tail:] else "I do not know."

    lengths, depths = [100, 400, 1600], [0, 25, 50, 75, 100]
    res = N.run_needle(generate, lengths, depths, haystack=HAY)
    assert len(res.trials) == 15
    for t in res.trials:  # score is 1 exactly when the needle ends within the last `tail` chars
        chars_after = t["context_chars"] - t["needle_offset"]
        assert t["score"] == float(chars_after <= tail)
    # 100 words (~600 chars) fit entirely; for 1600 words (~9k chars) only 100% depth is in the tail
    assert res.scores[0] == [1.0] * 5
    assert res.scores[2] == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert res.scores[1][-1] == 1.0 and res.scores[1][0] == 0.0
    for row in res.scores:  # deeper needles are nearer the end: a row never drops back to 0
        assert row == sorted(row)
    res.save_json(tmp_path / "needle.json")
    res.save_heatmap(tmp_path / "needle.png")
    saved = json.loads((tmp_path / "needle.json").read_text())
    assert saved["scores"] == res.scores and saved["lengths"] == lengths
    assert (tmp_path / "needle.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.needs_data
def test_needle_on_shakespeare_haystack():
    hay = N.shakespeare_haystack()
    ctx, off = N.insert_needle(hay, 2000, 50)
    assert ctx[off:].startswith(N.NEEDLE) and len(ctx.split()) <= 2000
    res = N.run_needle(lambda p: N.ANSWER if N.NEEDLE in p else "", [500, 2000], [0, 50, 100], haystack=hay)
    assert res.scores == [[1.0] * 3, [1.0] * 3]
