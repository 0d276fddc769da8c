"""Lion, Adafactor, 8-bit AdamW and Muon: against their published update rules, transformers'
Adafactor and torch's AdamW; exact state_dict resume; a tiny model trains with each."""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from danlu.errors import ConfigError
from danlu.model import build_model
from danlu.model.config import ModelConfig
from danlu.train.config import TrainConfig
from danlu.train.optimizers import (
    OPTIMIZERS,
    Adafactor,
    AdamW8bit,
    Lion,
    Muon,
    build_named_optimizer,
    muon_param_groups,
    newton_schulz,
    state_bytes,
)
from danlu.train.optimizers.quant8 import dequantize, dynamic_map, quantize

# ---------------------------------------------------------------- helpers


def _problem(seed: int = 0) -> tuple[list[torch.nn.Parameter], Callable]:
    """A 2-D, a 1-D and a 3-D parameter and a smooth loss over them (targets fixed by seed)."""
    g = torch.Generator().manual_seed(seed)
    w2 = torch.nn.Parameter(torch.randn(6, 5, generator=g))
    w1 = torch.nn.Parameter(torch.randn(7, generator=g))
    w3 = torch.nn.Parameter(torch.randn(2, 3, 4, generator=g))
    x = torch.randn(5, 8, generator=g)
    y = torch.randn(6, 8, generator=g)
    c = torch.randn(7, generator=g)
    t3 = torch.randn(2, 3, 4, generator=g)

    def loss_fn(ps: list[torch.Tensor]) -> torch.Tensor:
        a, b, d = ps
        return (
            ((a @ x - y) ** 2).mean() + ((b - c) ** 2 * torch.arange(1.0, 8.0)).sum() + ((d - t3) ** 4).mean()
        )

    return [w2, w1, w3], loss_fn


def _run(opt: torch.optim.Optimizer, params: list[torch.Tensor], loss_fn, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(params)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # what the checkpoint loader does


TINY = ModelConfig(n_layer=1, n_embd=32, n_head=2, vocab_size=64, max_seq_len=16)


def _tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 64, (8, 17), generator=g)
    return idx[:, :-1], idx[:, 1:]


def _tiny_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x).reshape(-1, 64), y.reshape(-1))


def _train_tiny(name: str, lr: float, steps: int = 30, **options) -> list[float]:
    torch.manual_seed(0)
    model = build_model(TINY)
    opt = build_named_optimizer(model, name, TrainConfig(lr=lr, weight_decay=0.01), **options)
    batch, losses = _tiny_batch(), []
    for _ in range(steps):
        opt.zero_grad()
        loss = _tiny_loss(model, batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------- Lion


def test_lion_matches_hand_computed_rule():
    p0 = np.array([0.5, -1.0, 2.0, 0.0])
    grads = [
        np.array([0.3, -0.2, 0.0, 1e-3]),
        np.array([-0.1, -0.4, 0.5, -2.0]),
        np.array([0.2, 0.1, -0.3, 0.7]),
    ]
    lr, wd, b1, b2 = 0.1, 0.5, 0.9, 0.99
    p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float32))
    opt = Lion([p], lr=lr, weight_decay=wd)
    assert opt.defaults["betas"] == (0.9, 0.99)
    ref, m = p0.copy(), np.zeros(4)
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
        ref = ref - lr * (np.sign(b1 * m + (1 - b1) * g) + wd * ref)
        m = b2 * m + (1 - b2) * g
        np.testing.assert_allclose(p.detach().numpy(), ref, atol=1e-6)
        np.testing.assert_allclose(opt.state[p]["exp_avg"].numpy(), m, atol=1e-7)


def test_lion_moves_every_coordinate_by_exactly_lr():
    p = torch.nn.Parameter(torch.randn(50))
    p0 = p.detach().clone()
    opt = Lion([p], lr=0.01)
    p.grad = torch.randn(50) * torch.logspace(-6, 2, 50)  # magnitudes do not matter, signs do
    opt.step()
    torch.testing.assert_close((p0 - p).detach(), 0.01 * p.grad.sign())


# ---------------------------------------------------------------- Adafactor


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # the paper's defaults: relative step, parameter scale, no first moment
        {"warmup_init": True},
        {"beta1": 0.9, "weight_decay": 0.1},
        {"lr": 1e-2, "relative_step": False, "scale_parameter": False},
        {"lr": 3e-2, "relative_step": False, "scale_parameter": True, "beta1": 0.8, "clip_threshold": 0.5},
    ],
)
def test_adafactor_matches_transformers(kwargs):
    from transformers.optimization import Adafactor as HFAdafactor

    ours, loss_fn = _problem()
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    hf_kwargs = dict(kwargs)
    hf_kwargs.setdefault("relative_step", "lr" not in kwargs)
    la = _run(Adafactor(ours, **kwargs), ours, loss_fn, 20)
    lb = _run(HFAdafactor(theirs, **hf_kwargs), theirs, loss_fn, 20)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert la[-1] < la[0]  # and it optimizes
    np.testing.assert_allclose(la, lb, rtol=1e-6)


def test_adafactor_factored_state_is_sublinear():
    p = torch.nn.Parameter(torch.randn(40, 30))
    v = torch.nn.Parameter(torch.randn(30))
    opt = Adafactor([p, v])
    (p.sum() ** 2 + v.pow(2).sum()).backward()
    opt.step()
    assert opt.state[p]["exp_avg_sq_row"].shape == (40,)
    assert opt.state[p]["exp_avg_sq_col"].shape == (30,)
    assert "exp_avg_sq" not in opt.state[p]
    assert opt.state[v]["exp_avg_sq"].shape == (30,)


def test_adafactor_rejects_contradictory_settings():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="needs lr"):
        Adafactor(p, relative_step=False)
    with pytest.raises(ValueError, match="warmup_init"):
        Adafactor(p, lr=1e-3, warmup_init=True)


# ---------------------------------------------------------------- 8-bit quantization


def test_dynamic_map_structure():
    for signed in (True, False):
        table = dynamic_map(signed)
        assert table.numel() == 256 and torch.all(table[1:] > table[:-1])
        assert table[-1] == 1.0 and (table == 0).sum() == 1
    signed, unsigned = dynamic_map(True), dynamic_map(False)
    assert signed[-2] == pytest.approx(0.1 + 0.9 * 63.5 / 64)  # e=0: 6 fraction bits, last midpoint
    assert signed[128] == pytest.approx(1e-6 * 0.55)  # e=6: no fraction bits left, one midpoint
    assert unsigned[-2] == pytest.approx(0.1 + 0.9 * 127.5 / 128)  # e=0: 7 fraction bits
    assert unsigned[1] == pytest.approx(1e-6 * (0.1 + 0.9 * 0.25))  # e=6: 1 fraction bit, first midpoint
    assert signed[0] == -1.0 and signed[1] == pytest.approx(-(0.1 + 0.9 * 63.5 / 64))
    pos, neg = signed[signed > 0], -signed[signed < 0].flip(0)
    assert pos.numel() == 128 and neg.numel() == 127
    torch.testing.assert_close(neg, pos[1:])  # symmetric but for the smallest magnitude


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n, block", [(5000, 2048), (300, 256), (256, 256)])
def test_quantize_picks_nearest_code(signed, n, block):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g) * torch.logspace(-4, 1, n)[torch.randperm(n, generator=g)]
    x = x if signed else x.abs()
    q = quantize(x, signed, block)
    assert q.codes.dtype == torch.uint8 and q.codes.numel() == n
    assert q.absmax.numel() == math.ceil(n / block)
    # brute force: the nearest of the 256 map values, per element, in float64
    table = dynamic_map(signed).double().numpy()
    xn = x.double().numpy()
    absmax = np.repeat(q.absmax.double().numpy(), block)[:n]
    want = table[np.abs(xn[:, None] / absmax[:, None] - table[None, :]).argmin(axis=1)] * absmax
    got = dequantize(q).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    # error bound: half the widest gap of the map, times the block's absmax
    half_gap = float((table[1:] - table[:-1]).max() / 2)
    assert np.all(np.abs(got - xn) <= half_gap * absmax * (1 + 1e-6))
    # each block's absmax element is stored exactly (1.0 is in the map)
    blocks = np.arange(n) // block
    for b in range(q.absmax.numel()):
        i = np.flatnonzero(blocks == b)[np.abs(xn[blocks == b]).argmax()]
        assert got[i] == pytest.approx(xn[i], rel=1e-6)


def test_quantize_zero_block_and_relative_precision():
    x = torch.zeros(4096)
    x[2048:] = torch.logspace(-6, 0, 2048)  # six decades inside one block
    got = dequantize(quantize(x, signed=False))
    assert torch.all(got[:2048] == 0)
    rel = ((got[2048:] - x[2048:]).abs() / x[2048:]).max()
    assert rel < 0.5  # a linear 8-bit map would round everything below 2e-3 to zero (rel = 1)
    lin = torch.round(x[2048:] * 255) / 255
    assert ((lin - x[2048:]).abs() / x[2048:]).max() == 1.0


def test_quantize_keep_nonzero_never_rounds_a_positive_value_to_zero():
    x = torch.tensor([1.0, 1e-9, 0.0, 1e-7, 2e-7])
    plain, kept = quantize(x, signed=False), quantize(x, signed=False, keep_nonzero=True)
    smallest = float(dynamic_map(False)[1])  # 3.25e-7
    torch.testing.assert_close(dequantize(plain), torch.tensor([1.0, 0.0, 0.0, 0.0, smallest]))
    torch.testing.assert_close(dequantize(kept), torch.tensor([1.0, smallest, 0.0, smallest, smallest]))


# ---------------------------------------------------------------- 8-bit AdamW


def test_adamw8bit_state_is_four_times_smaller():
    p = torch.nn.Parameter(torch.randn(256, 256))
    small = torch.nn.Parameter(torch.randn(64))
    ours, ref = AdamW8bit([p, small]), torch.optim.AdamW([p, small])
    (p.square().sum() + small.sum()).backward()
    ours.step()
    ref.step()
    assert ours.state[p]["exp_avg_codes"].dtype == torch.uint8
    assert "exp_avg" in ours.state[small]  # below min_8bit_size: fp32
    expected = 2 * 256 * 256 + 2 * 4 * (256 * 256 // 2048) + 2 * 4 * 64
    assert state_bytes(ours) == expected
    assert state_bytes(ref) / state_bytes(ours) > 3.9


def test_adamw8bit_trajectory_stays_close_to_adamw():
    g = torch.Generator().manual_seed(1)
    x, w_true = torch.randn(256, 64, generator=g), torch.randn(64, 32, generator=g)
    y = x @ w_true + 0.1 * torch.randn(256, 32, generator=g)
    ours = [torch.nn.Parameter(torch.zeros(64, 32)), torch.nn.Parameter(torch.zeros(32))]
    ref = [torch.nn.Parameter(torch.zeros(64, 32)), torch.nn.Parameter(torch.zeros(32))]
    kw = {"lr": 1e-2, "betas": (0.9, 0.95), "weight_decay": 0.1}
    opt = AdamW8bit(ours, block_size=256, min_8bit_size=0, **kw)
    opt_ref = torch.optim.AdamW(ref, **kw)
    loss_fn = lambda ps: ((x @ ps[0] + ps[1] - y) ** 2).mean()  # noqa: E731
    _run(opt, ours, loss_fn, 1)
    _run(opt_ref, ref, loss_fn, 1)
    for a, b in zip(ours, ref, strict=True):  # fresh moments: m/sqrt(v) = sign(g), no state error yet
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    la = _run(opt, ours, loss_fn, 150)
    lb = _run(opt_ref, ref, loss_fn, 150)
    assert la[-1] < 0.1 * la[0]
    # measured: ~5% relative distance (the dynamic map keeps ~1-7% relative precision per value)
    assert (ours[0] - ref[0]).norm() < 0.1 * ref[0].norm()
    assert la[-1] == pytest.approx(lb[-1], rel=0.05)


def test_adamw8bit_survives_gradients_spanning_many_decades():
    # (w - t)^4: as coordinates converge their gradients fall ~1e-9 below the block's largest
    params, loss_fn = _problem(1)
    opt = AdamW8bit(params, lr=1e-2, block_size=256, min_8bit_size=0)
    losses = _run(opt, params, loss_fn, 100)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.5 * losses[0]
    assert max(p.abs().max().item() for p in params) < 10  # no lr * m / eps explosion


def test_adamw8bit_tiny_model_reaches_adamw_loss():
    ref = _train_tiny("adamw", 3e-3, steps=40)
    ours = _train_tiny("adamw8bit", 3e-3, steps=40, min_8bit_size=0, block_size=256)
    assert ours[-1] < 0.6 * ours[0]
    assert ours[-1] == pytest.approx(ref[-1], rel=0.1)


# ---------------------------------------------------------------- Muon


def _newton_schulz_numpy(g: np.ndarray, steps: int = 5) -> np.ndarray:
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / np.linalg.norm(x)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if g.shape[0] > g.shape[1] else x


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48), (128, 96), (10, 200)])
def test_newton_schulz_singular_values(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    out = newton_schulz(g)
    assert out.shape == g.shape
    np.testing.assert_allclose(out.numpy(), _newton_schulz_numpy(g.double().numpy()), atol=1e-4)
    # the iteration acts on each singular value s of G/||G||_F alone: s <- a s + b s^3 + c s^5
    s = torch.linalg.svdvals(g.double()) / torch.linalg.norm(g.double())
    for _ in range(5):
        s = 3.4445 * s - 4.7750 * s**3 + 2.0315 * s**5
    sv = torch.linalg.svdvals(out.double())
    torch.testing.assert_close(sv, s.sort(descending=True).values, atol=1e-4, rtol=0)
    # the known band: five steps map every s in [1e-2, 1] into [0.68, 1.21] (sup 1.2024)
    assert sv.min() > 0.68 and sv.max() < 1.21, (sv.min(), sv.max())
    # and the singular vectors are G's: O = U f(S) V^T with f(S) > 0
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    assert torch.all(torch.diag(u.T @ out @ vh.T) > 0.68)


def test_muon_first_step_is_scaled_newton_schulz():
    w = torch.nn.Parameter(torch.randn(12, 4))  # tall: scale sqrt(12/4)
    opt = Muon([{"params": [w], "use_muon": True}], lr=0.05, weight_decay=0.1)
    w0 = w.detach().clone()
    w.grad = torch.randn(12, 4)
    opt.step()
    # nesterov on a fresh buffer gives (1 + mu) g, and Newton-Schulz ignores scale
    want = w0 * (1 - 0.05 * 0.1) - 0.05 * math.sqrt(3.0) * newton_schulz(w.grad)
    torch.testing.assert_close(w.detach(), want)


def test_muon_adamw_groups_match_torch_adamw():
    ours, loss_fn = _problem(2)
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = Muon(
        [{"params": ours, "use_muon": False, "weight_decay": 0.1}], adamw_lr=1e-2, adamw_betas=(0.9, 0.95)
    )
    opt_ref = torch.optim.AdamW(ref, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    _run(opt, ours, loss_fn, 10)
    _run(opt_ref, ref, loss_fn, 10)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_muon_decreases_loss_on_a_toy_problem():
    g = torch.Generator().manual_seed(5)
    w = torch.nn.Parameter(torch.randn(16, 8, generator=g) * 0.1)
    x, target = torch.randn(8, 64, generator=g), 0.3 * torch.randn(16, 8, generator=g)
    y = target @ x
    opt = Muon([{"params": [w], "use_muon": True}], lr=0.05)
    losses = _run(opt, [w], lambda ps: ((ps[0] @ x - y) ** 2).mean(), 30)
    assert losses[1] < losses[0] and losses[-1] < 0.2 * losses[0]


def test_muon_rejects_bad_groups():
    with pytest.raises(ValueError, match="2-D"):
        Muon([{"params": [torch.nn.Parameter(torch.zeros(3))], "use_muon": True}])
    with pytest.raises(ValueError, match="use_muon"):
        Muon([{"params": [torch.nn.Parameter(torch.zeros(3, 3))]}])


def test_muon_param_groups_split_hidden_from_embeddings_and_head():
    model = build_model(
        ModelConfig(n_layer=1, n_embd=32, n_head=2, vocab_size=64, max_seq_len=16, tie_embeddings=False)
    )
    groups = muon_param_groups(model, lr=1e-3, muon_lr=0.02, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in groups if g["use_muon"] for p in g["params"]]
    adam = [names[id(p)] for g in groups if not g["use_muon"] for p in g["params"]]
    assert sorted(muon + adam) == sorted(names.values())  # each parameter exactly once
    assert "lm_head.weight" in adam and "embed.weight" in adam
    assert muon and all(model.get_parameter(n).dim() == 2 for n in muon)
    assert groups[0]["lr_mult"] == pytest.approx(20.0)


# ---------------------------------------------------------------- all of them


def _make(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if name == "lion":
        return Lion(params, lr=1e-3, weight_decay=0.1)
    if name == "adafactor":
        return Adafactor(params, beta1=0.9, weight_decay=0.01)
    if name == "adamw8bit":
        return AdamW8bit(params, lr=1e-2, block_size=16, min_8bit_size=20)
    return Muon(
        [{"params": params[:1], "use_muon": True}, {"params": params[1:], "use_muon": False}], lr=0.02
    )


@pytest.mark.parametrize("name", ["lion", "adafactor", "adamw8bit", "muon"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_resumes_exactly(name, dtype):
    params, loss_fn = _problem(4)
    params = [torch.nn.Parameter(p.detach().to(dtype)) for p in params]
    f = lambda ps: loss_fn([p.float() for p in ps])  # noqa: E731
    opt = _make(name, params)
    _run(opt, params, f, 5)
    saved_params = [p.detach().clone() for p in params]
    saved = _roundtrip(opt.state_dict())

    _run(opt, params, f, 5)  # the uninterrupted run
    fresh = [torch.nn.Parameter(p.clone()) for p in saved_params]
    opt2 = _make(name, fresh)
    opt2.load_state_dict(saved)
    for p, q in zip(params, fresh, strict=False):
        for key, value in opt.state[p].items():
            if torch.is_tensor(value):  # dtypes survive torch's cast-to-param-dtype in load_state_dict
                assert opt2.state[q][key].dtype == value.dtype, key
    _run(opt2, fresh, f, 5)
    for a, b in zip(params, fresh, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "name, lr, options",
    [
        ("adamw", 3e-3, {}),
        ("lion", 3e-3, {}),  # short run: Lion at AdamW's lr
        ("adafactor", 1e-2, {}),
        ("adamw8bit", 3e-3, {}),
        ("muon", 3e-3, {"muon_lr": 0.02}),
    ],
)
def test_tiny_model_trains(name, lr, options):
    assert name in OPTIMIZERS
    losses = _train_tiny(name, lr, **options)
    assert math.isfinite(losses[-1]) and losses[-1] < 0.75 * losses[0], losses[:: len(losses) // 5]


def test_builder_errors_are_config_errors():
    model = build_model(TINY)
    with pytest.raises(ConfigError, match="unknown optimizer 'sgd'"):
        build_named_optimizer(model, "sgd", TrainConfig(lr=1e-3))
    with pytest.raises(ConfigError, match="Lion"):
        build_named_optimizer(model, "lion", TrainConfig(lr=1e-3), betas=(1.5, 0.9))
    with pytest.raises(ConfigError, match=r"train\.lr"):
        build_named_optimizer(model, "lion", TrainConfig())
