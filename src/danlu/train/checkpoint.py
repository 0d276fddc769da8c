"""Step checkpoints: save, find, check, load, prune.

A step checkpoint `checkpoints/step-NNNNNN/` is a model directory (danlu.model_dir) plus training state:
    config.json         model config (top-level fields) + the stage's full config under "recipe"
    model.safetensors   weights of the trained model, as transformed (a tied matrix stored once)
    optimizer.pt        AdamW state
    trainer_state.json  step, data-loader position, RNG states, tokens seen, tokenizer fingerprint,
                        elapsed seconds, last and best validation
    tokenizer/          copy of the tokenizer, so `danlu.model_dir.load_model` works on a checkpoint too
    checksums.json      sha256 of every file above, checked before a resume
Every directory is written with `atomic_dir`: it either exists complete or not at all.
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
from torch import nn

from danlu.config import to_dict
from danlu.errors import CheckpointCorrupt, CheckpointError
from danlu.io import atomic_dir, sha256_file
from danlu.model.config import ModelConfig
from danlu.model_dir import (
    CONFIG_FILE,
    MODEL_FILE,
    load_weights,
    read_json,
    read_model_config,
    require_files,
    write_model_files,
)

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"
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


def save_checkpoint(
    out_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_cfg: ModelConfig,
    run_config: Any,
    trainer_state: dict[str, Any],
    tokenizer_dir: Path,
) -> Path:
    """Write checkpoints/step-NNNNNN atomically (trainer_state gets `step` and RNG states added);
    run_config (the stage's config, a dataclass or dict) is recorded under "recipe" in config.json."""
    path = checkpoint_dir(out_dir, step)
    meta, state = step_records(step, model, model_cfg, run_config, trainer_state)
    with atomic_dir(path) as tmp:
        write_model_files(tmp, model, meta, tokenizer_dir)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        write_state_and_checksums(tmp, state, [CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE])
    log.info("checkpoint written: %s", path)
    return path


def step_records(
    step: int, model: nn.Module, model_cfg: ModelConfig, run_config: Any, trainer_state: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config.json's record, trainer_state.json's record) of a step checkpoint, in any format: the
    model config with its qat settings and the stage's config under "recipe"; the trainer state with
    `step` and the RNG states added."""
    state = {**to_jsonable(trainer_state), "step": step, "rng": rng_state()}
    recipe = to_dict(run_config) if dataclasses.is_dataclass(run_config) else run_config
    return {**to_dict(model_cfg), **checkpoint_qat(model, recipe), "recipe": recipe}, state


def write_state_and_checksums(tmp: Path, state: dict[str, Any], files: list[str]) -> None:
    """The last two files of a step directory: trainer_state.json, then checksums.json (the sha256
    of `files` and of trainer_state.json)."""
    (tmp / STATE_FILE).write_text(json.dumps(state) + "\n", encoding="utf-8")
    sums = {name: sha256_file(tmp / name) for name in [*files, STATE_FILE]}
    (tmp / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=2) + "\n", encoding="utf-8")


def checkpoint_qat(model: nn.Module, recipe: Any) -> dict[str, Any]:
    """{"qat": settings} when the model trains through fake quantization (its modules say so, or, for
    a sharded model's gathered state, the recipe's qat section), so that a step checkpoint loads as
    the model it trained; else {}."""
    from danlu.quant.qat import qat_metadata

    found = qat_metadata(model)
    if not found and isinstance(recipe, dict) and isinstance(recipe.get("qat"), dict):
        found = {"qat": recipe["qat"]}
    return found


# ---------------------------------------------------------------------------------------------
# Reading


def config_differences(stored: ModelConfig, current: ModelConfig) -> list[str]:
    a, b = to_dict(stored), to_dict(current)
    return [f"model.{k}: checkpoint {a[k]!r}, config {b[k]!r}" for k in a if a[k] != b.get(k)]


def verify_checksums(path: Path) -> None:
    """Every file must still have the sha256 recorded when the checkpoint was written."""
    sums = read_json(Path(path) / CHECKSUMS_FILE)
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


def check_compatible(
    path: Path, model_cfg: ModelConfig, fingerprint: str, files: tuple[str, ...] = CHECKPOINT_FILES
) -> dict[str, Any]:
    """Raise CheckpointError unless the checkpoint (holding `files`) was made with this model config
    and tokenizer; return its trainer state."""
    path = Path(path)
    require_files(path, files, empty_is_corrupt=True)
    verify_checksums(path)
    state = read_json(path / STATE_FILE)
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
