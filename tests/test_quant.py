"""Quantizers, GPTQ, quantized Linears and quantized model dirs (danlu.quant)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.errors import CheckpointCorrupt
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model
from danlu.quant.apply import quantize_model
from danlu.quant.config import QuantConfig
from danlu.quant.gptq import gptq_quantize
from danlu.quant.linear import Int4Linear, Int8Linear, use_reference
from danlu.quant.quantizers import QuantSpec, expand, grid, pack_int4, quantize, unpack_int4


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_round_to_nearest_errs_at_most_half_a_step(bits, symmetric, granularity):
    torch.manual_seed(bits)
    w = torch.randn(24, 100) * torch.rand(24, 1) * 3  # rows of different ranges; 100 = 3 groups of 32 + 4
    spec = QuantSpec(bits, symmetric, granularity, group_size=32)
    q = quantize(w, spec)
    assert q.scale.shape == (24, spec.groups(100))
    assert int(q.codes.max()) <= 2**bits - 1
    err = (q.dequantize() - w).abs()
    assert bool((err <= expand(q.scale, 100, spec) / 2 + 1e-6).all())
    if symmetric:  # zero is on the grid
        assert torch.allclose(q.offset, -(2 ** (bits - 1)) * q.scale)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 15), min_size=1, max_size=64), st.integers(1, 3))
def test_int4_packing_round_trips(codes, rows):
    c = torch.tensor([codes] * rows, dtype=torch.uint8)
    packed = pack_int4(c)
    assert packed.shape == (rows, (len(codes) + 1) // 2)
    assert torch.equal(unpack_int4(packed, len(codes)), c)


def _obq_reference(W, H, spec, damp):
    """The paper's equations directly: quantize column q, spread its error with H^-1, eliminate q."""
    W = W.clone()
    H = H.clone()
    H.diagonal().add_(damp * H.diagonal().mean())
    Hinv = torch.linalg.inv(H)
    scale, offset = grid(W, spec)
    out = torch.zeros_like(W)
    for q in range(W.shape[1]):
        code = ((W[:, q] - offset[:, 0]) / scale[:, 0]).round().clamp(0, 2**spec.bits - 1)
        out[:, q] = code * scale[:, 0] + offset[:, 0]
        err = (W[:, q] - out[:, q]) / Hinv[q, q]
        W[:, q:] -= err[:, None] * Hinv[q, q:][None, :]
        Hinv = Hinv - Hinv[:, q : q + 1] @ Hinv[q : q + 1, :] / Hinv[q, q]
    return out


def test_gptq_equals_the_papers_equations():
    torch.manual_seed(0)
    X = torch.randn(400, 48, dtype=torch.float64) @ torch.randn(48, 48, dtype=torch.float64)
    H = 2 * X.T @ X / X.shape[0]
    W = torch.randn(16, 48, dtype=torch.float64)
    spec = QuantSpec(4, False, "channel")
    q = gptq_quantize(W, H, spec, block_size=16, damp=0.01)
    # dequantize in float64 (QTensor keeps fp32 scales: compare against the grid in fp32)
    ours = q.codes.double() * q.scale.double() + q.offset.double()
    ref = _obq_reference(W, H, spec, 0.01)
    assert (ours - ref).abs().max().item() < 1e-5


def _tiny():
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=256, n_layer=2, n_embd=128, n_head=4, n_kv_head=2, max_seq_len=128, ffn_hidden=256
    )
    model = build_model(cfg)
    model.eval()
    return model, cfg


def test_gptq_has_lower_output_error_than_rtn():
    model, _ = _tiny()
    ids = torch.randint(0, 256, (8, 64))
    rtn = quantize_model(copy.deepcopy(model), QuantConfig(method="rtn", bits=4, group_size=64), ids)
    for act_order in (False, True):
        cfg = QuantConfig(method="gptq", bits=4, group_size=64, act_order=act_order)
        gptq = quantize_model(copy.deepcopy(model), cfg, ids)
        assert set(gptq) == set(rtn)
        assert sum(r["out_err"] for r in gptq.values()) < 0.7 * sum(r["out_err"] for r in rtn.values())


@pytest.mark.parametrize("rows", [1, 8])
def test_kernels_equal_the_reference_path(rows):
    torch.manual_seed(0)
    w = torch.randn(256, 576)
    x = torch.randn(rows, 576)
    for layer in (
        Int8Linear.from_qtensor(quantize(w, QuantSpec(8, True, "channel"))),
        Int4Linear.from_qtensor(quantize(w, QuantSpec(4, False, "group", 128))),  # 576 = 4.5 groups
        Int4Linear.from_qtensor(quantize(w, QuantSpec(3, True, "group", 64))),
    ):
        if isinstance(layer, Int4Linear):
            layer.use_native = False  # torch's kernel here; danlu's: tests/test_quant_native.py
        with torch.no_grad():
            fast = layer(x)
            use_reference(layer)
            ref = layer(x)
        # torch's kernels take bf16 activations: a relative error of bf16's order
        assert (fast - ref).norm() / ref.norm() < 1e-2


def test_quantized_model_dir_round_trips_and_bad_ones_are_refused(tmp_path, tiny_packed):
    from safetensors.torch import load_file, save_file

    from danlu.model_dir import MODEL_FILE, load_model, save_model_dir
    from danlu.quant.stage import save_quantized
    from danlu.tokenizer import Tokenizer

    _, tok_dir = tiny_packed
    vocab = Tokenizer.load(tok_dir).vocab_size
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=vocab, n_layer=2, n_embd=128, n_head=4, n_kv_head=2, max_seq_len=128, ffn_hidden=256
    )
    model = build_model(cfg).eval()
    base = save_model_dir(tmp_path / "base", model, cfg, tok_dir)
    ids = torch.randint(0, vocab, (2, 32))
    for qcfg in (QuantConfig(method="rtn", bits=8), QuantConfig(method="rtn", bits=4, group_size=64)):
        qmodel, _, _ = load_model(base)
        quantize_model(qmodel, qcfg)
        out = save_quantized(tmp_path / f"q{qcfg.bits}", qmodel, {**cfg.__dict__}, tok_dir, {"method": "rtn"})
        loaded, _, _ = load_model(out)
        assert isinstance(loaded.blocks[0].mlp.down, Int8Linear if qcfg.bits == 8 else Int4Linear)
        with torch.no_grad():
            assert torch.allclose(loaded(ids), qmodel(ids), atol=1e-4)
    file = tmp_path / "q8" / MODEL_FILE
    tensors = load_file(file)
    tensors["blocks.1.attn.qkv.scale"][3] = float("nan")
    save_file(tensors, file)
    with pytest.raises(
        CheckpointCorrupt, match=r"scales of blocks\.1\.attn\.qkv are not finite and positive"
    ):
        load_model(tmp_path / "q8")
    file = tmp_path / "q4" / MODEL_FILE
    tensors = load_file(file)
    tensors["blocks.0.mlp.down.scale"] = tensors["blocks.0.mlp.down.scale"][:, :1].contiguous()
    save_file(tensors, file)
    with pytest.raises(CheckpointCorrupt, match="does not fit"):
        load_model(tmp_path / "q4")
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(CheckpointCorrupt):
        load_model(tmp_path / "q4")


@pytest.mark.parametrize("n_kv_head", [2, 4])  # grouped-query (proj not scaled) and one value head per query
def test_awq_scales_fold_without_changing_the_function(n_kv_head):
    from danlu.quant.apply import _block_inputs
    from danlu.quant.awq import awq_block

    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=256, n_layer=1, n_embd=128, n_head=4, n_kv_head=n_kv_head, max_seq_len=128, ffn_hidden=256
    )
    model = build_model(cfg).eval()
    with torch.no_grad():  # trained norms are not all ones: fold into something non-trivial
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    ids = torch.randint(0, 256, (4, 32))
    with torch.no_grad():
        before = model(ids)
        x, rest = _block_inputs(model, ids)
        local = ["attn.qkv", "attn.proj", "mlp.gate_up", "mlp.down"]
        clipped, alphas = awq_block(model.blocks[0], 0, x, rest, local, QuantSpec(4, False, "group", 32))
        after = model(ids)
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)
    assert set(alphas) == (
        {"attn.qkv", "mlp.gate_up", "mlp.down"} | ({"attn.proj"} if n_kv_head == 4 else set())
    )
    for name, w in clipped.items():  # clipping only ever shrinks a group's range
        assert w.shape == model.blocks[0].get_submodule(name).weight.shape
        assert w.abs().max() <= model.blocks[0].get_submodule(name).weight.abs().max() + 1e-6


def test_awq_has_lower_output_error_than_rtn():
    model = _with_outlier_channels(_tiny()[0])
    ids = torch.randint(0, 256, (8, 64))
    rtn = quantize_model(copy.deepcopy(model), QuantConfig(method="rtn", bits=4, group_size=64), ids)
    awq = quantize_model(copy.deepcopy(model), QuantConfig(method="awq", bits=4, group_size=64), ids)
    assert set(awq) == set(rtn)
    for name in ("blocks.0.attn.qkv", "blocks.1.mlp.gate_up"):
        assert awq[name]["out_err"] < rtn[name]["out_err"]
    assert sum(r["out_err"] for r in awq.values()) < 0.8 * sum(r["out_err"] for r in rtn.values())


def _with_outlier_channels(model):
    with torch.no_grad():  # a few input channels with large activations, as in trained LLMs
        for block in model.blocks:
            block.attn_norm.weight[:4] = 20.0
            block.mlp_norm.weight[:4] = 20.0
    return model


@pytest.mark.parametrize("rows", [1, 24])
def test_w8a8_kernel_equals_its_reference_and_fp32(rows):
    from danlu.quant.linear import W8A8Linear

    torch.manual_seed(0)
    w, x = torch.randn(96, 200), torch.randn(rows, 200)
    layer = W8A8Linear.from_qtensor(quantize(w, QuantSpec(8, True, "channel")))
    with torch.no_grad():
        fast = layer(x)
        use_reference(layer)
        ref = layer(x)
    assert torch.allclose(fast, ref, rtol=1e-5, atol=1e-4)
    assert (fast - x @ w.T).norm() / (x @ w.T).norm() < 2e-2


def test_smoothquant_keeps_the_function_and_helps_w8a8_with_outliers():
    from danlu.quant.apply import _block_inputs
    from danlu.quant.linear import W8A8Linear
    from danlu.quant.smoothquant import smooth_block

    model, _ = _tiny()
    model = _with_outlier_channels(model)
    ids = torch.randint(0, 256, (8, 64))
    with torch.no_grad():
        ref = model(ids)
        smoothed = copy.deepcopy(model)
        x, rest = _block_inputs(smoothed, ids)
        smooth_block(
            smoothed.blocks[0], 0, x, rest, ["attn.qkv", "attn.proj", "mlp.gate_up", "mlp.down"], 0.5
        )
        assert torch.allclose(smoothed(ids), ref, atol=1e-4, rtol=1e-4)
        errs = {}
        for alpha in (0.0, 0.5):  # alpha 0: plain W8A8 without smoothing
            q = copy.deepcopy(model)
            quantize_model(q, QuantConfig(method="smoothquant", bits=8, smooth_alpha=alpha), ids)
            assert isinstance(q.blocks[0].mlp.down, W8A8Linear)
            errs[alpha] = (q(ids) - ref).square().mean().item()
    assert errs[0.5] < 0.5 * errs[0.0]
