"""A GGUF model's quantized weights kept quantized: Q4_1 and Q4_0 Linears become danlu `Int4Linear`s
of group 32 holding the file's own codes, scales and minimums, instead of fp32 copies.

- Q4_1 block (32 weights): fp16 d, fp16 m, 16 bytes of nibbles; w = d * q + m, q in 0..15 (weight j in
  the low nibble of byte j, weight j + 16 in its high nibble). Int4Linear's w = u * scale + offset with
  u = q, scale = d, offset = m reproduces the dequantized fp32 weights exactly on its reference path.
- Q4_0 block: fp16 d, 16 bytes of nibbles; w = d * (q - 8): scale = d, offset = -8 d (exact; a
  negative d flips the codes, see q4_parts).
- Other types (F32, F16, Q8_0, K-quants) stay dequantized to fp32: Q8_0 has one scale per 32 weights,
  which no int8 kernel of torch takes (its int8 kernel has one scale per output row).
- `embed_bits=8` re-quantizes a dequantized embedding table (the tied LM head too) to int8 per row
  (`danlu.quant.embedding`); that is a second rounding, not the file's weights.

The CPU kernel (`torch._weight_int4pack_mm_for_cpu`) takes bf16 scales and zero points and bf16
activations, so the kernel path rounds d and m + 8 d to bf16: close to, not equal to, the file's fp16
values (`kernel_weight_error` measures it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from danlu.errors import CheckpointError
from danlu.interop.gguf_layout import LAYER_NAMES, unpermute
from danlu.model.config import ModelConfig
from danlu.quant.linear import Int4Linear
from danlu.quant.quantizers import QTensor, QuantSpec

BLOCK = 32
TINY_SCALE = 2.0**-24  # the scale of a constant block (its codes are all 0)
KEPT_TYPES = ("Q4_0", "Q4_1")
# danlu's fused Linears of a block and the HF Llama Linears they concatenate (in row order)
FUSED = {
    "attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn.proj": ("self_attn.o_proj",),
    "mlp.gate_up": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down": ("mlp.down_proj",),
}


def q4_parts(data: np.ndarray, kind: str, rows: int, cols: int) -> tuple[np.ndarray, ...]:
    """(codes uint8 [rows, cols], scale fp32 [rows, cols/32], offset fp32 [rows, cols/32]) of a Q4_0 or
    Q4_1 tensor's raw blocks."""
    if cols % BLOCK:
        raise CheckpointError(f"a {kind} tensor of {cols} columns is not whole blocks of {BLOCK}")
    head = 4 if kind == "Q4_1" else 2
    blocks = np.asarray(data, dtype=np.uint8).reshape(rows, cols // BLOCK, head + BLOCK // 2)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    mins = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)  # Q4_1 only
    m = mins if kind == "Q4_1" else -8 * d
    qs = blocks[..., head:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(rows, cols)
    # Int4Linear wants positive scales. A negative d (Q4_0 keeps the sign of the largest weight):
    # d q + m = (-d)(15 - q) + (m + 15 d), exact in fp32 for fp16 d. A zero d (a constant block): every
    # weight is m, so codes 0 and any positive scale give it exactly.
    neg, zero = np.repeat(d < 0, BLOCK, axis=1), np.repeat(d == 0, BLOCK, axis=1)
    codes = np.where(neg, 15 - codes, codes)
    codes = np.where(zero, 0, codes).astype(np.uint8)
    m = np.where(d < 0, m + 15 * d, m)
    d = np.where(d < 0, -d, np.where(d == 0, TINY_SCALE, d)).astype(np.float32)
    return codes, d, m.astype(np.float32)


def kept_linears(reader: Any, cfg: ModelConfig) -> dict[str, QTensor]:
    """danlu Linear name -> its Q4_0/Q4_1 weights as a grouped QTensor (g32, asymmetric), for every
    block Linear whose GGUF tensors are all of a kept type; q and k rows un-permuted as the fp32 path
    does."""
    hf_of = {v: k for k, v in LAYER_NAMES.items()}  # HF suffix -> GGUF kind
    parts: dict[str, tuple[np.ndarray, ...]] = {}
    for t in reader.tensors:
        bits = t.name.split(".")
        if len(bits) != 4 or bits[0] != "blk" or t.tensor_type.name not in KEPT_TYPES:
            continue
        cols, rows = (int(d) for d in t.shape)
        p = q4_parts(t.data, t.tensor_type.name, rows, cols)
        if bits[2] == "attn_q":
            p = tuple(unpermute(a, cfg.n_head) for a in p)
        elif bits[2] == "attn_k":
            p = tuple(unpermute(a, cfg.n_kv_head or cfg.n_head) for a in p)
        parts[f"{bits[1]}.{bits[2]}"] = p
    spec = QuantSpec(4, False, "group", BLOCK)
    out: dict[str, QTensor] = {}
    for layer in range(cfg.n_layer):
        for fused, hf_names in FUSED.items():
            keys = [f"{layer}.{hf_of[h]}" for h in hf_names]
            if not all(k in parts for k in keys):
                continue
            codes, d, m = (np.concatenate([parts[k][i] for k in keys]) for i in range(3))
            out[f"blocks.{layer}.{fused}"] = QTensor(
                torch.from_numpy(np.ascontiguousarray(codes)), torch.from_numpy(d), torch.from_numpy(m), spec
            )
    return out


@torch.no_grad()
def keep_quantized(model: nn.Module, reader: Any, cfg: ModelConfig, embed_bits: int | None = None) -> int:
    """Replace model's Linears that the GGUF stores as Q4_0/Q4_1 by Int4Linear(group 32) holding those
    codes; with embed_bits=8 also quantize the embedding (and tied head) per row. Checks that each kept
    layer's reference weights equal the fp32 weights loaded from the same file. Returns layers kept."""
    kept = kept_linears(reader, cfg)
    for name, q in kept.items():
        lin = model.get_submodule(name)
        module = Int4Linear.from_qtensor(q, lin.bias)
        if not torch.equal(module.dequantize(), lin.weight):
            raise CheckpointError(f"GGUF {name}: kept codes do not reproduce the dequantized weights")
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, module)
    if embed_bits is not None:
        from danlu.quant.embedding import quantize_embedding, table_spec

        quantize_embedding(model, table_spec(embed_bits))
    return len(kept)


def kernel_weight_error(model: nn.Module) -> float:
    """Max |w_kernel - w_reference| over the Int4Linears: what bf16 scales and zero points change."""
    worst = 0.0
    for m in model.modules():
        if isinstance(m, Int4Linear):
            s = m.scale.to(torch.bfloat16).float()
            z = (m.offset + 8 * m.scale).to(torch.bfloat16).float()
            w = (m.codes().float() - 8) * s.repeat_interleave(m.group_size, 1)[:, : m.in_features]
            w += z.repeat_interleave(m.group_size, 1)[:, : m.in_features]
            worst = max(worst, float((w - m.dequantize()).abs().max()))
    return worst
