"""Schedule, optimizer groups, losses and bits per byte, checked against formulas and references."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch import nn

from danlu.errors import ConfigError
from danlu.train.config import TrainConfig
from danlu.train.losses import bits_per_byte, cross_entropy, nats_and_bytes, token_cross_entropy
from danlu.train.optim import build_optimizer, param_groups
from danlu.train.schedule import lr_at


class Toy(nn.Module):
    """Embedding, a norm gain, biased and unbiased Linears, and an lm_head tied to the embedding."""

    def __init__(self, vocab: int = 11, d: int = 8, tie: bool = True):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norm_weight = nn.Parameter(torch.ones(d))
        self.fc = nn.Linear(d, 2 * d, bias=True)
        self.proj = nn.Linear(2 * d, d, bias=False)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.embed.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.embed(idx) * self.norm_weight
        h = h + self.proj(torch.relu(self.fc(h)))
        return self.lm_head(h)


def test_lr_schedule_matches_formula():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    peak, floor = 1e-3, 1e-4
    assert lr_at(0, cfg) == pytest.approx(peak / 10)
    assert lr_at(4, cfg) == pytest.approx(peak * 5 / 10)
    assert lr_at(9, cfg) == pytest.approx(peak)
    assert lr_at(10, cfg) == pytest.approx(peak)
    assert lr_at(60, cfg) == pytest.approx(floor + (peak - floor) * 0.5)  # half way: cos(pi/2) = 0
    s = 35  # progress 0.25
    assert lr_at(s, cfg) == pytest.approx(floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_at(110, cfg) == pytest.approx(floor)
    assert lr_at(500, cfg) == pytest.approx(floor)  # past the end it stays at the floor
    lrs = [lr_at(i, cfg) for i in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_lr_schedule_edge_cases():
    no_warm = TrainConfig(lr=2.0, warmup_steps=0, max_steps=4, min_lr_ratio=0.0)
    assert [lr_at(i, no_warm) for i in range(5)] == pytest.approx(
        [1 + math.cos(math.pi * i / 4) for i in range(5)]
    )
    all_warm = TrainConfig(lr=1.0, warmup_steps=5, max_steps=5)
    assert lr_at(4, all_warm) == pytest.approx(1.0)
    assert lr_at(7, TrainConfig(lr=1.0, warmup_steps=3, max_steps=2, min_lr_ratio=0.5)) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match=r"train\.lr"):
        lr_at(0, TrainConfig(lr=None))
    assert lr_at(0, TrainConfig(lr=None, warmup_steps=1), peak=0.5) == 0.5


@pytest.mark.parametrize("tie", [True, False])
def test_weight_decay_only_on_linear_matrices(tie: bool):
    model = Toy(tie=tie)
    decay, no_decay = param_groups(model)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    expected_decay = {id(model.fc.weight), id(model.proj.weight)}
    if not tie:
        expected_decay.add(id(model.lm_head.weight))
    assert ids(decay) == expected_decay
    assert ids(no_decay) == {id(p) for p in model.parameters()} - expected_decay
    assert id(model.embed.weight) in ids(no_decay) and id(model.norm_weight) in ids(no_decay)
    assert len(decay) + len(no_decay) == len(list(model.parameters()))  # each tensor once

    opt = build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.1, beta1=0.8, beta2=0.9, eps=1e-7))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert opt.param_groups[0]["betas"] == (0.8, 0.9) and opt.param_groups[0]["eps"] == 1e-7
    assert opt.defaults["fused"] is True


def test_decay_applied_to_matrix_not_to_embedding():
    """With zero gradients AdamW only decays: w <- w * (1 - lr * wd) on decayed tensors."""
    model = Toy(tie=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, TrainConfig(lr=0.1, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(model.fc.weight, before["fc.weight"] * (1 - 0.1 * 0.5))
    torch.testing.assert_close(model.embed.weight, before["embed.weight"])
    torch.testing.assert_close(model.norm_weight, before["norm_weight"])
    torch.testing.assert_close(model.fc.bias, before["fc.bias"])


def test_fused_optimizer_matches_plain_adamw():
    torch.manual_seed(0)
    a, b = Toy(), Toy()
    b.load_state_dict(a.state_dict())
    cfg = TrainConfig(lr=3e-3, weight_decay=0.1)
    fused = build_optimizer(a, cfg)
    decay, no_decay = param_groups(b)
    plain = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        foreach=False,
        fused=False,
    )
    idx = torch.randint(0, 11, (4, 6))
    for _ in range(5):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            cross_entropy(model(idx[:, :-1]), idx[:, 1:]).backward()
            opt.step()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7, msg=n)


def test_losses_match_log_softmax_reference():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    ref = -torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(token_cross_entropy(logits, targets), ref)
    torch.testing.assert_close(cross_entropy(logits, targets), ref.mean())
    assert cross_entropy(logits.bfloat16(), targets).dtype == torch.float32


def test_bits_per_byte_formula_skips_special_tokens():
    losses = torch.tensor([[1.0, 2.0, 3.0], [0.5, 4.0, 1.5]])
    targets = torch.tensor([[0, 1, 2], [2, 3, 1]])
    token_bytes = torch.tensor([0, 3, 1, 2])  # token 0 is special
    nats, nbytes = nats_and_bytes(losses, targets, token_bytes)
    assert nats == pytest.approx(2.0 + 3.0 + 0.5 + 4.0 + 1.5)
    assert nbytes == 3 + 1 + 1 + 2 + 3
    assert bits_per_byte(nats, nbytes) == pytest.approx(11.0 / (math.log(2) * 10))
    assert math.isnan(bits_per_byte(0.0, 0))


def test_mfu_peak_is_the_best_rate_measured_on_this_machine(tmp_path, monkeypatch):
    from danlu.train import metrics

    monkeypatch.setenv("DANLU_CACHE", str(tmp_path))
    rates = iter([40e9, 70e9, 25e9])  # quiet, quieter, then loaded by other jobs
    monkeypatch.setattr(metrics, "_measure_matmul_flops", lambda device, dtype: next(rates))
    seen = []
    for _ in range(3):
        metrics.peak_flops.cache_clear()
        seen.append(metrics.peak_flops("cpu", "fp32", 2))
    metrics.peak_flops.cache_clear()
    assert seen == [40e9, 70e9, 70e9]  # a low measurement never lowers the peak (MFU would pass 100%)
    (stored,) = json.loads((tmp_path / metrics.PEAKS_FILE).read_text()).items()
    assert stored[1] == 70e9 and "cpu fp32" in stored[0] and "x2 threads" in stored[0]
    (tmp_path / metrics.PEAKS_FILE).write_text("not json")  # a damaged file is measured over, not fatal
    monkeypatch.setattr(metrics, "_measure_matmul_flops", lambda device, dtype: 30e9)
    assert metrics.peak_flops("cpu", "fp32", 2) == 30e9
    metrics.peak_flops.cache_clear()
