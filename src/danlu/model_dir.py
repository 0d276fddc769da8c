"""The model directory: the one artifact every stage after pretraining reads and writes.

    config.json         the ModelConfig fields at top level, plus metadata (e.g. "chat": true, "recipe")
    model.safetensors   the weights (a tied matrix stored once)
    tokenizer/          the tokenizer the model was trained with

A step checkpoint (danlu.train.checkpoint) is a model directory plus optimizer and trainer state, so
everything here reads a checkpoint too. Reserved beside the base for what later stages add:
`adapters/<name>/` (finetuned adapters over these weights: adapter_config.json and
adapter_model.safetensors; config.json's "adapter" names the one load_model applies) and `quant/`
(quantized weights: config.json's "quant" marks the dir, quant/quant_config.json lists the Linears that
are quantized modules, whose codes and scales model.safetensors holds; danlu.quant.store). A model
trained through fake quantization records its settings as config.json's "qat" (danlu.quant.qat), and
loads with the same fake quantization applied.

Loading follows build -> transform -> materialize: the model is built on the meta device, a caller's
transform (an adapter, a parallel layout) may reshape it there, and only then are its tensors made on
the target device and filled from the file, so no memory or time goes into an initialisation that is
thrown away.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model
from torch import nn

from danlu.config import from_dict, to_dict
from danlu.errors import CheckpointCorrupt, CheckpointError, ConfigError, DanluError
from danlu.io import atomic_dir, read_json_object
from danlu.model.config import ModelConfig

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
ADAPTERS_DIR = "adapters"
ADAPTER_CONFIG, ADAPTER_FILE = "adapter_config.json", "adapter_model.safetensors"
MODEL_DIR_FILES = (CONFIG_FILE, MODEL_FILE, TOKENIZER_DIR)


def is_model_dir(path: str | Path) -> bool:
    """Whether path holds the files of a danlu model directory (or step checkpoint)."""
    return all((Path(path) / name).exists() for name in MODEL_DIR_FILES)


def write_model_files(dest: Path, model: nn.Module, config: dict[str, Any], tokenizer_dir: Path) -> None:
    """Weights, config.json and a copy of the tokenizer into the (temporary) directory dest."""
    st_save_model(model, str(dest / MODEL_FILE), metadata={"format": "pt"})
    (dest / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    shutil.copytree(tokenizer_dir, dest / TOKENIZER_DIR)


def save_model_dir(
    path: str | Path,
    model: nn.Module,
    model_cfg: ModelConfig,
    tokenizer_dir: str | Path,
    extra: dict[str, Any] | None = None,
    adapter: tuple[str, dict[str, Any], dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write a model directory atomically: config.json (the model config plus `extra` metadata such
    as "chat": true), model.safetensors, tokenizer/. `adapter` (name, config, tensors) adds
    adapters/<name>/ beside the base weights and makes it the one load_model applies."""
    from danlu.quant.qat import qat_metadata

    with atomic_dir(path) as tmp:
        meta = to_dict(model_cfg) | qat_metadata(model) | (extra or {})
        meta |= {"adapter": adapter[0]} if adapter else {}
        write_model_files(tmp, model, meta, Path(tokenizer_dir))
        if adapter is not None:
            from safetensors.torch import save_file

            name, config, tensors = adapter
            (tmp / ADAPTERS_DIR / name).mkdir(parents=True)
            (tmp / ADAPTERS_DIR / name / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
            save_file(tensors, str(tmp / ADAPTERS_DIR / name / ADAPTER_FILE), metadata={"format": "pt"})
    return Path(path)


def load_adapter(model: nn.Module, path: Path, name: str, device: str | torch.device) -> None:
    """Apply adapters/<name>/ of a model dir to its loaded base model (danlu.finetune.lora)."""
    from safetensors.torch import load_file

    from danlu.finetune.lora import attach_adapter

    folder = path / ADAPTERS_DIR / name
    require_files(folder, (ADAPTER_CONFIG, ADAPTER_FILE))
    try:
        tensors = load_file(str(folder / ADAPTER_FILE), device=str(device))
        attach_adapter(model, name, read_json(folder / ADAPTER_CONFIG), tensors)
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{folder} does not fit the model in {path} ({str(e).splitlines()[0]})"
        ) from None


def require_files(path: Path, names: tuple[str, ...], empty_is_corrupt: bool = False) -> None:
    """CheckpointCorrupt if some of `names` are missing; a folder with none of them is the wrong
    folder (CheckpointError), unless it is named as a checkpoint (`empty_is_corrupt`)."""
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; pass a model dir or a checkpoint dir")
    missing = [n for n in names if not (path / n).exists()]
    if (
        len(missing) == len(names) and not empty_is_corrupt
    ):  # nothing of a model here: the wrong folder, not a damaged one
        raise CheckpointError(
            f"{path} holds no model (no {', '.join(names)}); pass a model dir, a checkpoint dir or "
            "a run dir whose model/ is written"
        )
    if missing:
        raise CheckpointCorrupt(
            f"{path} is incomplete or corrupt: missing {', '.join(missing)}; delete it (training then "
            "resumes from the previous checkpoint) or point to another checkpoint"
        )


def read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, CheckpointCorrupt, "delete its directory")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """config.json of a model dir: the model config's fields and any metadata beside them."""
    return read_json(Path(path) / CONFIG_FILE)


def read_model_config(path: str | Path) -> ModelConfig:
    """The ModelConfig stored in a model/checkpoint dir's config.json (extra keys are metadata)."""
    data = read_metadata(path)
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    try:
        return from_dict(ModelConfig, {k: v for k, v in data.items() if k in names})
    except ConfigError as e:
        raise CheckpointError(f"{path}/{CONFIG_FILE} holds an invalid model config: {e}") from None


def load_weights(model: nn.Module, path: str | Path, device: str | torch.device = "cpu") -> None:
    """Load model.safetensors from `path` into `model`, mapping every failure to CheckpointError."""
    file = Path(path) / MODEL_FILE
    try:
        st_load_model(model, file, strict=True, device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError) as e:
        raise CheckpointCorrupt(
            f"{file} is corrupt, truncated or does not fit the model config ({str(e).splitlines()[0]}); "
            "delete its directory, or re-export it"
        ) from None


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer beside a model's weights (path/tokenizer), any failure reported as a damaged dir."""
    from danlu.tokenizer import Tokenizer

    try:
        return Tokenizer.load(Path(path) / TOKENIZER_DIR)
    except DanluError:
        raise
    except Exception as e:  # any other failure to read the copied tokenizer means a damaged dir
        raise CheckpointError(
            f"{Path(path) / TOKENIZER_DIR} cannot be loaded ({e}); the directory is damaged"
        ) from None


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    transform: Callable[[nn.Module], nn.Module | None] | None = None,
) -> tuple[nn.Module, Any, ModelConfig]:
    """(model in eval mode, tokenizer, model config) from a model dir or a step checkpoint.

    `transform`, if given, is applied to the model on the meta device before its weights are made
    and loaded (it may return a replacement module); the file must then hold the transformed model's
    state."""
    from danlu.model.transformer import build_meta, materialize

    path = Path(path)
    require_files(path, MODEL_DIR_FILES)
    cfg = read_model_config(path)
    tok = load_tokenizer(path)
    if tok.vocab_size != cfg.vocab_size:
        raise CheckpointError(
            f"{path}: tokenizer has {tok.vocab_size} tokens but the model config says {cfg.vocab_size}; "
            "the directory mixes files from different runs"
        )
    model: nn.Module = build_meta(cfg)
    quantized = bool(read_metadata(path).get("quant"))
    if quantized:  # quantized modules in place of the listed Linears, filled by the strict load below
        from danlu.quant.store import apply_layout

        apply_layout(model, path)
    qat = read_metadata(path).get("qat")
    if qat:  # trained through fake quantization: the same quantization again (danlu.quant.qat)
        from danlu.quant.qat import apply_qat, qat_config

        apply_qat(model, qat_config(qat, str(path)))
    if transform is not None:
        model = transform(model) or model
    materialize(model, device, init=False)
    load_weights(model, path, device)
    if quantized:
        from danlu.quant.store import check_loaded

        check_loaded(model, path)
    adapter = read_metadata(path).get("adapter")
    if adapter and transform is None:  # base weights + adapters/<name>/ (an unmerged finetune)
        load_adapter(model, path, adapter, device)
    model.eval()
    return model, tok, cfg
