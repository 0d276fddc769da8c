"""The lm-eval adapter answers lm-eval's three request types like direct scoring; `danlu eval` CLI."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from danlu.cli import main
from danlu.errors import ConfigError
from danlu.eval.generative import greedy_until
from danlu.eval.harness import EvalConfig
from danlu.eval.lm_eval_adapter import DanluLMCore
from danlu.eval.scoring import Scorer, encode_pair
from danlu.model import build_model, resolve_model_config
from danlu.model.config import ModelConfig
from test_eval_scoring import ByteTok, direct_logprob


@pytest.fixture(scope="module")
def core():
    torch.manual_seed(1)
    cfg = resolve_model_config(ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=32), 258)
    model = build_model(cfg)
    model.eval()
    return DanluLMCore(model, ByteTok(), batch_size=4, max_gen_toks=12)


def test_loglikelihood_equals_direct_scoring(core):
    reqs = [("Question: 2+2\nAnswer:", " 4"), ("The cat", " sat on"), ("", "hello")]
    got = core.loglikelihood(reqs)
    for (c, x), (lp, greedy) in zip(reqs, got, strict=True):
        want, want_greedy = direct_logprob(core.model, *encode_pair(core.tok, c, x))
        assert lp == pytest.approx(want, abs=1e-4) and greedy == want_greedy
    scores = Scorer(core.model, core.tok, batch_size=1).loglikelihood(reqs)
    assert [s.logprob for s in scores] == pytest.approx([g[0] for g in got], abs=1e-4)


def test_loglikelihood_rolling_sums_every_token_once(core):
    short = "a short text"  # fits one window: the plain full-context loss after the prefix token
    ids = [core.tok.eos_id, *core.tok.encode(short)]
    with torch.no_grad():
        logp = F.log_softmax(core.model(torch.tensor([ids[:-1]]))[0].double(), -1)
    want = float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
    long = "0123456789" * 8  # 80 tokens: three windows of 32
    got_short, got_long = core.loglikelihood_rolling([short, long])
    assert got_short == pytest.approx(want, abs=1e-4)
    # lm-eval's disjoint windows of 32 inputs: [eos] + 0..30 predicts 0..31; 31..62 predicts 32..63;
    # the last window slides back to stay full: 47..78 predicts 64..79
    toks = core.tok.encode(long)
    manual = direct_logprob(core.model, [core.tok.eos_id], toks[:32])[0]
    manual += direct_logprob(core.model, toks[31:32], toks[32:64])[0]
    manual += direct_logprob(core.model, toks[47:64], toks[64:80])[0]
    assert got_long == pytest.approx(manual, abs=1e-3)
    assert not math.isnan(got_long)


def test_generate_until_is_greedy_and_cut_at_stop_strings(core):
    prompt = "abc"
    (text,) = core.generate_until([(prompt, {"until": [], "max_gen_toks": 6})])
    # the greedy continuation by hand: argmax, append, repeat
    ids = core.tok.encode(prompt)
    out = []
    with torch.no_grad():
        for _ in range(6):
            nxt = int(core.model(torch.tensor([ids + out]))[0, -1].argmax())
            if nxt == core.tok.eos_id:
                break
            out.append(nxt)
    assert text == core.tok.decode(out)
    if len(text) > 1:
        stop = text[1]
        (cut,) = core.generate_until([(prompt, {"until": [stop], "max_gen_toks": 6})])
        assert cut == text.split(stop)[0]
    with pytest.raises(ConfigError, match="greedily"):
        core.generate_until([(prompt, {"do_sample": True, "temperature": 0.7})])
    assert greedy_until(core.model, core.tok, prompt, [], 6)[0] == text


def test_lm_eval_lm_class_wraps_the_core(core):
    pytest.importorskip("lm_eval")
    from danlu.eval.lm_eval_adapter import lm_class

    lm = lm_class()(core=core)
    reqs = [SimpleNamespace(args=("Q:", " yes")), SimpleNamespace(args=("Q:", " no"))]
    assert lm.loglikelihood(reqs) == core.loglikelihood([r.args for r in reqs])
    rolling = lm.loglikelihood_rolling([SimpleNamespace(args=("some text",))])
    assert rolling == core.loglikelihood_rolling(["some text"])


# A local multiple-choice task for lm-eval: its data is a JSON-lines file, so nothing is downloaded.
_TINY_TASK = """task: danlu_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: question
doc_to_choice: choices
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""

_TINY_ITEMS = [
    ("Q: 2+2\nA:", ["4", "five", "22"], 0),
    ("The cat", ["sat", "sat on the mat", "ran"], 1),
    ("Sky color:", ["blue", "green"], 0),
    ("abc", ["d", "def", "xyz!"], 2),
    ("To be or", ["not to be", "no"], 0),
    ("Hello", ["world", "there", "you all"], 1),
    ("1 2 3", ["4", "5 6"], 0),
    ("unused", ["a", "b"], 1),  # beyond the limit: lm-eval must not score it
]


def test_simple_evaluate_in_lm_eval_equals_danlu_harness(core, tmp_path):
    lm_eval = pytest.importorskip("lm_eval")
    import json

    from lm_eval.tasks import TaskManager

    from danlu.eval.harness import evaluate_mc
    from danlu.eval.lm_eval_adapter import lm_class
    from danlu.eval.tasks import MCDoc

    data = tmp_path / "items.jsonl"
    data.write_text(
        "".join(json.dumps({"question": q, "choices": c, "gold": g}) + "\n" for q, c, g in _TINY_ITEMS)
    )
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "danlu_tiny_mc.yaml").write_text(_TINY_TASK.format(data=data))
    limit = 7
    out = lm_eval.simple_evaluate(
        model=lm_class()(core=core),
        tasks=["danlu_tiny_mc"],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        num_fewshot=0,
        limit=limit,
        log_samples=True,
        bootstrap_iters=100,  # > 0 for stderrs at all; a mean's is closed-form, not bootstrapped
    )
    got = out["results"]["danlu_tiny_mc"]

    docs = [MCDoc((q,) * len(c), tuple(" " + x for x in c), tuple(c), g) for q, c, g in _TINY_ITEMS[:limit]]
    want, _ = evaluate_mc(core.scorer, docs)
    assert got["acc,none"] == pytest.approx(want["acc"], abs=1e-12)
    assert got["acc_norm,none"] == pytest.approx(want["acc_norm"], abs=1e-12)
    assert got["acc_stderr,none"] == pytest.approx(want["acc_stderr"], rel=1e-9)
    # the same log-likelihood of every choice, item by item
    samples = sorted(out["samples"]["danlu_tiny_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == limit
    scores = core.scorer.loglikelihood(
        [(c, x) for d in docs for c, x in zip(d.contexts, d.continuations, strict=True)]
    )
    i = 0
    for sample, d in zip(samples, docs, strict=True):
        lls = [float(r[0]) for r in sample["filtered_resps"]]
        assert lls == pytest.approx([s.logprob for s in scores[i : i + len(d.choices)]], abs=1e-5)
        i += len(d.choices)


def test_eval_config_and_cli_reject_bad_input(capsys):
    with pytest.raises(ConfigError, match="unknown task"):
        EvalConfig(tasks=("hellaswag", "nope"))
    with pytest.raises(ConfigError, match="limit"):
        EvalConfig(tasks=("piqa",), limit=0)
    assert main(["eval", "/nonexistent", "--tasks", "nope"]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_evaluate_perplexity_file_table_and_json(core, tmp_path):
    import json

    from danlu.eval.harness import evaluate
    from danlu.eval.perplexity import perplexity
    from danlu.eval.report import format_table, write_json

    text = "to be or not to be, that is the question. " * 2
    path = tmp_path / "t.txt"
    path.write_text(text)
    out = evaluate(core.model, core.tok, EvalConfig(tasks=(), ppl_files=(str(path),), ppl_stride=8))
    res = out["results"]["ppl:t.txt"]
    want = perplexity(Scorer(core.model, core.tok), [text], stride=8)
    assert res["bits_per_byte"] == pytest.approx(want["bits_per_byte"], rel=1e-6)
    assert res["tokens"] == res["bytes"] == len(text)  # one byte per token
    assert out["efficiency"]["peak_memory_mb"] > 0 and out["efficiency"]["tokens_per_second"] > 0
    table = format_table(out)
    assert f"| ppl:t.txt | 1 | bits_per_byte | {res['bits_per_byte']:.3f} |" in table
    saved = json.loads(write_json(out, tmp_path / "r.json").read_text())
    assert saved["results"]["ppl:t.txt"]["perplexity"] == pytest.approx(res["perplexity"])
    with pytest.raises(ConfigError, match="no such file"):
        EvalConfig(tasks=(), ppl_files=(str(tmp_path / "missing.txt"),))


def test_local_lm_eval_task_configs_include_lm_eval_yamls(tmp_path):
    pytest.importorskip("lm_eval")
    import json
    from pathlib import Path

    from danlu.eval.lm_eval_adapter import write_local_tasks

    written = write_local_tasks(["arc_easy"], tmp_path)
    assert written == {"arc_easy": ["danlu_arc_easy"]}
    cfg = json.loads((tmp_path / "danlu_arc_easy.yaml").read_text())
    assert cfg["include"].endswith("arc/arc_easy.yaml") and Path(cfg["include"]).is_file()
    assert (
        cfg["dataset_path"] == "arrow" and Path(cfg["dataset_kwargs"]["data_files"]["validation"]).is_file()
    )


def test_every_printed_aggregate_has_its_interval(core, tmp_path):
    """MC (with subject groups), LAMBADA and --ppl results: no metric row of the table lacks a CI."""
    from danlu.eval.harness import evaluate, evaluate_lambada, evaluate_mc
    from danlu.eval.report import format_table
    from danlu.eval.tasks import MCDoc

    docs = [
        MCDoc((q,) * len(c), tuple(" " + x for x in c), tuple(c), g, group=f"s{i % 2}")
        for i, (q, c, g) in enumerate(_TINY_ITEMS)
    ]
    mc, _ = evaluate_mc(core.scorer, docs)
    lo, hi = mc["acc_subject_mean_ci95"]
    assert lo <= mc["acc_subject_mean"] <= hi
    lam = evaluate_lambada(core.scorer, docs)
    assert lam["perplexity_ci95"][0] <= lam["perplexity"] <= lam["perplexity_ci95"][1]
    path = tmp_path / "t.txt"
    path.write_text("to be or not to be, that is the question. " * 8)
    out = evaluate(core.model, core.tok, EvalConfig(tasks=(), ppl_files=(str(path),)))
    ppl = out["results"]["ppl:t.txt"]
    for key in ("perplexity", "bits_per_byte"):
        assert ppl[f"{key}_ci95"][0] <= ppl[key] <= ppl[f"{key}_ci95"][1]
    for name, res in (("mc", mc), ("lambada", lam)):
        out["results"][name] = {**res, "n": len(docs), "seconds": 1.0}
    rows = [line for line in format_table(out).splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 4 + 2 + 2  # header; acc, acc_norm(_tokens), acc_subject_mean; acc, ppl; ppl, bpb
    assert all(row.split(" | ")[5] != "-" for row in rows[1:]), rows


def test_stratified_and_block_bootstraps_on_crafted_values():
    import numpy as np

    from danlu.eval.harness import stratified_bootstrap_ci
    from danlu.eval.perplexity import block_bootstrap_nll

    # constant strata: every resample has the same mean of means
    assert stratified_bootstrap_ci([[1.0] * 5, [0.0] * 50]) == [0.5, 0.5]
    wide = stratified_bootstrap_ci([[0.0, 1.0] * 5, [0.0, 1.0] * 5])
    narrow = stratified_bootstrap_ci([[0.0, 1.0] * 500, [0.0, 1.0] * 500])
    assert wide[0] < narrow[0] <= 0.5 <= narrow[1] < wide[1]
    assert block_bootstrap_nll(np.full(300, -2.0)) == pytest.approx((2.0, 2.0))
    rng = np.random.default_rng(0)
    lp = -rng.exponential(1.0, size=4096)
    lo, hi = block_bootstrap_nll(lp, block=64)
    assert lo < -lp.mean() < hi and hi - lo < 0.2


def test_efficiency_line_gives_no_rate_when_no_task_counted_tokens():
    from danlu.eval.report import format_table

    eff = {
        "seconds": 2.0,
        "tokens": 0,
        "tokens_per_second": None,
        "peak_memory_mb": 1.0,
        "device": "cpu",
        "threads": 1,
    }
    res = {"results": {"distinct": {"distinct_1": 0.5, "n": 4, "seconds": 2.0}}, "efficiency": eff}
    line = format_table(res).splitlines()[-1]
    assert line == "2.0 s, peak memory 1 MB on cpu (1 threads)"
    res["efficiency"] = {**eff, "tokens": 100, "tokens_per_second": 50.0}
    assert format_table(res).splitlines()[-1].startswith("2.0 s, 50 tokens/s, peak memory")


def test_batched_generation_equals_one_at_a_time(core):
    """The engine's batched greedy decoding gives greedy_until's text and token counts, prompt by
    prompt, including a prompt longer than the context (cropped from the left alike)."""
    from danlu.eval.generative import batched_greedy_until

    prompts = ["Q: 2+2\nA:", "The cat sat", "x" * 40, "To be or not", "abc\n", "Hello there, "]
    until = ("\n", "t")
    for max_new in (3, 12):
        want = [greedy_until(core.model, core.tok, p, until, max_new) for p in prompts]
        got = batched_greedy_until(core.model, core.tok, prompts, until, max_new, max_batch=4)
        assert got == want
    assert batched_greedy_until(core.model, core.tok, [], until, 4, 4) == []


def test_batched_generation_takes_more_prompts_than_the_engines_default_queue(core):
    """A full-size task (GSM8K has 1,319 items) queues every prompt at once: more than the engine's
    default max_queue of 256 used to fail with "requests are waiting (max_queue)"."""
    from danlu.eval.generative import batched_greedy_until

    prompts = [f"Q{i}" for i in range(300)]
    got = batched_greedy_until(core.model, core.tok, prompts, ("\n",), 1, max_batch=64)
    assert len(got) == 300 and all(n <= 1 for _, n in got)
