"""Quantized model directories: a model dir whose listed Linears are quantized modules.

    config.json              the model config and metadata, plus "quant": {method, bits, group_size}
    model.safetensors        every tensor of the quantized model (codes, scales, the fp32 rest)
    quant/quant_config.json  {"format": 1, "method": ..., "layers": {module name: its layout}}
    quant/report.json        per-layer errors and the accuracy gate (read by people)
    tokenizer/

`apply_layout` puts empty quantized modules in place of the listed Linears of a model built on the
meta device, so that danlu.model_dir.load_model fills them from model.safetensors with its strict,
shape-checked load; `check_loaded` then refuses scales that are not finite and positive. This module
imports only torch, the quantized layers and the errors: danlu.model_dir reads quant/ through it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.errors import CheckpointCorrupt
from danlu.quant.linear import Int4Linear, Int8Linear, QuantLinear, W8A8Linear

QUANT_DIR, QUANT_CONFIG, REPORT = "quant", "quant_config.json", "report.json"
FORMAT = 1


def read_layout(path: Path) -> dict[str, Any]:
    file = path / QUANT_DIR / QUANT_CONFIG
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointCorrupt(f"{file} is missing or not JSON ({e}); re-run danlu quantize") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("layers"), dict):
        raise CheckpointCorrupt(
            f"{file} is not a danlu quant layout (format {FORMAT}); re-run danlu quantize"
        )
    return data


def _empty_module(linear: nn.Linear, spec: dict[str, Any]) -> nn.Module:
    kind = spec.get("kind")
    bias = linear.bias is not None
    if kind == "int8":  # a dir written before the kernel choice existed ran weight_only
        return Int8Linear(
            linear.in_features, linear.out_features, bias, "meta", str(spec.get("kernel", "weight_only"))
        )
    if kind == "w8a8":
        return W8A8Linear(linear.in_features, linear.out_features, bias, device="meta")
    if kind == "int4":
        return Int4Linear(
            linear.in_features, linear.out_features, int(spec["group_size"]), int(spec["bits"]), bias, "meta"
        )
    if kind == "nf4":
        from danlu.finetune.nf4 import NF4Linear

        return NF4Linear(linear, int(spec["block"]), int(spec["absmax_block"]))
    raise CheckpointCorrupt(f"unknown quantized layer kind {kind!r}")


def _apply_embedding(model: nn.Module, path: Path, name: str, spec: dict[str, Any]) -> None:
    """An empty QuantEmbedding at `name` (the embedding), and at lm_head too when the layout ties them."""
    from danlu.quant.embedding import QuantEmbedding

    embed = getattr(model, name, None)
    table = spec.get("table")
    if name != "embed" or not isinstance(embed, nn.Embedding) or not isinstance(table, dict):
        raise CheckpointCorrupt(
            f"{path}: quant layout names {name} as a quantized embedding, which it is not"
        )
    if (table.get("in"), table.get("out")) != (embed.embedding_dim, embed.num_embeddings):
        raise CheckpointCorrupt(f"{path}: quant layout of {name} does not fit the model config")
    tied = getattr(getattr(model, "lm_head", None), "weight", None) is embed.weight
    if bool(spec.get("tied")) != tied:
        raise CheckpointCorrupt(f"{path}: quant layout of {name} disagrees with the config's tie_embeddings")
    try:
        module = QuantEmbedding(
            _empty_module(nn.Linear(embed.embedding_dim, embed.num_embeddings, False, "meta"), table)
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointCorrupt(f"{path}: bad quant layout for {name} ({e})") from None
    model.embed = module
    if tied:
        model.lm_head = module


def apply_layout(model: nn.Module, path: str | Path) -> int:
    """Replace the Linears listed in path/quant/quant_config.json by empty quantized modules (and a
    quantized embedding table, listed with kind "embedding", by an empty QuantEmbedding)."""
    path = Path(path)
    layers = read_layout(path)["layers"]
    for name, spec in layers.items():
        if isinstance(spec, dict) and spec.get("kind") == "embedding":
            _apply_embedding(model, path, name, spec)
            continue
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            linear = None
        if not isinstance(linear, nn.Linear):
            raise CheckpointCorrupt(f"{path}: quant layout names {name}, which is not a Linear of this model")
        if (spec.get("in"), spec.get("out")) != (linear.in_features, linear.out_features):
            raise CheckpointCorrupt(f"{path}: quant layout of {name} does not fit the model config")
        try:
            module = _empty_module(linear, spec)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointCorrupt(f"{path}: bad quant layout for {name} ({e})") from None
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, module)
    return len(layers)


def check_loaded(model: nn.Module, path: str | Path) -> None:
    """Refuse loaded quantized layers whose scales are not finite and positive."""
    for name, m in model.named_modules():
        scales = []
        if isinstance(m, QuantLinear):
            scales = [m.scale]
        elif type(m).__name__ == "NF4Linear":
            scales = [m.absmax_scale]
        for s in scales:
            if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
                raise CheckpointCorrupt(
                    f"{path}: the scales of {name} are not finite and positive; the file is damaged, re-run danlu quantize"
                )


def layer_layout(module: nn.Module) -> dict[str, Any]:
    from danlu.quant.embedding import QuantEmbedding

    if isinstance(module, QuantEmbedding):
        return {"kind": "embedding", "table": module.table.layout(), "tied": False}
    if isinstance(module, QuantLinear):
        return module.layout()
    # finetune.nf4.NF4Linear
    return {
        "kind": "nf4", "in": module.in_features, "out": module.out_features,
        "block": module.block, "absmax_block": module.absmax_block,
    }  # fmt: skip


def model_layout(model: nn.Module, method: str) -> dict[str, Any]:
    """quant_config.json of a quantized model."""
    from danlu.finetune.nf4 import NF4Linear
    from danlu.quant.embedding import QuantEmbedding

    kinds = QuantLinear | NF4Linear | QuantEmbedding
    layers = {}
    for name, m in model.named_modules():  # a module at two names (a tied table) is listed once
        if isinstance(m, kinds) and not (
            name.endswith(".table") and isinstance(model.get_submodule(name[:-6]), QuantEmbedding)
        ):
            layers[name] = layer_layout(m)
            if isinstance(m, QuantEmbedding):
                layers[name]["tied"] = getattr(model, "lm_head", None) is m
    return {"format": FORMAT, "method": method, "layers": layers}
