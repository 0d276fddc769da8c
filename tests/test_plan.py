"""danlu.plan against published anchors (each with its source and tolerance) and danlu's own model."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from danlu.errors import ConfigError
from danlu.model.config import ModelConfig
from danlu.model.presets import resolve_model_config
from danlu.model.transformer import build_model
from danlu.plan import hardware as hw
from danlu.plan.flops import model_config, model_shape, steps_for_budget, training_flops
from danlu.plan.layout import plan_layout
from danlu.plan.memory import TrainSetup, inference_memory, model_states, training_memory
from danlu.plan.scaling import (
    APPROACH1,
    APPROACH2,
    CHINCHILLA,
    CHINCHILLA_REFIT,
    CHINCHILLA_TABLE3,
    GOPHER_FLOPS,
    KAPLAN,
    PF_DAY,
    inference_aware_optimum,
)

GB = 1e9

# ------------------------------------------------------------------------------------------- FLOPs


def test_chinchilla_70b_on_1_4t_tokens_is_5_9e23_flops():
    # Hoffmann et al. 2022: Chinchilla, 70B parameters on 1.4T tokens, ~5.9e23 FLOPs (1% tolerance)
    assert training_flops(70e9, 1.4e12) == pytest.approx(5.9e23, rel=0.01)


def test_gpt3_175b_on_300b_tokens_is_3_14e23_flops():
    # Brown et al. 2020, Table D.1: GPT-3 175B trained with 3.14e23 FLOPs (1% tolerance)
    assert training_flops(175e9, 300e9) == pytest.approx(3.14e23, rel=0.01)


def test_llama2_7b_parameter_count_is_exact():
    # meta-llama/Llama-2-7b-hf: 6,738,415,616 parameters (exact)
    assert model_shape(model_config("llama-7b")).n_params == 6_738_415_616


def test_exact_flops_are_the_models_own_count():
    cfg = ModelConfig(n_layer=3, n_embd=96, n_head=4, n_kv_head=2, vocab_size=500, max_seq_len=64)
    shape = model_shape(cfg)
    model = build_model(resolve_model_config(cfg, 500))
    assert shape.n_params == model.num_params()
    assert shape.flops_per_token(64) == model.flops_per_token(64)
    # the attention term is the only difference from 6 N_matmul
    assert shape.flops_per_token(64) - 6 * shape.n_matmul == 12 * 3 * 96 * 64
    assert shape.inference_flops_per_token(10) == 2 * shape.n_matmul + 4 * 3 * 96 * 10


def test_moe_active_parameters_count_top_k_experts():
    dense = model_shape(ModelConfig(n_layer=2, n_embd=64, n_head=2, vocab_size=300))
    moe = model_shape(ModelConfig(n_layer=2, n_embd=64, n_head=2, vocab_size=300, n_experts=8, moe_top_k=2))
    per_expert = moe.n_expert_params / 16  # 8 experts in each of 2 layers
    assert moe.n_params - moe.n_active == pytest.approx(16 * per_expert * 6 / 8)
    # top-2 of 8 experts: matmul weights per token are two experts' worth plus the router
    assert moe.n_matmul - dense.n_matmul == pytest.approx(
        2 * (2 * per_expert - per_expert) + 2 * 64 * 8, abs=1
    )


def test_a_budget_below_one_step_is_explained():
    shape = model_shape(model_config("tiny"), 4096)
    assert steps_for_budget(shape, 10 * shape.flops_per_token(256) * 2048, 2048, 256) == 10
    with pytest.raises(ConfigError, match="below one optimizer step"):
        steps_for_budget(shape, 1e6, 2048, 256)


# ------------------------------------------------------------------------------------ scaling laws


def test_chinchilla_optimal_size_for_the_gopher_budget_is_near_70b():
    # Hoffmann et al. 2022, Table 3: approach 1 gives 67B for Gopher's 5.76e23 FLOPs; approach 2 63B;
    # Besiroglu et al. 2024's refit of the parametric law agrees (~70B). Tolerance 10% of 67B / 70B.
    n1, d1 = APPROACH1.optimum(GOPHER_FLOPS)
    assert n1 == pytest.approx(67e9, rel=0.05)
    assert d1 == pytest.approx(1.5e12, rel=0.1)
    assert APPROACH2.optimum(GOPHER_FLOPS)[0] == pytest.approx(63e9, rel=0.01)
    assert CHINCHILLA_REFIT.optimum(GOPHER_FLOPS)[0] == pytest.approx(70e9, rel=0.1)


def test_approach1_reproduces_table3_within_3_percent():
    for n, c, d in CHINCHILLA_TABLE3:
        n_opt, d_opt = APPROACH1.optimum(c)
        assert n_opt == pytest.approx(n, rel=0.03)
        assert d_opt == pytest.approx(d, rel=0.06)  # Table 3 rounds tokens to 2-3 digits


def test_parametric_optimum_is_the_constrained_minimum():
    for law in (CHINCHILLA, CHINCHILLA_REFIT):
        c = 1e22
        n_opt, d_opt = law.optimum(c)
        assert 6 * n_opt * d_opt == pytest.approx(c)
        for scale in (0.8, 1.25):  # any other split of the same compute is worse
            n = n_opt * scale
            assert law.loss(n, c / (6 * n)) > law.loss(n_opt, d_opt)
    # the published constants: N* exponent beta / (alpha + beta) = 0.45 (paper: a = 0.46)
    assert CHINCHILLA.a == pytest.approx(0.46, abs=0.01)


def test_kaplan_law():
    # Kaplan et al. 2020, Figure 14: N* = 1.3e9 at 1 PF-day, growing as C^0.73
    assert KAPLAN.optimum(PF_DAY)[0] == pytest.approx(1.3e9)
    assert KAPLAN.optimum(10 * PF_DAY)[0] / KAPLAN.optimum(PF_DAY)[0] == pytest.approx(10**0.73)
    # eq. 1.5 tends to L(N) as D grows
    assert KAPLAN.loss(1e9, 1e30) == pytest.approx(KAPLAN.loss(1e9), rel=1e-6)


def test_inference_aware_optimum():
    law = CHINCHILLA_REFIT
    target = law.loss(*law.optimum(1e22))
    alone = inference_aware_optimum(law, target, 0)
    assert alone.n == pytest.approx(law.optimum(1e22)[0], rel=0.005)  # no inference: Chinchilla
    served = inference_aware_optimum(law, target, 1e13)
    assert served.n < alone.n and served.d > alone.d
    assert law.loss(served.n, served.d) == pytest.approx(target, rel=1e-9)
    chinchilla_total = 1e22 + 2 * alone.n * 1e13
    assert served.total_flops < chinchilla_total
    with pytest.raises(ConfigError, match="irreducible"):
        inference_aware_optimum(law, law.E - 0.1, 0)


# ------------------------------------------------------------------------------------------ memory


def test_zero_paper_table_7b_mixed_precision_adam():
    # Rajbhandari et al. 2020 (ZeRO), section 3 / Figure 1: mixed-precision Adam keeps 2 + 2 + 12 = 16
    # bytes per parameter; on 64 devices ZeRO-1 keeps 4 + 12/64, ZeRO-2 2 + 14/64, ZeRO-3 16/64.
    n = 7e9
    total = lambda zero, dp=64: sum(model_states(n, 8.0, "mixed", zero, dp).values())  # noqa: E731
    assert total(0, 1) == pytest.approx(112 * GB)
    assert total(1) == pytest.approx((4 + 12 / 64) * n)
    assert total(2) == pytest.approx((2 + 14 / 64) * n)
    assert total(3) == pytest.approx(16 / 64 * n)
    # the paper's own row, 7.5B on 64 devices: 120 GB, 31.4 GB, 16.6 GB, 1.9 GB (2% for its rounding)
    row = [sum(model_states(7.5e9, 8.0, "mixed", z, 64).values()) / GB for z in range(4)]
    assert row == pytest.approx([120, 31.4, 16.6, 1.9], rel=0.02)


def test_activation_estimate_matches_what_autograd_saves():
    """The per-block activation count against the bytes autograd actually saves (fp32, tiny model)."""
    cfg = resolve_model_config(ModelConfig(n_layer=2, n_embd=128, n_head=4, n_kv_head=2, max_seq_len=64), 512)
    model = build_model(cfg)
    weights = {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in weights:
            storages[s.data_ptr()] = s.nbytes()
        return t

    x = torch.randint(0, 512, (2, 64))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten())
    saved = sum(storages.values())
    mem = training_memory(model_shape(cfg), TrainSetup(micro_batch=2, seq_len=64, precision="fp32"))
    # the estimate's stored activations plus the one log-softmax output autograd keeps
    estimate = mem.activations + 4 * 512 * 2 * 64
    assert estimate == pytest.approx(saved, rel=0.05)
    loss.backward()


def test_checkpointing_and_parallelism_divide_memory():
    shape = model_shape(model_config("llama-7b"))
    base = TrainSetup(micro_batch=1, seq_len=4096, precision="mixed")
    full = training_memory(shape, base)
    ckpt = training_memory(shape, TrainSetup(micro_batch=1, seq_len=4096, precision="mixed", checkpointing=1))
    assert ckpt.activations < full.activations / 5
    tp = training_memory(shape, TrainSetup(micro_batch=1, seq_len=4096, precision="mixed", tp=4))
    assert tp.weights == pytest.approx(full.weights / 4)
    assert tp.activations == pytest.approx(full.activations / 4)
    offload = training_memory(shape, TrainSetup(precision="mixed", zero=1, dp=8, offload=True))
    assert offload.optimizer == 0 and offload.host == pytest.approx((8 + 4) * shape.n_params / 8)


def test_lora_and_qlora_train_few_parameters():
    shape = model_shape(model_config("llama-7b"))
    lora = training_memory(shape, TrainSetup(precision="bf16", lora_rank=16))
    qlora = training_memory(shape, TrainSetup(precision="bf16", lora_rank=16, qlora=True))
    # rank 16 on q, k, v, o, gate, up, down of Llama-2-7B: 16 * (2*4096*4 ... ) = 40.0M adapter weights
    assert (
        lora.trainable_params == 16 * (4096 + 3 * 4096 + 4096 + 4096 + 4096 + 2 * 11008 + 11008 + 4096) * 32
    )
    assert qlora.weights < lora.weights / 7  # NF4 base: ~0.52 bytes per weight instead of 4
    with pytest.raises(ConfigError, match="lora rank"):
        TrainSetup(qlora=True)


def test_kv_cache_of_llama2_7b():
    # 2 (k, v) x 32 layers x 32 heads x 128 dims x 2 bytes = 0.5 MiB per token in bf16
    mem = inference_memory(model_shape(model_config("llama-7b")), batch=1, context=4096)
    assert mem.kv_cache == pytest.approx(4096 * 2 * 32 * 32 * 128 * 2)
    assert mem.weights == pytest.approx(6_738_415_616 * 2)


def test_tp_that_does_not_divide_the_heads_is_explained():
    shape = model_shape(model_config("llama-7b"))
    with pytest.raises(ConfigError, match="does not divide the 32 attention heads"):
        training_memory(shape, TrainSetup(tp=3))


# ------------------------------------------------------------------------------- time, cost, layout


def test_cost_from_flops_and_measured_mfu():
    est = hw.estimate_cost(1e24, hw.hardware("h100"), devices=1000, mfu=0.4, price_per_hour=2.0)
    hours = 1e24 / (989.5e12 * 0.4) / 3600
    assert est.device_hours == pytest.approx(hours)
    assert est.wall_hours == pytest.approx(hours / 1000)
    assert est.cost == pytest.approx(2 * hours)
    assert est.energy_kwh == pytest.approx(hours * 0.7)
    # no MFU recorded for the A100: the caller must give one; the H100 shares the H200's (Hopper)
    with pytest.raises(ConfigError, match="no MFU"):
        hw.estimate_cost(1e24, hw.hardware("a100"))
    assert hw.estimate_cost(1e24, hw.hardware("h100")).mfu == hw.MEASURED_MFU["hopper"][0]


def test_layout_for_llama_7b_on_one_node():
    shape = model_shape(model_config("llama-7b"))
    plan = plan_layout(shape, hw.hardware("h100"), 1, 8, TrainSetup(seq_len=4096), global_batch=256, mfu=0.4)
    b = plan.best
    assert b.dp * b.tp * b.pp == 8 and b.tp <= 8 and b.pp == 1
    assert b.memory.peak <= 0.9 * 80e9
    cfg = b.parallel_config()
    assert set(cfg) >= {"dp_replicate", "dp_shard", "tp", "pp", "cp"}
    assert cfg["dp_replicate"] * cfg["dp_shard"] * cfg["tp"] * cfg["pp"] == 8
    # the keys are the recipe's parallel section, so they can be pasted into a run
    from danlu.parallel.config import ParallelConfig

    assert ParallelConfig(**cfg).tp == b.tp
    assert all(lay.zero != 1 for lay in plan.candidates)  # danlu has no ZeRO-1 layout


def test_layout_uses_pipeline_only_when_memory_requires():
    shape = model_shape(model_config("llama-70b"))
    setup = TrainSetup(seq_len=4096, micro_batch=4)
    a100 = hw.hardware("a100")
    plan = plan_layout(shape, a100, 8, 8, setup, global_batch=512, mfu=0.4)
    assert plan.best.dp * plan.best.tp * plan.best.pp == 64
    assert all(lay.pp == plan.best.pp for lay in plan.candidates)


def test_a_model_that_fits_on_no_layout_is_explained():
    shape = model_shape(model_config("llama-70b"))
    with pytest.raises(ConfigError, match="fits on no layout of 1 x 8 a100"):
        plan_layout(shape, hw.hardware("a100"), 1, 8, TrainSetup(seq_len=4096), global_batch=64, mfu=0.4)


def test_layout_rejects_tp_degrees_that_do_not_divide_heads():
    shape = model_shape(ModelConfig(n_layer=4, n_embd=768, n_head=12, vocab_size=1000))
    plan = plan_layout(shape, hw.hardware("h100"), 1, 8, TrainSetup(seq_len=512), global_batch=64, mfu=0.4)
    assert any(r.startswith("tp=8") for r in plan.rejected)
    assert plan.best.tp in (1, 2, 4)


# --------------------------------------------------------------------------------------- fit, CLI


def _fake_run(root: Path, depth: int, law: tuple[float, ...], steps: int, noise: float, seed: int) -> Path:
    """A run dir as danlu pretrain writes it, with evaluations that follow a known L(N, D)."""
    import numpy as np

    from danlu.plan.fit import read_run

    run = root / f"d{depth}"
    (run / "model").mkdir(parents=True)
    cfg = resolve_model_config(ModelConfig(depth=depth, max_seq_len=128), 2048)
    fields = {
        k: getattr(cfg, k) for k in ("depth", "n_layer", "n_embd", "n_head", "vocab_size", "max_seq_len")
    }
    (run / "model" / "config.json").write_text(json.dumps(fields))
    (run / "config.yaml").write_text(
        yaml.safe_dump({"train": {"seq_len": 128, "batch_size": 4, "warmup_steps": 5}})
    )
    e, a, alpha, b, beta = law
    n = model_shape(cfg).n_params
    rng = np.random.default_rng(seed)
    lines = []
    for step in np.linspace(steps / 8, steps, 8).astype(int):
        d = step * 512
        loss = e + a / n**alpha + b / d**beta + rng.normal(0, noise)
        lines.append(json.dumps({"step": int(step), "val_loss": loss}))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert read_run(run).n_params == n
    return run


def test_fit_recovers_a_known_law_and_predicts_a_held_out_size(tmp_path):
    from danlu.plan.fit import fit_runs, read_run
    from danlu.plan.fit_plots import plot_fit

    law = (2.0, 60.0, 0.3, 400.0, 0.35)
    runs = [read_run(_fake_run(tmp_path, k, law, 4000 // k**2, 0.002, k)) for k in (2, 3, 4, 5, 6)]
    held = [read_run(_fake_run(tmp_path, 7, law, 60, 0.0, 7))]
    report = fit_runs(runs, held, n_boot=50)
    lo, hi = report.intervals["beta"]
    assert lo <= 0.35 <= hi and hi - lo < 0.2
    assert abs(report.holdout[0]["error"]) < 0.01
    assert report.isoflops and all(len(c.n) >= 3 for c in report.isoflops)
    assert plot_fit(report, held, tmp_path / "fit.png").stat().st_size > 10_000


@dataclass
class _Out:
    returncode: int
    stdout: str
    stderr: str


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> _Out:
    from danlu.cli import main

    try:
        code = main(["plan", *args])
    except SystemExit as e:  # argparse rejecting the arguments
        code = int(e.code or 0)
    out = capsys.readouterr()
    return _Out(code, out.out, out.err)


def test_cli_tables_json_and_clear_errors(capsys):
    out = _cli(
        capsys, "memory", "--model", "llama-7b", "--precision", "mixed", "--zero", "3", "--dp", "64", "--json"
    )
    assert out.returncode == 0, out.stderr
    gib = json.loads(out.stdout)["gib"]
    assert gib["weights"] == pytest.approx(6_738_415_616 * 2 / 64 / 2**30)
    out = _cli(capsys, "optimal", "--flops", "5.76e23")
    assert out.returncode == 0 and "chinchilla-approach1" in out.stdout
    out = _cli(capsys, "flops", "--model", "tiny", "--model.n_layer=6", "--vocab", "4096")
    assert out.returncode == 0 and "6 x 256" in out.stdout
    assert math.isfinite(
        float(json.loads(_cli(capsys, "flops", "--params", "7e9", "--json").stdout)["params"])
    )


IMPOSSIBLE = (
    (
        ("layout", "--model", "llama-70b", "--hardware", "a100", "--nodes", "1", "--gpus-per-node", "8"),
        ("--global-batch", "64", "--seq", "4096", "--mfu", "0.4"),
        "llama-70b fits on no layout of 1 x 8 a100",
    ),
    (
        ("flops", "--model", "tiny", "--vocab", "4096"),
        ("--budget", "1e6", "--batch-tokens", "2048"),
        "a budget of 1e+06 FLOPs is below one optimizer step of tiny",
    ),
    (
        ("memory", "--model", "llama-7b"),
        ("--tp", "3"),
        "tensor parallel degree 3 does not divide the 32 attention heads",
    ),
)


@pytest.mark.parametrize("first, rest, message", IMPOSSIBLE, ids=("no-layout", "budget", "tp-heads"))
def test_impossible_requests_are_one_line_errors(capsys, first, rest, message):
    out = _cli(capsys, *first, *rest)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("danlu: error: ") and out.stderr.count("\n") == 1
    assert message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_impossible_request_through_the_danlu_command():
    """The same error from a real `danlu plan` process: exit 2, one line on stderr, no traceback."""
    import subprocess
    import sys

    first, rest, message = IMPOSSIBLE[0]
    cmd = [sys.executable, "-m", "danlu.cli", "plan", *first, *rest]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("checkpointing", [0, 1])
def test_training_peak_matches_the_allocator_peak(checkpointing):
    """The estimated peak against the most tensor bytes alive at once (torch.profiler's allocation
    events) over two fp32 AdamW steps of a small model; benchmarks/plan_memory.py does the same
    through the trainer on the tiny and small presets."""
    from danlu.train.losses import summed_lm_loss
    from danlu.train.memory import apply_activation_checkpointing

    vocab, batch, seq = 1024, 4, 64
    cfg = resolve_model_config(ModelConfig(n_layer=2, n_embd=128, n_head=2, max_seq_len=seq), vocab)
    torch.manual_seed(0)
    model = build_model(cfg)
    apply_activation_checkpointing(model, checkpointing)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randint(0, vocab, (batch, seq))
    held = sum(p.untyped_storage().nbytes() for p in [*model.parameters(), *model.buffers()])
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        for _ in range(2):  # the second step runs with the optimizer state allocated
            summed_lm_loss(model(x), x).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = top = 0
    for _, nbytes in events:
        live += nbytes
        top = max(top, live)
    setup = TrainSetup(micro_batch=batch, seq_len=seq, precision="fp32", checkpointing=checkpointing)
    estimate = training_memory(model_shape(cfg), setup).peak
    assert estimate == pytest.approx(held + top, rel=0.15)


def test_fit_keeps_a_at_zero_when_loss_does_not_fall_with_n(tmp_path):
    """Early in training every size sits on one loss-vs-tokens curve: the constrained fit puts A at 0
    (where the free least-squares solution wants A < 0) instead of failing."""
    from danlu.plan.fit import fit_law

    rng = np.random.default_rng(0)
    n = np.repeat([1e6, 3e6, 1e7, 3e7], 6)
    d = np.tile(np.geomspace(1e3, 1e5, 6), 4)
    y = 2.0 + 50.0 / d**0.4 + 0.02 * np.log(n / 1e6) + rng.normal(0, 1e-3, len(n))  # worse with N
    law = fit_law(n, d, y)
    assert law.A == 0 and law.B > 0 and law.beta == pytest.approx(0.4, abs=0.05)


def test_size_law_recovers_a_known_law_with_intervals_that_cover_it():
    """Fixed-token L(N) = E + A / N^alpha from 5 noisy sizes: the coefficients come back, the 95%
    bootstrap intervals hold the true values, and the held-out size's prediction is within 1%."""
    from danlu.plan.fit import fit_size_runs

    def true(n):
        return 3.0 + 40.0 / n**0.3

    n = np.array([1e5, 2.2e5, 6e5, 9.3e5, 1.8e6])
    y = true(n) + np.random.default_rng(3).normal(0, 0.003, len(n))
    report = fit_size_runs(n, y, n_boot=300)
    assert report.law.alpha == pytest.approx(0.3, abs=0.08)
    for k, value in (("E", 3.0), ("alpha", 0.3)):
        lo, hi = report.intervals[k]
        assert lo <= value <= hi, (k, lo, hi)
    pred, lo, hi = report.predict(3.2e6)
    assert pred == pytest.approx(true(3.2e6), rel=0.01) and lo < pred < hi


def test_size_law_keeps_a_at_zero_and_needs_three_sizes():
    from danlu.errors import DataError
    from danlu.plan.fit import fit_size_law

    n = np.array([1e5, 3e5, 1e6, 3e6])
    law = fit_size_law(n, np.array([4.0, 4.1, 4.2, 4.3]))  # worse with N: no power law falls
    assert law.A == 0
    assert math.isclose(law.E, 4.15)
    with pytest.raises(DataError, match="at least 3 model sizes"):
        fit_size_law(np.array([1e5, 1e5, 3e5]), np.array([4.0, 4.0, 3.9]))


def test_cli_final_fits_equal_token_runs_and_refuses_unequal_ones(capsys, tmp_path):
    law = (2.0, 60.0, 0.3, 400.0, 0.35)
    runs = [str(_fake_run(tmp_path, k, law, 400, 0.001, k)) for k in (2, 3, 4, 5, 6)]
    held = str(_fake_run(tmp_path, 7, law, 400, 0.0, 7))
    png = tmp_path / "final.png"
    out = _cli(capsys, "fit", *runs, "--final", "--holdout", held, "--plot", str(png), "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["law"]["alpha"] == pytest.approx(0.3, abs=0.1)
    assert abs(r["holdout"][0]["error"]) < 0.01
    assert png.stat().st_size > 10_000
    table = _cli(capsys, "fit", *runs, "--final", "--holdout", held)
    assert table.returncode == 0 and "L(N) = E + A / N^alpha" in table.stdout
    short = str(_fake_run(tmp_path / "short", 3, law, 200, 0.0, 3))
    bad = _cli(capsys, "fit", *runs, short, "--final")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "same tokens" in bad.stderr


def test_size_law_over_seeds_resamples_the_seeds_of_each_size():
    """Five sizes, three seeds each around a known law: the law is fitted to the means, the bootstrap
    draws seeds (a resampled mean's spread is the seed spread / sqrt(k), as for fresh seeds), the
    intervals widen with the seed noise, and one seed anywhere falls back to the residual bootstrap."""
    from danlu.plan.fit import _scaled_deviations, fit_size_seeds

    def true(n):
        return 3.0 + 40.0 / n**0.3

    n = np.array([1e5, 2.2e5, 6e5, 9.3e5, 1.8e6])
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 1.0, (len(n), 3))
    losses = [true(v) + 0.004 * e for v, e in zip(n, noise, strict=True)]
    report = fit_size_seeds(n, losses, n_boot=300)
    assert report.resampling == "seeds" and len(report.boots) == 300
    means = np.array([v.mean() for v in losses])
    direct = fit_size_seeds(n, [[m] for m in means], n_boot=50)
    assert direct.resampling == "residuals"
    assert report.law.alpha == pytest.approx(direct.law.alpha)
    assert math.isclose(report.law.E, direct.law.E, rel_tol=1e-9)
    pred, lo, hi = report.predict(3.2e6)
    assert lo <= true(3.2e6) <= hi and pred == pytest.approx(true(3.2e6), rel=0.01)
    elo, ehi = report.error_interval(3.2e6, true(3.2e6) + 0.004 * rng.normal(0, 1.0, 3))
    assert elo < 0 < ehi
    noisier = fit_size_seeds(n, [true(v) + 0.02 * e for v, e in zip(n, noise, strict=True)], n_boot=300)
    width = [r.predict(3.2e6)[2] - r.predict(3.2e6)[1] for r in (report, noisier)]
    assert width[1] > 3 * width[0]
    seeds = np.array([4.0, 4.03, 3.98])
    draws = [rng.choice(_scaled_deviations(seeds), 3).mean() for _ in range(20000)]
    assert np.std(draws) == pytest.approx(np.std(seeds, ddof=1) / math.sqrt(3), rel=0.05)
