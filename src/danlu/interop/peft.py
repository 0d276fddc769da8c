"""LoRA / DoRA adapters to and from PEFT's format (`adapter_config.json` + `adapter_model.safetensors`).

PEFT names each tensor by the Hugging Face module it adapts:
`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` [r, in], `...lora_B.weight`
[out, r] and, for DoRA, `...lora_magnitude_vector` [out]. danlu keeps one (A, B) per part of its fused
Linears (danlu.finetune.lora), so the mapping is one to one: blocks.{i}.attn.qkv's q_proj part is
PEFT's self_attn.q_proj, mlp.gate_up's up_proj part is mlp.up_proj, and so on.

    export_peft(model_dir, out)             an unmerged danlu finetune (base + adapters/<name>/) ->
                                            a PEFT adapter dir for the HF export of its base
    import_peft(adapter_dir, base_dir, out) a PEFT LoRA adapter + a danlu base model dir -> a danlu
                                            model dir (base + adapters/<name>/)

An adapter made for another base model (other widths, fewer layers) is refused with a CheckpointError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from danlu.errors import CheckpointError
from danlu.finetune.lora import (
    ALL_TARGETS,
    FUSED_PARTS,
    AdapterSpec,
    adapter_state,
    apply_lora,
    lora_layers,
    spec_from_json,
    spec_to_json,
    unwrap,
)
from danlu.model_dir import (
    ADAPTER_CONFIG,
    ADAPTER_FILE,
    ADAPTERS_DIR,
    load_model,
    read_metadata,
    save_model_dir,
)

_HF_PARENT = {"attn.qkv": "self_attn", "attn.proj": "self_attn", "mlp.gate_up": "mlp", "mlp.down": "mlp"}
_PREFIX = "base_model.model.model.layers."


def peft_key(danlu_key: str) -> str:
    """blocks.3.attn.qkv.lora_A.q_proj -> base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"""
    _, layer, parent, attr, kind, part = danlu_key.split(".")
    hf_parent = _HF_PARENT[f"{parent}.{attr}"]
    tail = "lora_magnitude_vector" if kind == "magnitude" else f"{kind}.weight"
    return f"{_PREFIX}{layer}.{hf_parent}.{part}.{tail}"


def danlu_key(key: str) -> str:
    """The inverse of peft_key; ValueError for a tensor danlu has no place for."""
    if not key.startswith(_PREFIX):
        raise ValueError(f"unexpected adapter tensor {key!r}")
    layer, hf_parent, part, *tail = key[len(_PREFIX) :].split(".")
    suffix = next((s for s, parts in FUSED_PARTS.items() if part in parts), None)
    kind = {"lora_A.weight": "lora_A", "lora_B.weight": "lora_B", "lora_magnitude_vector": "magnitude"}.get(
        ".".join(tail)
    )
    if suffix is None or kind is None or _HF_PARENT[suffix] != hf_parent:
        raise ValueError(f"unexpected adapter tensor {key!r}")
    return f"blocks.{layer}.{suffix}.{kind}.{part}"


def peft_config(spec: AdapterSpec, base: str | None = None) -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": spec.r,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": list(spec.targets),
        "use_rslora": spec.rslora,
        "use_dora": spec.dora,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "base_model_name_or_path": base,
    }


def spec_from_peft(cfg: dict[str, Any]) -> AdapterSpec:
    """The AdapterSpec of a PEFT LoRA config, refusing what danlu's LoRA does not express."""
    if cfg.get("peft_type") != "LORA":
        raise CheckpointError(f"only LoRA adapters import; this one is {cfg.get('peft_type')!r}")
    targets = cfg.get("target_modules")
    if targets == "all-linear":
        targets = list(ALL_TARGETS)
    if not isinstance(targets, list) or not targets or any(t not in ALL_TARGETS for t in targets):
        raise CheckpointError(f"adapter target_modules {targets!r}: danlu adapts {', '.join(ALL_TARGETS)}")
    unsupported = [
        k for k in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform", "layer_replication")
        if cfg.get(k)
    ]  # fmt: skip
    if unsupported or cfg.get("bias", "none") != "none" or cfg.get("fan_in_fan_out"):
        raise CheckpointError(
            f"adapter settings danlu does not support: {unsupported or 'bias / fan_in_fan_out'}"
        )
    return spec_from_json(
        {
            "r": cfg["r"], "alpha": cfg.get("lora_alpha", 8), "dropout": cfg.get("lora_dropout", 0.0),
            "targets": targets, "rslora": cfg.get("use_rslora", False), "dora": cfg.get("use_dora", False),
        }
    )  # fmt: skip


def export_peft(model_dir: str | Path, out: str | Path, force: bool = False) -> Path:
    """A PEFT adapter dir from a danlu model dir holding base weights + adapters/<name>/."""
    from safetensors.torch import load_file, save_file

    from danlu.io import atomic_dir, check_replaceable_output

    model_dir = Path(model_dir)
    name = read_metadata(model_dir).get("adapter")
    if not name:
        raise CheckpointError(
            f"{model_dir} holds no adapter (a merged or base model); finetune with sft.merge=false to keep one"
        )
    check_replaceable_output(out, force)
    folder = model_dir / ADAPTERS_DIR / name
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    tensors = load_file(str(folder / ADAPTER_FILE))
    with atomic_dir(out) as tmp:
        cfg = peft_config(spec_from_json(config), base=str(model_dir))
        (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        save_file(
            {peft_key(k): v.contiguous() for k, v in tensors.items()}, str(tmp / "adapter_model.safetensors")
        )
    return Path(out)


def read_peft(adapter_dir: str | Path) -> tuple[AdapterSpec, dict[str, torch.Tensor]]:
    """(spec, tensors in danlu's adapter layout) of a PEFT adapter dir."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        raw = load_file(str(adapter_dir / "adapter_model.safetensors"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{adapter_dir} is not a readable PEFT adapter dir ({e})") from None
    except Exception as e:  # safetensors' own error type on a truncated file
        raise CheckpointError(f"{adapter_dir}/adapter_model.safetensors is corrupt ({e})") from None
    spec = spec_from_peft(cfg)
    try:
        return spec, {danlu_key(k): v.float() for k, v in raw.items()}
    except ValueError as e:
        raise CheckpointError(f"{adapter_dir}: {e}") from None


def import_peft(
    adapter_dir: str | Path, base_dir: str | Path, out: str | Path, name: str = "default", force: bool = False
) -> Path:
    """A danlu model dir (base_dir's weights + adapters/<name>/) from a PEFT adapter for base_dir."""
    from danlu.finetune.lora import load_adapter_state
    from danlu.io import check_replaceable_output

    check_replaceable_output(out, force)
    spec, tensors = read_peft(adapter_dir)
    model, _, cfg = load_model(base_dir)
    apply_lora(model, spec, name, init=False)
    expected = {k: tuple(t.shape) for k, t in adapter_state(model, name).items()}
    wrong = [
        f"{peft_key(k)} is {list(t.shape)}, this model needs {list(expected[k])}"
        for k, t in tensors.items()
        if k in expected and tuple(t.shape) != expected[k]
    ]
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if wrong or missing or extra:
        detail = (
            wrong[0]
            if wrong
            else f"missing {peft_key(missing[0])}"
            if missing
            else f"{peft_key(extra[0])} has no layer"
        )
        raise CheckpointError(
            f"the adapter in {adapter_dir} was made for another base model than {base_dir}: {detail}"
        )
    load_adapter_state(model, name, tensors)
    state = adapter_state(model, name)
    assert len(list(lora_layers(model))) > 0
    meta = {k: v for k, v in read_metadata(base_dir).items() if k in ("chat", "source")}
    adapter = (name, spec_to_json(spec), state)
    return save_model_dir(out, unwrap(model, merge=False), cfg, Path(base_dir) / "tokenizer", meta, adapter)
