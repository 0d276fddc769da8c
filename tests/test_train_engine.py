"""The pretraining engine: schedules, accumulation, z-loss, fp16 loss scaling, spike guard with
rollback, activation checkpointing, checkpoint fallback and early stopping."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pytest
import torch

from danlu.data.loader import TrainLoader
from danlu.errors import ConfigError
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model
from danlu.recipe import RecipeConfig
from danlu.train import pretrain as loop
from danlu.train.checkpoint import list_checkpoints
from danlu.train.config import TrainConfig
from danlu.train.losses import IGNORE_INDEX, summed_lm_loss
from danlu.train.memory import apply_activation_checkpointing
from danlu.train.metrics import read_metrics
from danlu.train.schedule import grad_accum_at, lr_at, scaled_lr, wsd_decay_start
from danlu.train.stability import LossScaler, SpikeDetector
from danlu.train.trainer import RunInfo, Trainer

TINY = ModelConfig(n_layer=2, n_embd=32, n_head=2, vocab_size=64, max_seq_len=16)


# --- schedules --------------------------------------------------------------------------------------


def test_decay_schedules_match_their_formulas():
    peak, floor = 1.0, 0.1
    base = dict(lr=peak, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    lin = TrainConfig(schedule="linear", **base)
    assert lr_at(60, lin) == pytest.approx(peak - (peak - floor) * 0.5)
    assert lr_at(110, lin) == pytest.approx(floor)
    assert lr_at(50, TrainConfig(schedule="constant", **base)) == peak
    inv = TrainConfig(schedule="inv_sqrt", **base)
    assert lr_at(39, inv) == pytest.approx(peak * math.sqrt(10 / 40))
    assert lr_at(10**6, inv) == pytest.approx(floor)  # never below the floor
    wsd = TrainConfig(schedule="wsd", decay_fraction=0.2, **base)
    assert wsd_decay_start(wsd) == 88
    assert [lr_at(s, wsd) for s in (10, 50, 88)] == [peak, peak, peak]  # the stable phase
    assert lr_at(99, wsd) == pytest.approx(peak - (peak - floor) * 11 / 22)
    assert lr_at(110, wsd) == pytest.approx(floor)


def test_warmup_shapes():
    cfg = dict(lr=2.0, warmup_steps=4, max_steps=100)
    assert [lr_at(s, TrainConfig(**cfg)) for s in range(4)] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    cos = TrainConfig(warmup_shape="cosine", **cfg)
    assert [lr_at(s, cos) for s in range(4)] == pytest.approx(
        [2.0 * 0.5 * (1 - math.cos(math.pi * (s + 1) / 4)) for s in range(4)]
    )
    exp = TrainConfig(warmup_shape="exponential", **cfg)
    lrs = [lr_at(s, exp) for s in range(4)]
    assert lrs[-1] == pytest.approx(2.0) and lrs[0] == pytest.approx(2.0 * 1e-3**0.75)
    assert all(b / a == pytest.approx(lrs[1] / lrs[0]) for a, b in itertools.pairwise(lrs))  # geometric


def test_batch_ramp_and_lr_scaling_rules():
    cfg = TrainConfig(grad_accum=8, batch_ramp_steps=4)
    assert [grad_accum_at(s, cfg) for s in range(6)] == [1, 2, 4, 6, 8, 8]
    assert grad_accum_at(0, TrainConfig(grad_accum=8)) == 8
    assert scaled_lr(1e-3, 256, 1024, "linear") == pytest.approx(4e-3)
    assert scaled_lr(1e-3, 256, 1024, "sqrt") == pytest.approx(2e-3)
    with pytest.raises(ConfigError, match="unknown LR scaling rule"):
        scaled_lr(1e-3, 1, 2, "cubic")
    with pytest.raises(ConfigError, match=r"train\.schedule"):
        TrainConfig(schedule="step")


# --- losses and accumulation --------------------------------------------------------------------


def test_z_loss_adds_squared_log_partition():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    targets[0, 0] = IGNORE_INDEX
    keep = targets != IGNORE_INDEX
    ce = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
    z = torch.logsumexp(logits[keep], -1).pow(2).sum()
    assert summed_lm_loss(logits, targets, 1e-2).item() == pytest.approx((ce + 1e-2 * z).item(), rel=1e-6)
    assert summed_lm_loss(logits, targets).item() == pytest.approx(ce.item(), rel=1e-6)


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def build_optimizer_for(cfg):
    from danlu.train.optim import build_optimizer

    return lambda m: build_optimizer(m, cfg, cfg.lr)


def test_accumulation_equals_one_big_batch_even_with_unequal_token_counts(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY, torch.device("cpu"))
    x = torch.randint(0, 64, (6, 12))
    y = torch.randint(0, 64, (6, 12))
    y[0, :7] = IGNORE_INDEX  # micro-batches end up with different numbers of target tokens
    y[3, 2:] = IGNORE_INDEX
    run = RunInfo(tmp_path, TINY, tmp_path, "fp", {})
    cfg = TrainConfig(lr=1e-3)
    trainer = Trainer(
        model, build_optimizer_for(cfg), None, loop.lm_loss(), cfg, run, torch.device("cpu"), "fp32"
    )
    big, _ = trainer.forward_backward([(x, y)])
    g_big = _grads(model)
    model.zero_grad()
    micro = [(x[:1], y[:1]), (x[1:4], y[1:4]), (x[4:], y[4:])]
    acc, _ = trainer.forward_backward(micro)
    assert acc.item() == pytest.approx(big.item(), abs=1e-6)
    for a, b in zip(_grads(model), g_big, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


# --- fp16 loss scaling ----------------------------------------------------------------------------


def test_loss_scaler_skips_overflow_and_lowers_then_grows_the_scale():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = LossScaler(init_scale=1024.0, growth_interval=2)
    p.grad = torch.tensor([1.0, float("inf"), 2.0])
    assert scaler.unscale_([p]) is True
    scaler.update(True)
    assert scaler.scale == 512.0  # lowered; the caller skips opt.step(), so p is unchanged
    p.grad = torch.tensor([512.0, 1024.0, 0.0])
    assert scaler.unscale_([p]) is False and p.grad.tolist() == [1.0, 2.0, 0.0]
    opt.step()
    assert p.tolist() == pytest.approx([0.9, 0.8, 1.0])
    scaler.update(False)
    scaler.update(False)
    assert scaler.scale == 1024.0  # grown back after growth_interval clean steps


def test_fp16_training_with_a_forced_overflow(tiny_packed, tmp_path, monkeypatch):
    tokens, tok = tiny_packed
    cfg = _recipe(max_steps=6, dtype="fp16", spike_guard=False)
    calls = {"n": 0}
    orig = Trainer.forward_backward

    def overflow_at_step_3(self, micro, *args, **kwargs):
        loss = orig(self, micro, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            next(iter(self.model.parameters())).grad[0, 0] = float("inf")
        return loss

    monkeypatch.setattr(Trainer, "forward_backward", overflow_at_step_3)
    loop.run_pretrain(cfg, tokens, tok, tmp_path / "run")
    recs = read_metrics(tmp_path / "run" / "metrics.jsonl")
    events = [r for r in recs if r.get("event") == "fp16_overflow"]
    assert len(events) == 1 and events[0]["step"] == 3 and events[0]["loss_scale"] == 2.0**15
    scales = {r["step"]: r["loss_scale"] for r in recs if "loss_scale" in r and "loss" in r}
    assert scales[2] == 2.0**16 and scales[3] == 2.0**15
    assert all(math.isfinite(r["loss"]) for r in recs if "loss" in r)


# --- spike guard ---------------------------------------------------------------------------------------


def test_spike_detector_thresholds():
    d = SpikeDetector(k=6, k_severe=12, min_history=10)
    gen = torch.Generator().manual_seed(0)
    for v in (3.0 + 0.05 * torch.randn(300, generator=gen)).tolist():
        assert d.check(v) == "ok"
    sigma, mean = d.sigma, d.mean
    assert 0.03 < sigma < 0.08  # the noise level of the sequence (0.05)
    assert d.check(mean + 7 * sigma) == "spike"
    assert d.check(mean + 13 * sigma) == "severe"
    assert d.check(float("nan")) == "severe"
    assert (d.mean, d.count) == (mean, 300)  # spikes leave the statistics alone


def _recipe(**train) -> RecipeConfig:
    base = dict(
        seq_len=32, batch_size=4, max_steps=12, lr=3e-3, warmup_steps=2, eval_every=4, eval_batches=2,
        ckpt_every=4, keep_last=2, log_every=1, device="cpu", seed=7,
    )  # fmt: skip
    return RecipeConfig(
        model=ModelConfig(n_layer=2, n_embd=32, n_head=2, max_seq_len=32),
        train=TrainConfig(**{**base, **train}),
    )


def test_corrupted_batch_is_rolled_back_and_training_recovers(tiny_packed, tmp_path, monkeypatch):
    tokens, tok = tiny_packed
    cfg = _recipe(max_steps=40, ckpt_every=10, eval_every=10, eval_batches=0)
    clean = loop.run_pretrain(cfg, tokens, tok, tmp_path / "clean")

    orig = TrainLoader.next_batch
    calls = {"n": 0}

    def corrupt_the_25th(self):
        x, y = orig(self)
        calls["n"] += 1
        if calls["n"] == 25:  # every target <|pad|>, never seen in training: a loss far above the trend
            y = torch.full_like(y, pad_id)
        return x, y

    from danlu.tokenizer import Tokenizer

    pad_id = Tokenizer.load(tok).pad_id
    monkeypatch.setattr(TrainLoader, "next_batch", corrupt_the_25th)
    hit = loop.run_pretrain(cfg, tokens, tok, tmp_path / "hit")
    guard = ("spike", "rollback", "severe_spike_skipped")
    events = [r for r in read_metrics(tmp_path / "hit" / "metrics.jsonl") if r.get("event") in guard]
    assert [(e["event"], e["step"], e["to_step"]) for e in events] == [("rollback", 25, 20)]
    before = next(r["loss"] for r in read_metrics(tmp_path / "hit" / "metrics.jsonl") if r["step"] == 24)
    assert events[0]["loss"] > 1.5 * before
    # back on the clean curve: the final validation loss within 2% of the run without the bad batch
    assert hit["val_loss"] == pytest.approx(clean["val_loss"], rel=0.02)
    steps = [
        r["step"]
        for r in read_metrics(tmp_path / "hit" / "metrics.jsonl")
        if "loss" in r and "event" not in r
    ]
    assert steps == list(range(1, 41))  # the rolled-back steps were logged once, after the rollback


# --- memory --------------------------------------------------------------------------------------------


def _saved_bytes_and_grads(every: int) -> tuple[int, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(TINY, n_layer=4), torch.device("cpu"))
    apply_activation_checkpointing(model, every)
    x = torch.randint(0, 64, (4, 16))
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).logsumexp(-1).mean()
    loss.backward()
    return sum(saved), _grads(model)


def test_activation_checkpointing_saves_less_with_identical_gradients():
    full, g_full = _saved_bytes_and_grads(0)
    ckpt, g_ckpt = _saved_bytes_and_grads(1)
    half, _ = _saved_bytes_and_grads(2)
    assert ckpt < half < full
    for a, b in zip(g_ckpt, g_full, strict=True):
        assert torch.equal(a, b)


# --- checkpoints and stopping --------------------------------------------------------------------------


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tiny_packed, tmp_path, caplog):
    tokens, tok = tiny_packed
    ref = loop.run_pretrain(_recipe(max_steps=16, schedule="constant"), tokens, tok, tmp_path / "ref")
    run = tmp_path / "run"
    loop.run_pretrain(_recipe(max_steps=12, schedule="constant"), tokens, tok, run)
    assert [s for s, _ in list_checkpoints(run)] == [8, 12]
    weights = run / "checkpoints" / "step-000012" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    out = loop.run_pretrain(_recipe(max_steps=16, schedule="constant"), tokens, tok, run)
    assert "fails its checksums" in caplog.text and (run / "checkpoints" / "corrupt-step-000012").is_dir()
    assert out["val_loss"] == ref["val_loss"]  # steps 9-12 replayed exactly from step 8
    curve = [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert curve == [
        (r["step"], r["loss"]) for r in read_metrics(tmp_path / "ref" / "metrics.jsonl") if "loss" in r
    ]


def test_early_stopping_and_best_checkpoint(tiny_packed, tmp_path, monkeypatch):
    tokens, tok = tiny_packed
    vals = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: {"val_loss": next(vals), "val_bpb": 1.0})
    out = loop.run_pretrain(
        _recipe(max_steps=40, eval_every=2, ckpt_every=2, keep_last=1, early_stop_patience=2),
        tokens,
        tok,
        tmp_path / "r",
    )
    assert out["steps"] == 8  # evals at 2, 4 (best), 6, 8: two without improvement
    assert [s for s, _ in list_checkpoints(tmp_path / "r")] == [4, 8]  # the newest and the best
    best = json.loads((tmp_path / "r" / "checkpoints" / "best.json").read_text())
    assert best == {"step": 4, "val_loss": 2.0}
    assert any(r.get("event") == "early_stop" for r in read_metrics(tmp_path / "r" / "metrics.jsonl"))


def test_monitoring_records_groups_and_plot_verb(tiny_packed, tmp_path, capsys, monkeypatch):
    from danlu.cli import main

    tokens, tok = tiny_packed
    monkeypatch.setattr("danlu.train.monitor.ClipRate.__init__.__defaults__", (2,))  # a 2-step window
    loop.run_pretrain(
        _recipe(max_steps=4, log_every=2, grad_clip=1e-3, warmup_steps=0), tokens, tok, tmp_path / "r"
    )
    recs = [r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in recs] == [2, 4]
    for r in recs:
        assert set(r["grad_norm_by_group"]) == {"embed", "attn", "mlp", "norm"}  # tied: no separate head
        total = math.sqrt(sum(v**2 for v in r["grad_norm_by_group"].values()))
        assert total == pytest.approx(r["grad_norm"], rel=1e-4)
        assert all(0 < v < 1 for v in r["update_ratio_by_group"].values())
        assert r["clip_rate"] == 1.0  # every step clipped at max norm 1e-3
    alerts = [r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if r.get("event") == "alert"]
    assert len(alerts) == 1 and "clip rate 100%" in alerts[0]["message"]  # reported once, when it starts
    assert main(["plot", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "training.png").stat().st_size > 10_000
    assert main(["plot", str(tmp_path / "nothing")]) == 2


def test_group_clipping_bounds_each_group():
    from danlu.train.monitor import clip_grad_norm_by_group, grad_norms_by_group

    torch.manual_seed(0)
    model = build_model(TINY, torch.device("cpu"))
    model(torch.randint(0, 64, (2, 8))).pow(2).mean().backward()
    before = grad_norms_by_group(model)
    assert clip_grad_norm_by_group(model, 1e-3) == pytest.approx(before)
    after = grad_norms_by_group(model)
    assert all(v == pytest.approx(min(before[g], 1e-3), rel=1e-3) for g, v in after.items())  # eps 1e-6


def test_tensorboard_and_wandb_sinks_receive_the_metrics(tiny_packed, tmp_path):
    pytest.importorskip("tensorboard", reason="the [monitor] extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tokens, tok = tiny_packed
    loop.run_pretrain(
        _recipe(max_steps=4, log_every=2, sinks=["tensorboard", "wandb"]), tokens, tok, tmp_path / "r"
    )
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    jsonl = [r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "loss" in r]
    scalars = acc.Scalars("loss")
    assert [e.step for e in scalars] == [r["step"] for r in jsonl]
    assert [e.value for e in scalars] == pytest.approx([r["loss"] for r in jsonl])
    assert "grad_norm_by_group/attn" in acc.Tags()["scalars"]
    offline = list((tmp_path / "r" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0


def test_layer_lr_multipliers_reach_the_optimizer_groups():
    from danlu.train.config import LayerLRMults
    from danlu.train.optim import build_optimizer

    model = build_model(TINY, torch.device("cpu"))
    cfg = TrainConfig(lr=1e-3, lr_mults=LayerLRMults(embed=0.1, mlp=2.0))
    opt = build_optimizer(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        kinds = {
            names[id(p)].split(".")[0] if "blocks" not in names[id(p)] else names[id(p)].split(".")[2]
            for p in g["params"]
        }
        expect = 0.1 if kinds == {"embed"} else 2.0 if kinds == {"mlp"} else 1.0
        assert g["lr"] == pytest.approx(1e-3 * expect) and g["lr_mult"] == expect
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    with pytest.raises(ConfigError, match=r"train\.lr_mults\.attn"):
        LayerLRMults(attn=0)


@pytest.mark.parametrize("optimizer", ["lion", "adafactor", "adamw8bit", "muon"])
def test_each_optimizer_trains_and_resumes_exactly(tiny_packed, tmp_path, optimizer):
    tokens, tok = tiny_packed
    lr = {"lion": 3e-4, "adafactor": 3e-3, "adamw8bit": 3e-3, "muon": 3e-3}[optimizer]
    cfg = _recipe(max_steps=8, optimizer=optimizer, lr=lr, schedule="constant", ckpt_every=4)
    straight = loop.run_pretrain(cfg, tokens, tok, tmp_path / "straight")
    loop.run_pretrain(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=4)),
        tokens,
        tok,
        tmp_path / "two",
    )
    resumed = loop.run_pretrain(cfg, tokens, tok, tmp_path / "two")
    losses = [r["loss"] for r in read_metrics(tmp_path / "straight" / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < losses[0]
    assert resumed["val_loss"] == straight["val_loss"]


def test_nan_gradients_with_a_finite_loss_skip_the_step(tiny_packed, tmp_path, monkeypatch):
    tokens, tok = tiny_packed
    calls = {"n": 0}
    orig = Trainer.forward_backward

    def nan_grad_at_step_2(self, micro, *args, **kwargs):
        loss = orig(self, micro, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            next(iter(self.model.parameters())).grad[0, 0] = float("nan")
        return loss

    monkeypatch.setattr(Trainer, "forward_backward", nan_grad_at_step_2)
    out = loop.run_pretrain(_recipe(max_steps=4), tokens, tok, tmp_path / "r")
    events = [
        r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if r.get("event") == "severe_spike_skipped"
    ]
    assert [e["step"] for e in events] == [2]
    assert math.isfinite(out["val_loss"])
    recs = [r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "loss" in r and "event" not in r]
    assert [r["step"] for r in recs] == [1, 3, 4] and recs[-1]["mem_gib"] > 0  # step 2 was skipped


def test_alerts_are_edge_triggered():
    from danlu.train.monitor import Alerts, alerts

    a = Alerts()
    assert a.update(alerts(1.0, 0.0)) == []
    assert a.update(alerts(150.0, 0.2)) == [
        ("alert", "gradient norm 150.0 above 100"),
        ("alert", "clip rate 20% over the last 100 steps, above 5%"),
    ]
    assert a.update(alerts(150.0, 0.3)) == []  # still on: not repeated
    assert a.update(alerts(1.0, 0.3)) == [("alert_cleared", "grad_norm")]
