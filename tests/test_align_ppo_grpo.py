"""Pieces of the ppo/grpo align methods: verifiable rewards, the KL controller, the rollout stream's
resume contract, per-row GAE, and the stage's refusal of settings that break exact resume."""

from __future__ import annotations

import pytest
import torch

from danlu.align import arith
from danlu.align.config import AlignConfig
from danlu.align.ppo import KLController, per_row_gae
from danlu.align.rl import gae
from danlu.align.rl_config import RLConfig
from danlu.align.rl_stage import RolloutStream, _check, resolved
from danlu.errors import CheckpointError, ConfigError, DataError
from danlu.train.config import TrainConfig


def test_arithmetic_rewards_score_the_last_number_and_a_bare_number_format():
    probs = arith.arithmetic_problems(3, 50, 2, "+-*")
    assert probs == arith.arithmetic_problems(3, 50, 2, "+-*")  # seeded
    for p in probs:
        a, op, b = p.question.split("?")[0].removeprefix("What is ").split()
        assert int(p.answer) == eval(f"{a}{op}{b}")
    held = frozenset(p.question for p in probs[:10])
    assert not held & {p.question for p in arith.arithmetic_problems(4, 200, 2, "+-*", held)}
    assert arith.correct("12 + 30 = 42", "42") == 1.0 and arith.correct("42 or 41", "42") == 0.0
    assert arith.correct("The answer is 1,234.", "1234") == 1.0
    assert arith.well_formatted(" 42 ") == 1.0 and arith.well_formatted("it is 42") == 0.0
    r = arith.rewards(["42", "x = 42", "7"], ["42", "42", "42"], 0.1)
    assert r["reward"] == pytest.approx([1.1, 1.0, 0.1])
    # a held-out set asks each question once; 1-digit +/- has 200 questions in all
    assert arith.distinct_problems(1, "+-") == 200 and arith.distinct_problems(2, "+") == 8100
    once = arith.arithmetic_problems(5, 100, 1, "+-", distinct=True)
    assert len({p.question for p in once}) == 100
    rest = arith.arithmetic_problems(6, 300, 1, "+-", frozenset(p.question for p in once))
    assert not {p.question for p in rest} & {p.question for p in once}
    with pytest.raises(DataError):
        arith.arithmetic_problems(5, 201, 1, "+-", distinct=True)


def test_one_update_per_rollout_uses_the_detached_policy_as_the_sampling_policy():
    from danlu.align.grpo import grpo_step
    from danlu.align.rollout import token_logps

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.Linear(8, 11))
    ids = torch.randint(0, 11, (4, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]] * 4)
    b = {"ids": ids, "mask": mask, "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5])}
    rl = RLConfig(group_size=2, kl_coef=0.0)
    got, n, _ = grpo_step(rl)(model, b)
    got.backward()
    grad = [q.grad.clone() for q in model.parameters()]
    model.zero_grad()
    with torch.no_grad():
        old = token_logps(model, ids)
    want, _, _ = grpo_step(rl)(model, b | {"old_logps": old})
    want.backward()
    assert n == 4 and torch.allclose(got, want)
    assert all(torch.allclose(g, q.grad) for g, q in zip(grad, model.parameters(), strict=True))


def test_the_kl_controller_moves_toward_its_target_and_is_fixed_without_one():
    c = KLController(0.1, 2.0, 100)
    c.update(10.0, 10)  # far above: error clipped at 0.2
    assert c.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    c.update(1.0, 10)
    assert c.value < 0.1 * 1.02
    fixed = KLController(0.1, 0.0, 100)
    fixed.update(50.0, 10)
    assert fixed.value == 0.1
    c2 = KLController(0.0, 0.0, 1)
    c2.load_state_dict(c.state_dict())
    assert c2.value == c.value


def test_per_row_gae_equals_gae_on_each_rows_completion_tokens():
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    adv, ret = per_row_gae(r, v, mask, 0.9, 0.8)
    for i in range(3):
        idx = mask[i].nonzero().squeeze(1)
        a, rt = gae(r[i, idx], v[i, idx], 0.0, 0.9, 0.8)
        assert torch.allclose(adv[i, idx], a) and torch.allclose(ret[i, idx], rt)
        assert (adv[i][mask[i] == 0] == 0).all()


def test_the_rollout_stream_samples_each_rollout_once_and_refuses_a_mid_rollout_resume():
    made = []
    stream = RolloutStream(lambda k: made.append(k) or [{"k": k, "j": j} for j in range(3)])
    it = iter(stream)
    got = [next(it) for _ in range(6)]
    assert made == [0, 1] and [b["k"] for b in got] == [0, 0, 0, 1, 1, 1]
    assert stream.state_dict() == {"rollout": 2, "pending": 0}
    next(it)
    with pytest.raises(CheckpointError):
        RolloutStream(lambda k: []).load_state_dict(stream.state_dict())
    fresh = RolloutStream(lambda k: [{"k": k}])
    fresh.load_state_dict({"rollout": 5, "pending": 0})
    assert next(iter(fresh))["k"] == 5


def test_settings_that_break_exact_resume_or_the_method_are_refused():
    def cfg(method, **rl):
        train = TrainConfig(batch_size=4, max_steps=8, ckpt_every=4)
        return resolved(AlignConfig(method=method, rl=RLConfig(**rl), train=train))

    assert _check(cfg("grpo", epochs=2, minibatches=2)) == 4
    assert (
        resolved(cfg("grpo")).rl.task == "arith" and resolved(cfg("ppo", reward_model="x")).rl.task == "pairs"
    )
    with pytest.raises(ConfigError, match="multiple"):
        _check(cfg("grpo", epochs=3))
    with pytest.raises(ConfigError, match="reward_model"):
        _check(cfg("ppo"))
    with pytest.raises(ConfigError, match="verifiable"):
        _check(cfg("grpo", task="pairs"))
    with pytest.raises(ConfigError, match="minibatches"):
        _check(cfg("grpo", group_size=3, minibatches=8))


# --- toy runs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    import json
    import random

    from chat_words import WORDS
    from danlu.align.config import AlignDataConfig
    from danlu.align.stage import run_align
    from danlu.model.config import ModelConfig
    from danlu.model.transformer import build_model
    from danlu.model_dir import save_model_dir
    from danlu.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("rl")
    rng = random.Random(0)
    rows = []
    for _ in range(120):
        a, b = rng.sample(WORDS, 2)
        rows.append({"prompt": f"is the {a} a {b}?", "chosen": f"yes, the {a}.", "rejected": f"no, the {b}."})
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(300)]
    tok = Tokenizer.train([*lines, " ".join(WORDS), "is the a yes no 0123456789 + - ="], 320)
    tok.save(root / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=96, vocab_size=tok.vocab_size)
    save_model_dir(root / "base", build_model(cfg), cfg, root / "tokenizer")
    data = AlignDataConfig(sources=[str(root / "pairs.jsonl")], per_source=0, val_fraction=0.2)
    rm = run_align(
        AlignConfig(method="rm", tune="full", data=data, train=_train(4)), root / "base", root / "rm"
    )
    return root, data, rm["model_dir"]


def _train(steps, ckpt_every=4):
    return TrainConfig(seq_len=32, batch_size=4, max_steps=steps, lr=3e-3, warmup_steps=1, eval_every=4,
                       ckpt_every=ckpt_every, log_every=1, device="cpu", dtype="fp32", weight_decay=0.0)  # fmt: skip


def _rl_cfg(toy, method):
    from danlu.finetune.config import LoRAConfig

    _, data, rm = toy
    rl = (RLConfig(reward_model=str(rm), max_new_tokens=8, epochs=2, minibatches=2, kl_target=1.0, eval_prompts=4)
          if method == "ppo" else RLConfig(max_new_tokens=6, group_size=2, eval_prompts=4, kl_coef=0.04))  # fmt: skip
    steps = 8 if method == "ppo" else 4
    train = _train(steps, ckpt_every=4 if method == "ppo" else 2)
    return AlignConfig(
        method=method, tune="lora", data=data, lora=LoRAConfig(r=4, alpha=16), rl=rl, train=train
    )


def _records(out):
    import json

    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_each_rl_method_runs_logs_finite_metrics_and_resumes_bit_exactly(toy, tmp_path, monkeypatch, method):
    import json
    import math

    from danlu.align import rl_stage
    from danlu.align.stage import run_align

    root = toy[0]
    cfg = _rl_cfg(toy, method)
    result = run_align(cfg, root / "base", tmp_path / "a")
    recs = [r for r in _records(tmp_path / "a") if "loss" in r]
    assert len(recs) == cfg.train.max_steps
    keys = ("reward", "kl", "clip_fraction", "value_loss", "explained_variance") if method == "ppo" else (
        "reward", "kl", "clip_ratio", "correct", "format")  # fmt: skip
    for r in recs:
        for k in keys:
            assert k in r and (math.isfinite(r[k]) or k == "explained_variance"), (k, r)
    if method == "ppo":
        assert all(abs(r["kl"]) < 5.0 for r in recs)  # bounded by the adaptive penalty at this scale
        assert "val_reward" in result and "val_kl" in result
    else:
        assert "val_exact_match" in result
        data = tmp_path / "a" / "data"
        before, after = (json.loads((data / f"held_out_{k}.json").read_text()) for k in ("before", "after"))
        assert len(before) == len(after) == cfg.rl.eval_prompts
        assert sum(r["correct"] for r in after) / len(after) == result["val_exact_match"]
    # the same run, killed after its first checkpoint, then resumed
    module = rl_stage.ppo if method == "ppo" else rl_stage.grpo
    name = "ppo_loss" if method == "ppo" else "grpo_step"
    real = getattr(module, name)
    calls = {"n": 0}
    kill_at = cfg.train.ckpt_every + 1

    def dying(rl):
        inner = real(rl)

        def loss(m, b):
            calls["n"] += 1
            if calls["n"] == kill_at:
                raise KeyboardInterrupt
            return inner(m, b)

        return loss

    monkeypatch.setattr(module, name, dying)
    with pytest.raises(KeyboardInterrupt):
        run_align(cfg, root / "base", tmp_path / "b")
    monkeypatch.setattr(module, name, real)
    run_align(cfg, root / "base", tmp_path / "b")
    again = [r for r in _records(tmp_path / "b") if "loss" in r]
    assert [r["loss"] for r in again] == [r["loss"] for r in recs]
    assert [r["reward"] for r in again] == [r["reward"] for r in recs]
