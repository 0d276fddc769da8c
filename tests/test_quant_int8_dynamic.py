"""Int8Linear's two kernels: `weight_only` (unchanged: torch._weight_int8pack_mm on bf16 activations)
and `dynamic` (fbgemm's W8A8 GEMM on danlu's codes, activations int8 per token). The dynamic kernel
equals the dequantized-weight product of the activation-quantized input, holds the codes once, and the
choice is recorded in quantized dirs and read back."""

from __future__ import annotations

import json

import pytest
import torch

from danlu.errors import CheckpointCorrupt, ConfigError
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model
from danlu.quant import int8_dynamic
from danlu.quant.apply import quantize_model
from danlu.quant.config import QuantConfig
from danlu.quant.linear import Int8Linear, set_int8_kernel, use_reference
from danlu.quant.quantizers import QuantSpec, quantize

pytestmark = pytest.mark.skipif(not int8_dynamic.available(), reason="torch here has no fbgemm")


def _layer(kernel: str, out_f: int = 96, in_f: int = 80, bias: bool = True) -> Int8Linear:
    torch.manual_seed(0)
    q = quantize(torch.randn(out_f, in_f), QuantSpec(8, True, "channel"))
    return Int8Linear.from_qtensor(q, torch.randn(out_f) if bias else None, kernel)


@pytest.mark.parametrize("rows", [1, 7])
def test_dynamic_kernel_equals_the_activation_quantized_reference(rows):
    layer = _layer("dynamic")
    codes, scale, bias = layer.qweight.clone(), layer.scale.clone(), layer.bias.detach().clone()
    x = torch.randn(rows, 3, 80) * torch.logspace(-2, 2, rows)[:, None, None]  # rows of very unequal size
    with torch.no_grad():
        y = layer(x)
        ref = int8_dynamic.reference(x.reshape(-1, 80), codes, scale).view(rows, 3, 96) + bias
        use_reference(layer)
        y_ref_path = layer(x)
    assert y.shape == (rows, 3, 96) and y.dtype == torch.float32
    tol = 1e-5 * float(ref.abs().max())
    assert (y - ref).abs().max() <= tol
    assert (y_ref_path - ref).abs().max() <= tol
    # per token: even the smallest row keeps an int8 grid of its own beside rows 10^4 times larger
    exact = x @ (codes.float() * scale[:, None]).T + bias
    small = (y[0] - exact[0]).norm() / (exact[0] - bias).norm()
    assert small < 0.02


def test_weight_only_kernel_is_unchanged_and_dynamic_holds_codes_once():
    wo, dyn = _layer("weight_only"), _layer("dynamic")
    assert wo.layout()["kernel"] == "weight_only" and dyn.layout()["kernel"] == "dynamic"
    x = torch.randn(2, 80)
    with torch.no_grad():
        got = wo(x)
    want = torch._weight_int8pack_mm(x.bfloat16(), wo.qweight, wo.scale.bfloat16()).float() + wo.bias
    assert torch.equal(got, want)
    codes = dyn.qweight.clone()
    with torch.no_grad():
        first = dyn(x)
    assert dyn._buffers["qweight"] is None and dyn.kernel_bytes() == 96 * 80  # only fbgemm's copy
    assert torch.equal(dyn.codes(), codes) and torch.equal(dyn.dequantize(), wo.dequantize())
    state = dyn.state_dict()  # unpacked for saving, repacked on the next call
    assert torch.equal(state["qweight"], codes) and dyn.kernel_bytes() == 0
    fresh = Int8Linear(80, 96, True, kernel="dynamic")
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh(x), first) and torch.equal(dyn(x), first)
        dyn.scale.mul_(2)  # a changed scale repacks
        assert torch.allclose(dyn(x) - dyn.bias, 2 * (first - dyn.bias), rtol=1e-5, atol=1e-5)
    dyn.set_kernel("weight_only")
    assert torch.equal(dyn.qweight, codes) and dyn.kernel_bytes() == 0
    with pytest.raises(ValueError, match="int8 kernel"):
        dyn.set_kernel("fast")
    # under autograd the activation rounding passes the gradient straight through
    layer = _layer("dynamic")
    xg = x.clone().requires_grad_()
    layer(xg).sum().backward()
    assert torch.allclose(xg.grad, layer.dequantize().sum(0).expand(2, 80), atol=1e-5)


def test_the_kernel_choice_is_configured_saved_and_loaded(tmp_path, tiny_packed):
    from danlu.model_dir import load_model, save_model_dir
    from danlu.quant.stage import save_quantized
    from danlu.tokenizer import Tokenizer

    with pytest.raises(ConfigError, match="int8_kernel"):
        QuantConfig(method="rtn", bits=8, int8_kernel="fast")
    _, tok_dir = tiny_packed
    vocab = Tokenizer.load(tok_dir).vocab_size
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, n_layer=2, n_embd=96, n_head=4, n_kv_head=2, max_seq_len=64)
    base = save_model_dir(tmp_path / "base", build_model(cfg).eval(), cfg, tok_dir)
    model, _, _ = load_model(base)
    quantize_model(model, QuantConfig(method="rtn", bits=8, skip=("*norm*",), int8_kernel="dynamic"))
    linears = [m for m in model.modules() if type(m) is Int8Linear]
    assert {m.int8_kernel for m in linears if m is not model.embed.table} == {"dynamic"}
    assert model.embed.table.int8_kernel == "weight_only"  # the table's head keeps its one copy
    ids = torch.randint(0, vocab, (2, 16))
    with torch.no_grad():
        want = model(ids)
    out = save_quantized(tmp_path / "q8", model, {**cfg.__dict__}, tok_dir, {"method": "rtn"})
    layers = json.loads((out / "quant" / "quant_config.json").read_text())["layers"]
    assert layers["blocks.0.attn.qkv"]["kernel"] == "dynamic"
    assert layers["embed"]["table"]["kernel"] == "weight_only"
    loaded, _, _ = load_model(out)
    with torch.no_grad():
        assert torch.allclose(loaded(ids), want, atol=1e-5)
    assert loaded.blocks[1].mlp.down.int8_kernel == "dynamic"
    assert set_int8_kernel(loaded, "weight_only") == 2 * 4  # the Linears, not the table
    assert loaded.blocks[1].mlp.down.int8_kernel == "weight_only"
    # a dir written before the choice existed runs weight_only; an unknown kernel is refused
    config = out / "quant" / "quant_config.json"
    data = json.loads(config.read_text())
    del data["layers"]["blocks.0.attn.qkv"]["kernel"]
    config.write_text(json.dumps(data))
    assert load_model(out)[0].blocks[0].attn.qkv.int8_kernel == "weight_only"
    data["layers"]["blocks.0.attn.qkv"]["kernel"] = "fast"
    config.write_text(json.dumps(data))
    with pytest.raises(CheckpointCorrupt, match=r"blocks\.0\.attn\.qkv"):
        load_model(out)


def test_danlu_quantize_takes_the_kernel_flag(tmp_path, tiny_packed, word_lines, capsys):
    from danlu.cli import main
    from danlu.model_dir import save_model_dir
    from danlu.tokenizer import Tokenizer

    _, tok_dir = tiny_packed
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=Tokenizer.load(tok_dir).vocab_size, n_layer=1, n_embd=64, n_head=4, max_seq_len=64
    )
    base = save_model_dir(tmp_path / "base", build_model(cfg).eval(), cfg, tok_dir)
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(word_lines(600, seed=1)), encoding="utf-8")
    args = ["quantize", str(base), str(tmp_path / "q8"), "--method", "rtn", "--bits", "8"]
    args += ["--calib", str(calib), "--calib-samples", "2", "--gate-chars", "3000", "--no-gate"]
    args += ["--int8-kernel"]
    assert main([*args, "fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert "quantize.int8_kernel" in err and len(err.splitlines()) == 1
    assert main([*args, "dynamic"]) == 0
    layers = json.loads((tmp_path / "q8" / "quant" / "quant_config.json").read_text())["layers"]
    assert {spec["kernel"] for spec in layers.values()} == {"dynamic"}
    prompt = [
        "generate",
        str(tmp_path / "q8"),
        "--prompt",
        "the",
        "--max-new-tokens",
        "3",
        "--temperature",
        "0",
    ]
    assert main(prompt) == 0
