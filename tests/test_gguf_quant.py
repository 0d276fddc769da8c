"""GGUF Q4_0/Q4_1 weights kept quantized on import (Int4Linear, group 32, the file's own codes): the
reference path equals the dequantized fp32 import exactly, the bf16 kernel path stays close, and the
quantized model dir round-trips through load_model. A small synthetic Llama GGUF keeps this fast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from danlu.interop.gguf import import_gguf, load_gguf
from danlu.interop.gguf_quant import kernel_weight_error, q4_parts
from danlu.model_dir import load_model
from danlu.quant.embedding import QuantEmbedding
from danlu.quant.linear import Int4Linear, use_reference

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize, quantize  # noqa: E402

D, FFN, VOCAB, HEADS = 64, 128, 300, 2


def _write_gguf(path, kind: str) -> None:
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(64)
    w.add_embedding_length(D)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([chr(0x100 + i) for i in range(VOCAB)])
    w.add_token_merges([])
    w.add_eos_token_id(0)
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((VOCAB, D), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(D, dtype=np.float32))
    kv = D // HEADS
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(D, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(D, dtype=np.float32))
        for name, shape in (("attn_q", (D, D)), ("attn_k", (kv, D)), ("attn_v", (kv, D)),
                            ("attn_output", (D, D)), ("ffn_gate", (FFN, D)), ("ffn_up", (FFN, D)),
                            ("ffn_down", (D, FFN))):  # fmt: skip
            a = (rng.standard_normal(shape) * 0.1 + 0.02).astype(np.float32)
            w.add_tensor(f"blk.{i}.{name}.weight", quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1"])
def test_q4_parts_reproduce_gguf_dequantize(kind):
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((6, 96)) * 0.3 + 0.1).astype(np.float32)
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    raw = quantize(a, qtype)
    codes, d, m = q4_parts(raw, kind, 6, 96)
    assert codes.max() <= 15 and d.shape == m.shape == (6, 3)
    w = codes.astype(np.float32) * np.repeat(d, 32, axis=1) + np.repeat(m, 32, axis=1)
    np.testing.assert_array_equal(w, dequantize(raw, qtype).reshape(6, 96))


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1"])
def test_kept_quantized_import_equals_fp32_import(tmp_path, kind):
    path = tmp_path / "m.gguf"
    _write_gguf(path, kind)
    fp32, _, _ = load_gguf(path)
    q, _, _ = load_gguf(path, keep_quantized=True)
    kept = [n for n, m in q.named_modules() if isinstance(m, Int4Linear)]
    assert len(kept) == 8 and all(q.get_submodule(n).group_size == 32 for n in kept)
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        ref = fp32(ids)
        use_reference(q)
        assert torch.equal(q(ids), ref)  # the file's codes, scales and minimums: the same fp32 weights
        use_reference(q, False)
        kernel = q(ids)
    # the kernel rounds activations, scales and zero points to bf16
    assert (kernel - ref).abs().max() < 0.05 * ref.abs().max()
    assert 0 < kernel_weight_error(q) < 0.01
    out = import_gguf(path, tmp_path / "dir", keep_quantized=True)
    loaded, _, _ = load_model(out)
    with torch.no_grad():
        assert torch.equal(loaded(ids), kernel)


def test_kept_import_with_int8_embedding_round_trips(tmp_path):
    path = tmp_path / "m.gguf"
    _write_gguf(path, "Q4_1")
    fp32, _, _ = load_gguf(path)
    out = import_gguf(path, tmp_path / "dir", keep_quantized=True, embed_bits=8)
    q, _, _ = load_model(out)
    assert isinstance(q.embed, QuantEmbedding) and q.lm_head is q.embed
    ids = torch.randint(0, VOCAB, (1, 10))
    with torch.no_grad():
        ref, got = fp32(ids), q(ids)
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
