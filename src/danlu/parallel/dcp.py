"""Sharded checkpoints with torch.distributed.checkpoint (DCP), `parallel.checkpoint: dcp`: every rank
writes its own shards of the weights and the optimizer state (no full copy on any rank), and any
sharded layout resumes them, resharding as it reads (save under FSDP 4, resume under FSDP 2 x TP 2).

A DCP step directory `checkpoints/step-NNNNNN/` holds
    config.json         the model config + the recipe (as in the one-process format)
    dcp/                DCP's files: `.metadata` and one `__<rank>_0.distcp` per rank, keyed by the
                        model's parameter names ("model.*") and the optimizer's state ("optim.*")
    trainer_state.json  step, data position, RNG states, ... (as in the one-process format)
    tokenizer/          the tokenizer
    checksums.json      sha256 of every file above but the tokenizer, checked before a resume
It is written into a temp directory beside it and renamed when complete (rank 0 renames after every
rank's files are written), so a killed run never leaves a partial one.

Every tensor is stored in the model's own layout: under tensor parallelism the fused qkv / gate_up
rows (which the ranks hold in TP order, danlu.parallel.tensor) are put back in the model's order one
parameter at a time, so the files do not depend on the TP degree. `export_dcp_model_dir` turns a DCP
step directory into a one-process model dir (then `danlu export` makes a Hugging Face one) without a
process group.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from danlu.errors import CheckpointCorrupt, CheckpointError
from danlu.io import atomic_dir
from danlu.model.config import ModelConfig
from danlu.model_dir import CONFIG_FILE, TOKENIZER_DIR, read_model_config, require_files
from danlu.parallel.tensor import FusedOrder
from danlu.train.checkpoint import (
    CHECKSUMS_FILE,
    STATE_FILE,
    check_compatible,
    verify_checksums,
    write_state_and_checksums,
)

log = logging.getLogger(__name__)

DCP_DIR = "dcp"
DCP_FILES = (CONFIG_FILE, STATE_FILE, CHECKSUMS_FILE)


def is_dcp_checkpoint(path: Path) -> bool:
    return (Path(path) / DCP_DIR).is_dir()


def _reordered(t: Any, perm: torch.Tensor) -> Any:
    """A DTensor (or tensor) with its rows permuted as a whole tensor and sharded as before."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(t, DTensor):
        return t.index_select(0, perm.to(t.device))
    full = t.full_tensor().index_select(0, perm.to(t.device))
    return distribute_tensor(full, t.device_mesh, t.placements)


def _convert(state: dict[str, Any], order: FusedOrder | None, to_stored: bool) -> dict[str, Any]:
    """The model and optimizer state with the fused rows in the model's order (to_stored) or back in
    the TP order; unchanged without tensor parallelism."""
    if order is None:
        return state
    perms = order.inverse if to_stored else order.index

    def fix(name: str, v: Any) -> Any:
        p = perms.get(name)
        ok = p is not None and isinstance(v, torch.Tensor) and v.dim() >= 1 and v.size(0) == p.numel()
        return _reordered(v, p) if ok else v

    model = {k: fix(k, v) for k, v in state["model"].items()}
    if "optim" not in state:
        return {"model": model}
    optim = state["optim"]
    moments = {k: {m: fix(k, v) for m, v in st.items()} for k, st in optim["state"].items()}
    return {"model": model, "optim": {**optim, "state": moments}}


def _live_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """This rank's shards of the model and optimizer state, keyed by parameter name (every rank calls
    it; the optimizer's state is created by a zero step when it has none yet, as DCP needs)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    return state


def save_dcp_shards(
    rank: int,
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    records: tuple[dict[str, Any], dict[str, Any]] | None,
    tokenizer_dir: Path,
    order: FusedOrder | None = None,
) -> Path:
    """Write the step directory `path` as a DCP one (every rank calls it; rank 0 passes the
    checkpoint's config and trainer-state records, danlu.train.checkpoint.step_records)."""
    import torch.distributed.checkpoint as dcp

    state = _convert(_live_state(model, optimizer), order, to_stored=True)
    if rank != 0:
        tmp_name: list[Any] = [None]
        dist.broadcast_object_list(tmp_name, src=0)
        dcp.save(state, checkpoint_id=Path(tmp_name[0]) / DCP_DIR)
        return path
    assert records is not None, "rank 0 writes the config and the trainer state"
    config, record = records
    with atomic_dir(path) as tmp:
        dist.broadcast_object_list([str(tmp)], src=0)
        dcp.save(state, checkpoint_id=tmp / DCP_DIR)  # returns once every rank's files are written
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        shutil.copytree(tokenizer_dir, tmp / TOKENIZER_DIR)
        shards = sorted(str(f.relative_to(tmp)) for f in (tmp / DCP_DIR).rglob("*") if f.is_file())
        write_state_and_checksums(tmp, record, [CONFIG_FILE, *shards])
    log.info("DCP checkpoint written: %s", path)
    return path


def check_dcp_compatible(path: Path, model_cfg: ModelConfig, fingerprint: str) -> dict[str, Any]:
    """The trainer state of a DCP step directory made with this model config and tokenizer; a
    CheckpointCorrupt when a file is missing or changed, a CheckpointError for another run's."""
    if not (Path(path) / DCP_DIR / ".metadata").is_file():
        raise CheckpointCorrupt(
            f"{Path(path) / DCP_DIR} has no .metadata: the checkpoint is incomplete; delete it"
        )
    return check_compatible(path, model_cfg, fingerprint, files=DCP_FILES)


def load_dcp_shards(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, order: FusedOrder | None = None
) -> None:
    """Read a checked DCP step directory (written under any layout) into this rank's shards, on
    every rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    live = _live_state(model, optimizer)
    try:
        dcp.load(live, checkpoint_id=Path(path) / DCP_DIR)
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise CheckpointError(
            f"{path}: the DCP state does not fit this model ({str(e).splitlines()[0]})"
        ) from None
    live = _convert(live, order, to_stored=False)
    set_model_state_dict(model, live["model"])
    set_optimizer_state_dict(model, optimizer, live["optim"])


def export_dcp_model_dir(checkpoint: Path, out: Path) -> Path:
    """A one-process model dir (config.json, model.safetensors, tokenizer/) from a DCP step
    directory, in this process (no process group needed)."""
    import torch.distributed.checkpoint as dcp

    from danlu.model.transformer import build_model
    from danlu.model_dir import save_model_dir

    checkpoint = Path(checkpoint)
    require_files(checkpoint, DCP_FILES, empty_is_corrupt=True)
    verify_checksums(checkpoint)
    model_cfg = read_model_config(checkpoint)
    model = build_model(model_cfg)
    msd = {"model": model.state_dict()}
    with warnings.catch_warnings():  # reading in one process is the intent here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(msd, checkpoint_id=checkpoint / DCP_DIR)
    model.load_state_dict(msd["model"])
    return save_model_dir(out, model, model_cfg, checkpoint / TOKENIZER_DIR)
