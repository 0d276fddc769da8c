"""Whether a recipe stage may resume the step checkpoints in its output, or must start afresh.

A training stage's trainer resumes from the newest checkpoint whose model shape and tokenizer match.
That is right for an interrupted run and for a longer schedule (a larger `max_steps` continues where the
run stopped), but wrong when other settings changed: a new optimizer or learning rate, or new input
data, would be silently ignored in favour of the old run's state. So when a stage starts, danlu records
the settings and inputs it runs with (`.stages/<stage>.started.json`); when it starts again with
settings that differ in anything but the harmless keys below, the old checkpoints are moved aside (never
deleted) and the stage trains from the start.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from danlu.errors import ConfigError
from danlu.io import atomic_write_json

log = logging.getLogger(__name__)

# Settings a resumed run may change: how long it trains and how it reports, not what it computes.
RESUMABLE_CHANGES = frozenset(
    {
        "max_steps",
        "max_minutes",
        "eval_every",
        "eval_batches",
        "ckpt_every",
        "keep_last",
        "log_every",
        "sinks",
        "early_stop_patience",
        "device",
    }
)
RANK_WAIT_S = 300.0


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def setting_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """'key: old -> new' for each setting or input that differs, but for RESUMABLE_CHANGES."""
    a, b = _flatten(before), _flatten(after)
    changed = []
    for key in sorted(a.keys() | b.keys()):
        if key.rsplit(".", 1)[-1] in RESUMABLE_CHANGES or a.get(key) == b.get(key):
            continue
        changed.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return changed


def _started_path(stamps: Path, stage: str) -> Path:
    return stamps / f"{stage}.started.json"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def prepare_stage_checkpoints(stamps: Path, stage: str, trainer_out: Path, started: dict[str, Any]) -> None:
    """Before a stage runs: move aside the step checkpoints under trainer_out (the stage trainer's
    output dir) that were made with other settings, then record the
    settings this run starts with: `started` is {"settings": ..., "inputs": ...}.

    Under torchrun only rank 0 moves and records; the other ranks wait until the record shows this
    run's settings, so no rank lists checkpoints that are about to move."""
    from danlu.train.checkpoint import CHECKPOINTS, list_checkpoints

    started = json.loads(json.dumps(started, default=str))  # as it reads back from the record
    path = _started_path(stamps, stage)
    if os.environ.get("RANK", "0") != "0":
        deadline = time.monotonic() + RANK_WAIT_S
        while _read(path) != started:
            if time.monotonic() > deadline:
                raise ConfigError(f"rank 0 did not record the {stage} stage's start in {path}")
            time.sleep(0.1)
        return
    previous = _read(path)
    if previous is not None and list_checkpoints(trainer_out):
        checkpoints = trainer_out / CHECKPOINTS
        changes = setting_changes(previous, started)
        if changes:
            aside = checkpoints.with_name(f"{checkpoints.name}-superseded-{time.strftime('%Y%m%d-%H%M%S')}")
            checkpoints.rename(aside)
            shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
            log.warning(
                "stage %s: its checkpoints were made with other settings (%s); moved them to %s and "
                "training from the start",
                stage,
                shown,
                aside,
            )
    atomic_write_json(path, started)
