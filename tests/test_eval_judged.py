"""Judged evals on crafted inputs: fake judges whose preferences are known, the win-rate and
length-control math, Bradley-Terry recovering planted strengths, the model judge's option scores,
and `danlu eval --tasks mtbench,alpacaeval --judge` / `danlu leaderboard` from the command line."""

from __future__ import annotations

import json
import random
import re
import zlib

import numpy as np
import pytest
import torch

from danlu.cli import main
from danlu.eval.judged import (
    ModelJudge,
    grade_answers,
    length_controlled_win_rate,
    pairwise_win_rate,
    single_prompt,
)
from danlu.eval.leaderboard import format_leaderboard, leaderboard
from danlu.model import build_model, resolve_model_config
from danlu.model.config import ModelConfig
from test_eval_scoring import ByteTok, direct_logprob

_ANSWER = re.compile(r"\[The Start of Assistant (A|B)'s Answer\]\n(.*?)\n\[The End of", re.S)


def answers_of(prompt: str) -> dict[str, str]:
    return dict(_ANSWER.findall(prompt))


def keyword_judge(prompt: str) -> str:
    """Prefers the answer that says "good"; a tie when both or neither do. Position-blind."""
    a, b = (("good" in answers_of(prompt)[x]) for x in "AB")
    return "[[A]]" if a and not b else "[[B]]" if b and not a else "[[C]]"


def test_win_rate_counts_wins_ties_losses_with_a_known_judge():
    questions = [f"q{i}" for i in range(6)]
    answers = ["good 0", "good 1", "good 2", "bad 3", "good 4", "bad 5"]
    refs = ["bad", "bad", "bad", "good", "good", "bad"]
    res = pairwise_win_rate(keyword_judge, questions, answers, refs)
    assert (res["wins"], res["ties"], res["losses"]) == (3, 2, 1)
    assert res["win_rate"] == pytest.approx((3 + 0.5 * 2) / 6)
    assert res["swap_consistency"] == 1.0
    assert res["win_rate_ci95"][0] <= res["win_rate"] <= res["win_rate_ci95"][1]
    assert [p["verdicts"] for p in res["per_item"]][:4] == [["A", "B"]] * 3 + [["B", "A"]]


def test_a_position_biased_judge_gives_only_ties_and_no_consistency():
    res = pairwise_win_rate(lambda p: "[[A]]", ["q"] * 4, ["good"] * 4, ["bad"] * 4)
    assert res["win_rate"] == 0.5 and res["ties"] == 4 and res["swap_consistency"] == 0.0


def test_length_control_removes_a_planted_length_preference():
    rng = np.random.default_rng(0)
    n = 600
    diff = rng.normal(60, 80, n)  # the model writes longer answers than the reference
    x = np.tanh(diff / diff.std())
    # the judge only likes length: P(win) = sigmoid(3 x), i.e. even odds at equal length
    y = (rng.random(n) < 1 / (1 + np.exp(-3 * x))).astype(float)
    lc, (lo, hi) = length_controlled_win_rate(y, diff)
    assert y.mean() > 0.7 and abs(lc - 0.5) < 0.07 and lo < lc < hi
    # a judge blind to length with a 75% preference: LC and raw agree
    y2 = (rng.random(n) < 0.75).astype(float)
    lc2, _ = length_controlled_win_rate(y2, diff)
    assert abs(lc2 - y2.mean()) < 0.05


def _bt_judge(strength: dict[str, float]):
    """Winner of (question, pair) drawn once with P = s_a / (s_a + s_b), seeded by the prompt's
    content, reported the same way in both orders, so every game is decisive and swap-consistent."""

    def judge(prompt: str) -> str:
        found = answers_of(prompt)
        a_model, rest = found["A"].split(" @", 1)
        b_model = found["B"].split(" @", 1)[0]
        first, second = sorted([a_model, b_model])
        rng = random.Random(zlib.crc32(f"{first}|{second}|{rest}".encode()))
        p_first = strength[first] / (strength[first] + strength[second])
        winner = first if rng.random() < p_first else second
        return "[[A]]" if winner == a_model else "[[B]]"

    return judge


def test_bradley_terry_leaderboard_recovers_planted_strengths():
    strength = {"m1": 1.0, "m2": 2.0, "m3": 4.0}
    questions = [f"question {i}" for i in range(300)]
    answers = {m: [f"{m} @{i}" for i in range(300)] for m in strength}
    board = leaderboard(answers, questions, _bt_judge(strength))
    rows = board["rows"]
    assert [r["model"] for r in rows] == ["m3", "m2", "m1"]
    bt = {r["model"]: r["bt"] for r in rows}
    step = 400 * np.log10(2)  # each model is twice as strong as the next: ~120 Elo points
    assert bt["m3"] - bt["m2"] == pytest.approx(step, abs=45)
    assert bt["m2"] - bt["m1"] == pytest.approx(step, abs=45)
    for r in rows:
        assert r["bt_ci95"][0] < r["bt"] < r["bt_ci95"][1] and r["games"] == 600
        assert board["bt_scipy"][r["model"]] == pytest.approx(r["bt"], abs=0.5)  # the same MLE
    table = format_leaderboard(board)
    assert table.splitlines()[2].startswith("| 1 | m3 |")


def test_single_grading_averages_the_judge_ratings_by_category():
    ratings = {"short": (2.0, 2), "long answer": (8.0, 8)}

    def rate(prompt: str) -> tuple[float, int]:
        answer = prompt.split("[The Start of Assistant's Answer]\n")[1].split("\n[The End")[0]
        return ratings[answer]

    res = grade_answers(rate, ["q1", "q2", "q3"], ["short", "long answer", "long answer"], ["a", "b", "b"])
    assert res["mt_score"] == pytest.approx(6.0) and res["mt_grade"] == pytest.approx(6.0)
    assert res["categories"] == {"a": 2.0, "b": 8.0}
    assert "Rating: [[5]]" in single_prompt("q", "x") and "[Question]\nq\n" in single_prompt("q", "x")


def test_model_judge_reads_its_verdict_off_the_option_logprobs():
    torch.manual_seed(0)
    cfg = resolve_model_config(ModelConfig(n_layer=2, n_embd=64, n_head=4, max_seq_len=256), 258)
    model = build_model(cfg).eval()
    tok = ByteTok()
    judge = ModelJudge(model, tok, chat=False)
    from danlu.transcript import transcript_ids

    ctx = transcript_ids(tok, [{"role": "user", "content": "Q?"}]) + tok.encode(" [[")
    lp = judge.option_logprobs("Q?", "[[", ["A]]", "B]]", "C]]"])
    want = [direct_logprob(model, ctx, tok.encode(o))[0] for o in ("A]]", "B]]", "C]]")]
    assert lp == pytest.approx(want, abs=1e-4)
    assert judge("Q?") == f"[[{'ABC'[int(np.argmax(want))]}]]"
    expected, grade = judge.rate("Q?")
    r = judge.option_logprobs("Q?", "Rating: [[", [f"{k}]]" for k in range(1, 11)])
    p = np.exp(r - r.max()) / np.exp(r - r.max()).sum()
    assert expected == pytest.approx(float(p @ np.arange(1, 11))) and grade == int(np.argmax(r)) + 1


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from danlu.eval.judged_data import QUESTIONS
    from danlu.model_dir import save_model_dir
    from danlu.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("judged")
    texts = [q.question + " " + q.reference for q in QUESTIONS] * 4
    tok = Tokenizer.train(texts, 400)
    tok.save(root / "tok")
    out = []
    for seed, extra in ((0, {"chat": True}), (1, None)):
        torch.manual_seed(seed)
        cfg = resolve_model_config(
            ModelConfig(n_layer=1, n_embd=32, n_head=2, max_seq_len=1024), tok.vocab_size
        )
        out.append(save_model_dir(root / f"m{seed}", build_model(cfg), cfg, root / "tok", extra=extra))
    return out


def test_danlu_eval_runs_the_judged_tasks_from_the_command_line(model_dirs, tmp_path, capsys):
    chat, base = model_dirs
    out = tmp_path / "r.json"
    args = ["eval", str(base), "--tasks", "mtbench,alpacaeval", "--judge", str(chat), "--limit", "3"]
    main([*args, "--max-new-tokens", "6", "--out", str(out)])
    table = capsys.readouterr().out
    for metric in ("mt_score", "win_rate", "lc_win_rate", "swap_consistency"):
        assert f"| {metric} |" in table
    res = json.loads(out.read_text())["results"]
    assert 1 <= res["mtbench"]["mt_score"] <= 10 and res["mtbench"]["n"] == 3
    alp = res["alpacaeval"]
    assert alp["wins"] + alp["ties"] + alp["losses"] == 3 and alp["reference"] == "built-in reference answers"
    assert "tokens/s" not in table.splitlines()[-1]
    main(
        [
            "eval",
            str(base),
            "--tasks",
            "alpacaeval",
            "--judge",
            str(chat),
            "--reference",
            str(chat),
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
        ]
    )
    assert "| alpacaeval | 2 | win_rate |" in capsys.readouterr().out
    assert main(["eval", str(base), "--tasks", "mtbench"]) == 2
    err = capsys.readouterr().err
    assert "need a judge model" in err and "Traceback" not in err


def test_danlu_leaderboard_rates_models_from_the_command_line(model_dirs, tmp_path, capsys):
    chat, base = model_dirs
    out = tmp_path / "board.json"
    main(
        [
            "leaderboard",
            str(chat),
            str(base),
            "--judge",
            str(chat),
            "--limit",
            "3",
            "--max-new-tokens",
            "4",
            "--with-reference",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert "| 1 |" in text and "| 3 |" in text and "reference" in text
    board = json.loads(out.read_text())
    assert len(board["rows"]) == 3 and len(board["matches"]) == 3 * 3
