"""Quantization-aware training and BitNet b1.58: the straight-through estimator, the ternary and
8-bit grids, training through them, and the quantized model computing what was trained."""

from __future__ import annotations

import json

import pytest
import torch

from danlu.errors import ConfigError
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model
from danlu.quant import bitnet
from danlu.quant.apply import quantize_model
from danlu.quant.config import QATConfig, QuantConfig
from danlu.quant.linear import W8A8Linear, use_reference
from danlu.quant.qat import (
    FakeQuantLinear,
    apply_qat,
    deployed_matches,
    fake_quant,
    fake_quant_tokens,
    fake_quant_weight,
)
from danlu.quant.quantizers import QuantSpec, quantize

CFG = ModelConfig(vocab_size=64, n_layer=2, n_embd=64, n_head=4, max_seq_len=32, ffn_hidden=128)


def test_ste_gradient_is_identity_inside_the_range_and_zero_where_clipped():
    x = torch.linspace(-3, 3, 61, requires_grad=True)
    scale, levels = torch.tensor(0.25), 16
    offset = -8 * scale  # codes 0..15: the range [-2, 1.75]
    y = fake_quant(x, scale, offset, levels)
    y.backward(torch.arange(61.0))
    inside = (x >= -2 - 0.125) & (x <= 1.75 + 0.125)
    assert torch.equal(x.grad[inside], torch.arange(61.0)[inside])
    assert torch.all(x.grad[~inside] == 0) and (~inside).sum() > 10
    codes = (y.detach() - offset) / scale
    assert torch.equal(codes, codes.round()) and codes.min() == 0 and codes.max() == 15


@pytest.mark.parametrize(
    "spec", [QuantSpec(4, False, "group", 32), QuantSpec(4, True, "group", 16), QuantSpec(8, True, "channel")]
)
def test_fake_quant_weight_is_rtn_and_passes_gradients_through(spec):
    torch.manual_seed(0)
    w = torch.randn(24, 64, requires_grad=True)
    w_hat = fake_quant_weight(w, spec)
    assert torch.equal(w_hat.detach(), quantize(w.detach(), spec).dequantize())  # the deployed weights
    g = torch.randn(24, 64)
    w_hat.backward(g)
    assert torch.equal(w.grad, g)  # the grid spans the group's values: nothing is clipped


def test_ternary_weights_take_three_values_with_the_absmean_scale():
    torch.manual_seed(0)
    w = torch.randn(32, 48) * 0.02
    w[0, :5] = torch.tensor([1.0, -1.0, 0.0, 1e-6, -0.5])
    codes, gamma = bitnet.ternary_codes(w)
    assert gamma == pytest.approx(w.abs().mean().item(), rel=1e-6)
    assert set(codes.unique().tolist()) == {-1, 0, 1}
    expected = (w / w.abs().mean()).round().clamp(-1, 1)
    assert torch.equal(codes.float(), expected)
    wq = w.clone().requires_grad_(True)
    out = bitnet.ternary(wq)
    assert set(torch.unique(out.detach() / gamma).round().tolist()) == {-1.0, 0.0, 1.0}
    assert torch.allclose(out.detach(), codes.float() * gamma)
    g = torch.randn_like(w)
    out.backward(g)
    assert torch.equal(wq.grad, g)  # the paper's estimator: identity, clipped weights included


def test_activations_take_8_bit_levels_per_token():
    torch.manual_seed(0)
    x = torch.randn(5, 7, 40) * torch.logspace(-2, 2, 7)[None, :, None]  # tokens of very different scales
    for q in (bitnet.int8_tokens(x), fake_quant_tokens(x, 8)):
        a = x.abs().amax(dim=-1, keepdim=True) / 127
        levels = q / a
        assert torch.allclose(levels, levels.round(), atol=1e-3)
        assert levels.round().abs().max() == 127  # each token's largest value lands on the end
        assert (q - x).abs().max(dim=-1).values.le(a.squeeze(-1) / 2 * 1.001).all()
    codes, a = W8A8Linear.quantize_tokens(x.reshape(-1, 40))  # the deployed layer's quantization
    assert torch.equal(bitnet.int8_tokens(x).reshape(-1, 40), codes.float() * a)
    xg = x.clone().requires_grad_(True)
    bitnet.int8_tokens(xg).sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(x))


def test_apply_qat_keeps_the_parameters_and_their_names():
    torch.manual_seed(0)
    model = build_model(CFG)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = {id(p) for p in model.parameters()}
    in_blocks = [
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("blocks.")
    ]
    apply_qat(model, QATConfig(bits=4, group_size=32))
    fq = [n for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    assert fq == in_blocks and len(fq) >= 3 * CFG.n_layer  # attention and MLP Linears; lm_head skipped
    assert {id(p) for p in model.parameters()} == params
    assert model.state_dict().keys() == state.keys()
    with pytest.raises(ConfigError, match="already"):
        apply_qat(model, QATConfig())


def _train(model: torch.nn.Module, steps: int, lr: float) -> list[float]:
    torch.manual_seed(1)
    x = torch.randint(0, CFG.vocab_size, (8, 17))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    "qat",
    [QATConfig(bits=4, group_size=32), QATConfig(bits=4, group_size=32, act_bits=8), QATConfig("bitnet")],
)
def test_a_few_steps_through_fake_quantization_reduce_the_loss(qat):
    torch.manual_seed(0)
    model = apply_qat(build_model(CFG), qat)
    losses = _train(model, 12, 5e-3)
    assert losses[-1] < losses[0] - 0.3, losses


@pytest.mark.parametrize("qat", [QATConfig(bits=4, group_size=32), QATConfig(bits=8), QATConfig("bitnet")])
def test_the_quantized_model_computes_what_was_trained(qat):
    torch.manual_seed(0)
    model = apply_qat(build_model(CFG), qat)
    _train(model, 5, 3e-3)
    model.eval()
    x = torch.randint(0, CFG.vocab_size, (2, 16))
    with torch.no_grad():
        trained = model(x)
        quantize_model(model, qat.deployment())
        use_reference(model)
        deployed = model(x)
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())
    assert torch.allclose(deployed, trained, atol=1e-5), (deployed - trained).abs().max()
    if qat.method == "bitnet":
        assert all(
            set(m.qweight.unique().tolist()) <= {-1, 0, 1}
            for m in model.modules()
            if isinstance(m, W8A8Linear)
        )
        use_reference(model, False)
        with torch.no_grad():  # int8 x ternary products summed in int32 by torch._int_mm
            assert torch.allclose(model(x), trained, atol=1e-4)


def test_a_qat_model_dir_records_its_settings_and_loads_with_them(tmp_path, tiny_packed):
    from danlu.model_dir import load_model, save_model_dir
    from danlu.tokenizer import Tokenizer

    _, tok_dir = tiny_packed
    cfg = ModelConfig(**{**CFG.__dict__, "vocab_size": Tokenizer.load(tok_dir).vocab_size})
    torch.manual_seed(0)
    model = apply_qat(build_model(cfg), QATConfig("bitnet")).eval()
    save_model_dir(tmp_path / "m", model, cfg, tok_dir)
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["qat"]["method"] == "bitnet"
    loaded, _, _ = load_model(tmp_path / "m")
    assert sum(isinstance(m, FakeQuantLinear) for m in loaded.modules()) == sum(
        isinstance(m, FakeQuantLinear) for m in model.modules()
    )
    x = torch.randint(0, cfg.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    meta["qat"] = {"method": "bitnet", "bits": 5}
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    from danlu.errors import CheckpointError

    with pytest.raises(CheckpointError, match="qat entry is invalid"):
        load_model(tmp_path / "m")


def test_quantizing_otherwise_than_trained_is_named():
    qat = QATConfig(bits=4, group_size=64)
    assert deployed_matches(qat, qat.deployment()) is None
    assert "grid" in deployed_matches(qat, QuantConfig(method="rtn", bits=4, group_size=128))
    assert "gptq" in deployed_matches(qat, QuantConfig(method="gptq"))
    assert deployed_matches(QATConfig("bitnet"), QuantConfig(method="bitnet", bits=2)) is None
    from danlu.recipe import load_recipe

    with pytest.raises(ConfigError, match="the way qat trained it"):
        load_recipe(None, ["--qat.bits=4", "--quantize.method=rtn", "--quantize.bits=8"])
    assert load_recipe(None, ["--qat.method=bitnet"]).quantize_config().method == "bitnet"


def _fake_quant_count(model: torch.nn.Module) -> int:
    return sum(isinstance(m, FakeQuantLinear) for m in model.modules())


def test_step_checkpoints_and_the_hf_export_keep_the_qat_settings(tmp_path, tiny_packed):
    from danlu.config import to_dict
    from danlu.interop.hf_llama import HF_QAT_KEY, export_hf, import_hf
    from danlu.model_dir import load_model, save_model_dir
    from danlu.parallel.checkpoint import StateHolder
    from danlu.tokenizer import Tokenizer
    from danlu.train.checkpoint import save_checkpoint

    _, tok_dir = tiny_packed
    cfg = ModelConfig(**{**CFG.__dict__, "vocab_size": Tokenizer.load(tok_dir).vocab_size})
    qat = QATConfig(bits=4, group_size=32)
    torch.manual_seed(0)
    model = apply_qat(build_model(cfg), qat).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 12))
    with torch.no_grad():
        want = model(x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = {"tokenizer_fingerprint": "f", "loader": {}}
    # a live QAT model, and a sharded run's gathered state dict whose recipe has the qat section
    step = save_checkpoint(tmp_path / "run", 3, model, opt, cfg, {"train": {}}, state, tok_dir)
    gathered = save_checkpoint(
        tmp_path / "run", 4, StateHolder(model.state_dict()), opt, cfg, {"qat": to_dict(qat)}, state, tok_dir
    )
    for path in (step, gathered):
        loaded, _, _ = load_model(path)
        assert _fake_quant_count(loaded) == _fake_quant_count(model) > 0
        with torch.no_grad():
            assert torch.equal(loaded(x), want)
    save_model_dir(tmp_path / "m", model, cfg, tok_dir)
    export_hf(tmp_path / "m", tmp_path / "hf")
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config[HF_QAT_KEY]["bits"] == 4 and hf_config[HF_QAT_KEY]["group_size"] == 32
    import_hf(tmp_path / "hf", tmp_path / "back")
    back, _, _ = load_model(tmp_path / "back")
    assert _fake_quant_count(back) == _fake_quant_count(model)
    with torch.no_grad():
        assert torch.allclose(back(x), want, atol=1e-5)
    # a model that did not train with qat gets no key, and a plain checkpoint none either
    plain = build_model(cfg)
    save_model_dir(tmp_path / "p", plain, cfg, tok_dir)
    export_hf(tmp_path / "p", tmp_path / "hfp")
    assert HF_QAT_KEY not in json.loads((tmp_path / "hfp" / "config.json").read_text())
    p = save_checkpoint(tmp_path / "plain", 1, plain, opt, cfg, {"train": {}}, state, tok_dir)
    assert "qat" not in json.loads((p / "config.json").read_text())
