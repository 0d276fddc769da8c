"""Checkpoints and model directories: save, find, check, load.

A step checkpoint `checkpoints/step-NNNNNN/` describes itself:
    config.json         resolved model config (top-level fields) + the full recipe under "recipe"
    model.safetensors   weights (a tied matrix stored once)
    optimizer.pt        AdamW state
    trainer_state.json  step, data-loader position, RNG states, tokens seen, tokenizer fingerprint,
                        elapsed seconds, last and best validation
    tokenizer/          copy of the tokenizer, so `load_model` works on a checkpoint too
Every directory is written with `atomic_dir`: it either exists complete or not at all. A model
directory (`model/`) has config.json, model.safetensors and tokenizer/ only.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model
from torch import nn

from danlu.config import from_dict, to_dict
from danlu.errors import CheckpointCorrupt, CheckpointError, ConfigError, DanluError
from danlu.io import atomic_dir, read_json_object, sha256_file
from danlu.model.config import ModelConfig
from danlu.recipe import RecipeConfig

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"
TOKENIZER_DIR = "tokenizer"
CHECKSUMS_FILE = "checksums.json"
BEST_FILE = "best.json"  # in checkpoints/: the step and val loss of the best checkpoint
CHECKPOINT_FILES = (CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, CHECKSUMS_FILE)
_STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the step checkpoints under out_dir/checkpoints, oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return sorted(found)


def remove_stale_temps(out_dir: Path) -> None:
    """Delete temp dirs left by a run killed while writing (atomic_dir cleans up only when it can)."""
    root = Path(out_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(out_dir: Path) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1][1] if ckpts else None


def best_checkpoint_step(out_dir: Path) -> int | None:
    try:
        return int(json.loads((Path(out_dir) / CHECKPOINTS / BEST_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mark_best(out_dir: Path, step: int, val_loss: float) -> None:
    from danlu.io import atomic_write_json

    atomic_write_json(Path(out_dir) / CHECKPOINTS / BEST_FILE, {"step": step, "val_loss": val_loss})


def prune_checkpoints(out_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints and the best one; hide each one first so a
    kill mid-delete never leaves a half-deleted directory that looks like a checkpoint."""
    best = best_checkpoint_step(out_dir)
    for step, path in list_checkpoints(out_dir)[:-keep_last]:
        if step == best:
            continue
        hidden = path.with_name(f".{path.name}.deleting")
        path.rename(hidden)
        shutil.rmtree(hidden, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# RNG states as JSON


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch CPU and CUDA generator states, JSON-serialisable."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if state.get("cuda") and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            log.warning(
                "checkpoint has CUDA RNG states for %d devices, this machine has %d; not restored",
                len(state["cuda"]),
                torch.cuda.device_count(),
            )
        else:
            torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types for a state dict that may hold numpy or torch scalars/arrays."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray | torch.Tensor):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# ---------------------------------------------------------------------------------------------
# Writing


def _write_model_files(dest: Path, model: nn.Module, config: dict[str, Any], tokenizer_dir: Path) -> None:
    st_save_model(model, str(dest / MODEL_FILE), metadata={"format": "pt"})
    (dest / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    shutil.copytree(tokenizer_dir, dest / TOKENIZER_DIR)


def save_checkpoint(
    out_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_cfg: ModelConfig,
    recipe: RecipeConfig,
    trainer_state: dict[str, Any],
    tokenizer_dir: Path,
) -> Path:
    """Write checkpoints/step-NNNNNN atomically (trainer_state gets `step` and RNG states added)."""
    path = checkpoint_dir(out_dir, step)
    state = {**to_jsonable(trainer_state), "step": step, "rng": rng_state()}
    with atomic_dir(path) as tmp:
        _write_model_files(tmp, model, {**to_dict(model_cfg), "recipe": to_dict(recipe)}, tokenizer_dir)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(state) + "\n", encoding="utf-8")
        sums = {name: sha256_file(tmp / name) for name in CHECKPOINT_FILES if name != CHECKSUMS_FILE}
        (tmp / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=2) + "\n", encoding="utf-8")
    log.info("checkpoint written: %s", path)
    return path


def save_model_dir(
    path: Path,
    model: nn.Module,
    model_cfg: ModelConfig,
    tokenizer_dir: Path,
    extra: dict[str, Any] | None = None,
) -> Path:
    """The final model for generation and later stages: config.json (the model config plus `extra`
    metadata such as "chat": true), model.safetensors, tokenizer/."""
    with atomic_dir(path) as tmp:
        _write_model_files(tmp, model, to_dict(model_cfg) | (extra or {}), tokenizer_dir)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Reading


def _require_files(path: Path, names: tuple[str, ...]) -> None:
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; pass a model dir or a checkpoint dir")
    missing = [n for n in names if not (path / n).exists()]
    if missing:
        raise CheckpointCorrupt(
            f"{path} is incomplete or corrupt: missing {', '.join(missing)}; delete it (training then "
            "resumes from the previous checkpoint) or point to another checkpoint"
        )


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, CheckpointCorrupt, "delete its directory")


def read_model_config(path: Path) -> ModelConfig:
    """The ModelConfig stored in a model/checkpoint dir's config.json (extra keys are metadata)."""
    data = _read_json(Path(path) / CONFIG_FILE)
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    try:
        return from_dict(ModelConfig, {k: v for k, v in data.items() if k in names})
    except ConfigError as e:
        raise CheckpointError(f"{path}/{CONFIG_FILE} holds an invalid model config: {e}") from None


def config_differences(stored: ModelConfig, current: ModelConfig) -> list[str]:
    a, b = to_dict(stored), to_dict(current)
    return [f"model.{k}: checkpoint {a[k]!r}, config {b[k]!r}" for k in a if a[k] != b.get(k)]


def verify_checksums(path: Path) -> None:
    """Every file must still have the sha256 recorded when the checkpoint was written."""
    sums = _read_json(Path(path) / CHECKSUMS_FILE)
    bad = [
        name
        for name, digest in sums.items()
        if not (path / name).is_file() or sha256_file(path / name) != digest
    ]
    if bad:
        raise CheckpointCorrupt(
            f"checkpoint {path} fails its checksums ({', '.join(bad)} changed or truncated since it was "
            "written); delete it to resume from the previous one"
        )


def check_compatible(path: Path, model_cfg: ModelConfig, fingerprint: str) -> dict[str, Any]:
    """Raise CheckpointError unless the checkpoint was made with this model config and tokenizer;
    return its trainer state."""
    path = Path(path)
    _require_files(path, CHECKPOINT_FILES)
    verify_checksums(path)
    state = _read_json(path / STATE_FILE)
    diffs = config_differences(read_model_config(path), model_cfg)
    if state.get("tokenizer_fingerprint") != fingerprint:
        diffs.append(
            f"tokenizer fingerprint: checkpoint {state.get('tokenizer_fingerprint')!r}, "
            f"current {fingerprint!r}"
        )
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} belongs to a different run: "
            + "; ".join(diffs)
            + f". Use a new run_dir, or delete {path.parent} to start this run from scratch"
        )
    for key in ("step", "rng", "loader"):
        if key not in state:
            raise CheckpointError(f"{path / STATE_FILE} lacks {key!r}; the checkpoint is corrupt, delete it")
    return state


def load_weights(model: nn.Module, path: Path, device: str | torch.device = "cpu") -> None:
    """Load model.safetensors from `path` into `model`, mapping every failure to CheckpointError."""
    file = Path(path) / MODEL_FILE
    try:
        st_load_model(model, file, strict=True, device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError) as e:
        raise CheckpointCorrupt(
            f"{file} is corrupt, truncated or does not fit the model config ({str(e).splitlines()[0]}); "
            "delete its directory, or re-export it"
        ) from None


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_cfg: ModelConfig,
    fingerprint: str,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Restore model, optimizer and RNG states in place; return the trainer state."""
    state = check_compatible(path, model_cfg, fingerprint)
    load_weights(model, path, device)
    try:
        optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, map_location=device, weights_only=True))
    except (OSError, RuntimeError, ValueError, KeyError, EOFError) as e:
        raise CheckpointCorrupt(
            f"{path / OPTIMIZER_FILE} is corrupt or truncated ({str(e).splitlines()[0]}); delete {path}"
        ) from None
    set_rng_state(state["rng"])
    return state


def load_model(path: str | Path, device: str = "cpu") -> tuple[nn.Module, Any, ModelConfig]:
    """(model in eval mode, tokenizer, model config) from a model dir or a step checkpoint."""
    from danlu.model.transformer import build_model
    from danlu.tokenizer import Tokenizer

    path = Path(path)
    _require_files(path, (CONFIG_FILE, MODEL_FILE, TOKENIZER_DIR))
    cfg = read_model_config(path)
    try:
        tok = Tokenizer.load(path / TOKENIZER_DIR)
    except DanluError:
        raise
    except Exception as e:  # any other failure to read the copied tokenizer means a damaged dir
        raise CheckpointError(
            f"{path / TOKENIZER_DIR} cannot be loaded ({e}); the directory is damaged"
        ) from None
    if tok.vocab_size != cfg.vocab_size:
        raise CheckpointError(
            f"{path}: tokenizer has {tok.vocab_size} tokens but the model config says {cfg.vocab_size}; "
            "the directory mixes files from different runs"
        )
    model = build_model(cfg, torch.device(device))
    load_weights(model, path, device)
    model.eval()
    return model, tok, cfg
