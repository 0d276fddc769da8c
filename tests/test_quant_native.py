"""danlu's native int8/int4 kernels (danlu.quant.native): the C products equal the same activation
rounding done with torch ops, in the AVX2 build and in the plain-loop build, over the tile remainders
(rows not a multiple of 4, outputs not a multiple of 4 or 2), the extreme codes, all-zero activation
blocks and a last group shorter than the others; the Linears route to them and keep one copy of a tied
table; a model dir on the native int8 kernel saves and loads; without the library the same product
runs in torch."""

from __future__ import annotations

import shutil

import pytest
import torch

from danlu.quant import native
from danlu.quant.linear import Int4Linear, Int8Linear, use_reference
from danlu.quant.quantizers import QuantSpec, pack_int4, quantize

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler here")


def _plain_build(tmp_path, monkeypatch) -> object:
    """The plain-loop build (no -mavx2), in its own cache."""
    monkeypatch.setenv("DANLU_CACHE", str(tmp_path))
    compiler = shutil.which("cc") or shutil.which("gcc")
    flags = [f for f in native.flags() if not f.startswith("-m")]
    lib = native.open_library(native.build(compiler, flags))
    assert lib.danlu_simd_level() == 0
    return lib


def _activations(rows: int, k: int) -> torch.Tensor:
    x = torch.randn(rows, k) * torch.rand(rows, 1) * 3
    x[0, :32] = 0.0  # a block whose scale is 0
    return x


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("build", ["default", "plain"])
def test_q8_equals_its_reference(rows, build, tmp_path, monkeypatch):
    lib = _plain_build(tmp_path, monkeypatch) if build == "plain" else None
    torch.manual_seed(rows)
    n, k = 70, 96  # 70 = 17 * 4 + 2 = 35 * 2
    codes = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    codes[0], codes[1] = -128, 127  # the sign trick's edge: |-128| read back as unsigned 128
    scale = torch.rand(n) + 0.01
    x = _activations(rows, k)
    got = native.q8_linear(x, codes, scale, lib)
    want = native.q8_reference(x, codes, scale)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4)
    assert native.q8_linear(x[:0], codes, scale, lib).shape == (0, n)  # no rows: no allocation error


@pytest.mark.parametrize("rows", [1, 3, 6])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("build", ["default", "plain"])
def test_q4_equals_its_reference(rows, group, build, tmp_path, monkeypatch):
    lib = _plain_build(tmp_path, monkeypatch) if build == "plain" else None
    torch.manual_seed(group + rows)
    n, k = 37, 160  # 160 = 1.25 groups of 128: the last group is short
    u = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    u[0] = 15
    groups = -(-k // group)
    scale, offset = torch.rand(n, groups), torch.randn(n, groups)
    x = _activations(rows, k)
    got = native.q4_linear(x, pack_int4(u), scale, offset, group, lib)
    want = native.q4_reference(x, u, scale, offset, group)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4)
    assert native.q4_linear(x[:0], pack_int4(u), scale, offset, group, lib).shape == (0, n)


def test_activation_codes_are_int8_per_block_of_32():
    x = torch.randn(3, 64)
    q, s = native.quantize_activations(x)
    assert s.shape == (3, 2) and q.abs().max() == 127 and torch.equal(q, q.round())
    back = (q.view(3, 2, 32) * s[..., None]).view(3, 64)
    assert ((back - x).abs() <= s.repeat_interleave(32, dim=1) / 2 + 1e-7).all()


def test_int8_native_linear_routes_to_the_kernel_and_falls_back_to_the_same_product(monkeypatch):
    torch.manual_seed(0)
    w, bias = torch.randn(48, 64), torch.randn(48)
    layer = Int8Linear.from_qtensor(quantize(w, QuantSpec(8, True, "channel")), bias, kernel="native")
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        fast = layer(x)
        use_reference(layer)
        ref = layer(x)
    want = native.q8_reference(x.view(-1, 64), layer.qweight, layer.scale).view(2, 5, 48) + bias
    assert torch.allclose(fast, want, atol=1e-4) and torch.allclose(ref, want, atol=1e-4)
    # under autograd: the rounding passes the gradient straight through
    xg = x.clone().requires_grad_()
    use_reference(layer, False)
    layer(xg).sum().backward()
    assert torch.allclose(xg.grad, layer.dequantize().sum(0).expand_as(x), atol=1e-5)
    monkeypatch.setattr(native, "_lib", None)  # a machine without the library
    with torch.no_grad():
        assert torch.allclose(layer(x), want, atol=1e-4)


def test_int4_linear_runs_native_on_its_packed_codes_held_once():
    torch.manual_seed(0)
    layer = Int4Linear.from_qtensor(quantize(torch.randn(40, 96), QuantSpec(4, False, "group", 32)))
    packed = layer.qweight.clone()
    assert layer.use_native
    x = torch.randn(3, 96)
    with torch.no_grad():
        y = layer(x)
    assert not layer.in_kernel_layout and torch.equal(layer.qweight, packed) and not layer.kernel_tensors()
    want = native.q4_reference(x, layer.codes(), layer.scale, layer.offset, 32)
    assert torch.allclose(y, want, atol=1e-4)
    assert not Int4Linear(100, 16, group_size=32).use_native  # 100 columns: not whole blocks


def test_a_native_int8_model_dir_keeps_its_kernel_and_one_table_copy(tmp_path, tiny_packed):
    from danlu.model.config import ModelConfig
    from danlu.model.transformer import build_model
    from danlu.model_dir import load_model
    from danlu.quant.apply import quantize_model
    from danlu.quant.config import QuantConfig
    from danlu.quant.stage import save_quantized
    from danlu.tokenizer import Tokenizer

    _, tok_dir = tiny_packed
    vocab = Tokenizer.load(tok_dir).vocab_size
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=32)
    model = build_model(cfg).eval()
    qcfg = QuantConfig(method="rtn", bits=8, skip=("*norm*",), int8_kernel="native", gate=False)
    quantize_model(model, qcfg)
    table = model.embed.table
    assert table.int8_kernel == "native" and model.lm_head is model.embed
    ids = torch.randint(0, vocab, (2, 12))
    with torch.no_grad():
        before = model(ids)
    assert table.kernel_bytes() == 0 and table._packed is None  # the head read qweight: one copy
    out = save_quantized(tmp_path / "q8", model, {**cfg.__dict__}, tok_dir, {"method": "rtn"})
    loaded = load_model(out)[0].eval()
    kinds = {m.int8_kernel for m in loaded.modules() if type(m) is Int8Linear}
    assert kinds == {"native"}
    with torch.no_grad():
        assert torch.allclose(loaded(ids), before, atol=1e-5)
