"""Checkpoints of a sharded (FSDP) run in the single-process format, so any layout resumes any other.

Saving gathers the full model and optimizer state to rank 0 (torch.distributed.checkpoint's
`get_*_state_dict` with full_state_dict), which writes the usual step directory through
danlu.train.checkpoint (atomic, checksummed). The optimizer state is converted from parameter names
to the positional ids that `torch.optim.Optimizer.state_dict()` uses. Loading reads the same files on
every rank and scatters them into the shards (`set_*_state_dict`). Memory: rank 0 holds one full copy
in CPU memory while saving; `parallel.checkpoint: dcp` writes each rank's own shards instead
(danlu.parallel.dcp), through the same two entry points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.errors import CheckpointCorrupt, CheckpointError
from danlu.model.config import ModelConfig
from danlu.model_dir import MODEL_FILE, save_model_dir
from danlu.parallel.dcp import check_dcp_compatible, is_dcp_checkpoint, load_dcp_shards, save_dcp_shards
from danlu.parallel.tensor import FusedOrder
from danlu.train.checkpoint import OPTIMIZER_FILE, check_compatible, save_checkpoint, set_rng_state


class StateHolder(nn.Module):
    """Hands a ready state dict to the writers that take a module (safetensors' save_model) or an
    optimizer (its state_dict()); owns no parameters."""

    def __init__(self, state: dict[str, Any]):
        super().__init__()
        self._state = state

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return dict(self._state)


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """{alias: kept name} for parameters registered under more than one name (a tied head)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def _options(full: bool = True) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=True)


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each optimizer parameter, in the order of its positional ids."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, order: FusedOrder | None = None
) -> tuple[dict, dict | None]:
    """(model state, optimizer state in positional-id form), complete on rank 0 and empty elsewhere;
    every rank must call it (it gathers). Tied aliases are dropped, as safetensors stores them once;
    fused rows in TP order (`order`) go back to the model's order."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    aliases = tied_aliases(model)
    msd = {k: v for k, v in get_model_state_dict(model, options=_options()).items() if k not in aliases}
    if order is not None:
        msd = order.to_stored(msd)
    if optimizer is None:
        return msd, None
    osd = get_optimizer_state_dict(model, optimizer, options=_options())
    if not osd:
        return msd, {}
    if order is not None:
        osd = order.optimizer_to_stored(osd)
    ids = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    state = {ids[name]: v for name, v in osd["state"].items()}
    groups = [{**g, "params": [ids[n] for n in g["params"]]} for g in osd["param_groups"]]
    return msd, {"state": state, "param_groups": groups}


def save_sharded_checkpoint(
    rank: int,
    out_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_cfg: ModelConfig,
    run_config: Any,
    trainer_state: dict[str, Any],
    tokenizer_dir: Path,
    order: FusedOrder | None = None,
    dcp: bool = False,
) -> Path:
    """Gather, then write the step directory on rank 0; with dcp, every rank writes its own shards
    instead (danlu.parallel.dcp). The caller puts a barrier after it."""
    from danlu.train.checkpoint import checkpoint_dir, step_records

    if dcp:
        records = step_records(step, model, model_cfg, run_config, trainer_state) if rank == 0 else None
        return save_dcp_shards(
            rank, checkpoint_dir(out_dir, step), model, optimizer, records, tokenizer_dir, order
        )
    msd, osd = full_state(model, optimizer, order)
    if rank == 0:
        assert osd is not None
        save_checkpoint(
            out_dir,
            step,
            StateHolder(msd),
            StateHolder(osd),
            model_cfg,
            run_config,
            trainer_state,
            tokenizer_dir,
        )  # type: ignore[arg-type]
    return checkpoint_dir(out_dir, step)


def export_sharded_model_dir(
    rank: int,
    path: Path,
    model: nn.Module,
    model_cfg: ModelConfig,
    tokenizer_dir: Path,
    order: FusedOrder | None = None,
) -> Path:
    """A model directory (the single-process format) from a sharded model, written by rank 0."""
    from danlu.quant.qat import qat_metadata

    msd, _ = full_state(model, None, order)
    if rank == 0:  # the gathered state has no modules: the live model tells whether it trains with qat
        save_model_dir(path, StateHolder(msd), model_cfg, tokenizer_dir, extra=qat_metadata(model))
    return Path(path)


def load_sharded_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_cfg: ModelConfig,
    fingerprint: str,
    device: str | torch.device = "cpu",
    order: FusedOrder | None = None,
) -> dict[str, Any]:
    """Restore a step directory (written by any layout, in the one-process or the DCP format) into
    the sharded model and optimizer on every rank; return the trainer state."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    if is_dcp_checkpoint(path):
        state = check_dcp_compatible(path, model_cfg, fingerprint)
        load_dcp_shards(path, model, optimizer, order)
        set_rng_state(state["rng"])
        return state
    state = check_compatible(path, model_cfg, fingerprint)
    try:
        msd = load_file(str(Path(path) / MODEL_FILE))
        osd = torch.load(Path(path) / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as e:
        raise CheckpointCorrupt(
            f"{path} is corrupt or truncated ({str(e).splitlines()[0]}); delete it"
        ) from None
    for alias, kept in tied_aliases(model).items():
        if kept in msd:
            msd.setdefault(alias, msd[kept])
    if order is not None:
        msd = order.to_tp_order(msd)
    try:
        set_model_state_dict(model, msd, options=_options())
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(
            f"{path}: the weights do not fit the model ({str(e).splitlines()[0]})"
        ) from None
    names = _param_names(model, optimizer)
    saved = [i for g in osd["param_groups"] for i in g["params"]]
    if len(saved) != len(names):
        raise CheckpointError(
            f"{path}: the optimizer state holds {len(saved)} parameters, this model trains {len(names)}"
        )
    by_name = {
        "state": {names[i]: v for i, v in osd["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in osd["param_groups"]],
    }
    if order is not None:
        by_name = order.optimizer_to_tp_order(by_name)
    set_optimizer_state_dict(model, optimizer, by_name, options=_options())
    set_rng_state(state["rng"])
    return state
