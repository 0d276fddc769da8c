"""`danlu eval --tasks humaneval,mbpp`: sampled completions through the sandbox, pass@k on the command line."""

from __future__ import annotations

import json

import pytest
import torch

from danlu.cli import main
from danlu.errors import ConfigError
from danlu.eval.code import load_problems
from danlu.eval.code_task import evaluate_code_task, model_generate
from danlu.eval.harness import EvalConfig
from danlu.model import build_model, resolve_model_config
from danlu.model.config import ModelConfig
from danlu.model_dir import save_model_dir
from danlu.tokenizer import Tokenizer

pytestmark = pytest.mark.needs_data


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("code_eval")
    problems = load_problems("humaneval", 3) + load_problems("mbpp", 3)
    tok = Tokenizer.train([p.prompt + p.reference for p in problems] * 3, 400)
    tok.save(root / "tok")
    torch.manual_seed(0)
    cfg = resolve_model_config(ModelConfig(n_layer=1, n_embd=32, n_head=2, max_seq_len=512), tok.vocab_size)
    return save_model_dir(root / "model", build_model(cfg), cfg, root / "tok")


def test_the_reference_solutions_pass_through_the_task_wiring(monkeypatch):
    # a generate that answers each problem with its reference: pass@1 = pass@2 = 1 on every problem
    problems = {p.prompt: p.reference for p in load_problems("humaneval", 3) + load_problems("mbpp", 3)}
    import danlu.eval.code_task as code_task

    monkeypatch.setattr(code_task, "sample_until", lambda m, t, prompt, *a, **k: (problems[prompt], 0))
    for kind in ("humaneval", "mbpp"):
        res, chars = evaluate_code_task(
            None, None, kind, 3, samples=2, temperature=0.8, max_new_tokens=8, seed=1
        )
        assert res["pass@1"] == 1.0 and res["pass@1_stderr"] == 0.0 and "pass@10" not in res
        assert res["pass@1_ci95"] == [1.0, 1.0]
        assert res["statuses"] == {"passed": 6} and res["n"] == 3 and chars > 0


def test_samples_are_seeded_per_problem_and_sample(model_dir):
    from danlu.model_dir import load_model

    model, tok, _ = load_model(model_dir)
    probs = load_problems("humaneval", 2)
    a = model_generate(model, tok, probs, 12, seed=5)(probs[0].prompt, 3, 1.0)
    b = model_generate(model, tok, probs, 12, seed=5)(probs[0].prompt, 3, 1.0)
    assert a == b and len(set(a)) > 1  # reruns agree; the samples of one problem differ
    greedy = model_generate(model, tok, probs, 12, seed=5)(probs[1].prompt, 2, 0.0)
    assert greedy[0] == greedy[1]


def test_danlu_eval_runs_the_code_tasks_from_the_command_line(model_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    args = [
        str(model_dir),
        "--tasks",
        "humaneval,mbpp",
        "--limit",
        "2",
        "--samples",
        "2",
        "--temperature",
        "0.8",
    ]
    assert main(["eval", *args, "--max-new-tokens", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| humaneval | 2 | pass@1 |" in printed and "| mbpp | 2 | pass@1 |" in printed
    res = json.loads(out.read_text())["results"]
    for kind in ("humaneval", "mbpp"):
        assert 0.0 <= res[kind]["pass@1"] <= 1.0 and sum(res[kind]["statuses"].values()) == 4
        assert res[kind]["samples"] == 2 and res[kind]["temperature"] == 0.8


def test_bad_sampling_options_are_config_errors():
    with pytest.raises(ConfigError, match="samples"):
        EvalConfig(tasks=("humaneval",), samples=0)
    with pytest.raises(ConfigError, match="temperature"):
        EvalConfig(tasks=("mbpp",), temperature=-1.0)


def test_every_aggregate_carries_its_bootstrap_interval():
    from danlu.eval.harness import _summary
    from danlu.eval.metrics import bootstrap_ci
    from danlu.eval.report import format_table

    per_item = [{"acc": float(i % 3 == 0), "f1": i / 10} for i in range(10)]
    out = _summary(per_item)
    for key in ("acc", "f1"):
        values = [m[key] for m in per_item]
        assert out[f"{key}_ci95"] == list(bootstrap_ci(values))
        assert out[f"{key}_ci95"][0] <= out[key] <= out[f"{key}_ci95"][1]
    res = {"results": {"t": {**out, "n": 10, "seconds": 1.0, "tokens_per_second": 5.0}}}
    res["efficiency"] = {
        "seconds": 1.0,
        "tokens_per_second": 5.0,
        "peak_memory_mb": 1.0,
        "device": "cpu",
        "threads": 1,
    }
    lo, hi = out["acc_ci95"]
    assert (
        f"| t | 10 | acc | {100 * out['acc']:.2f} | {100 * out['acc_stderr']:.2f} | {100 * lo:.2f} – {100 * hi:.2f} |"
        in format_table(res)
    )
