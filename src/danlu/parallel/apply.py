"""Data parallelism applied to a plain model from outside (torchtitan's shape): FSDP2 `fully_shard` per
block and then on the root (embedding, final norm and head), or DDP around the whole model. The model
file knows nothing of either."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from danlu.errors import ConfigError
from danlu.parallel.config import ParallelConfig
from danlu.parallel.mesh import ParallelDims

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def blocks_of(model: nn.Module) -> nn.ModuleList:
    for m in model.modules():  # the model itself, or the transformer inside a wrapper
        blocks = getattr(m, "blocks", None)
        if isinstance(blocks, nn.ModuleList):
            return blocks
    raise ConfigError(f"parallel: {type(model).__name__} has no `blocks` to shard")


def apply_fsdp(model: nn.Module, mesh: Any, dims: ParallelDims, cfg: ParallelConfig) -> nn.Module:
    """fully_shard each block, then the root, in place; returns the model. With dp_replicate > 1 the
    mesh is 2-D and FSDP2 shards within and replicates across (HSDP)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    n_layer = getattr(getattr(model, "cfg", None), "n_layer", None)
    blocks = blocks_of(model)
    if n_layer is not None and n_layer != len(blocks):
        raise ConfigError(
            "parallel.dp_shard > 1 does not support cross-layer sharing (model.n_unique_layers); "
            "use DDP (parallel.dp_shard=1) for such a model"
        )
    sub = mesh["dp_shard"] if dims.dp_replicate == 1 else mesh["dp_replicate", "dp_shard"]
    param_dtype = None if cfg.param_dtype == "fp32" else _DTYPES[cfg.param_dtype]
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=_DTYPES[cfg.reduce_dtype])
    offload = CPUOffloadPolicy() if cfg.cpu_offload else OffloadPolicy()
    kw: dict[str, Any] = {"mesh": sub, "mp_policy": policy, "offload_policy": offload}
    for block in blocks:
        fully_shard(block, reshard_after_forward=cfg.reshard_after_forward, **kw)
    # the root's parameters (embedding, norm, head) are used again right at the start of backward
    fully_shard(model, reshard_after_forward=False, **kw)
    log.info(
        "FSDP2 over %d ranks (%s), %d blocks, reshard_after_forward=%s, cpu_offload=%s, params %s, reduce %s",
        dims.dp_shard, dims.kind, len(blocks), cfg.reshard_after_forward, cfg.cpu_offload,
        cfg.param_dtype, cfg.reduce_dtype,
    )  # fmt: skip
    return model


def apply_ddp(model: nn.Module, mesh: Any, device: torch.device) -> nn.Module:
    """The DDP wrapper through which the trainer runs forward (it all-reduces gradients in backward);
    the wrapped model keeps its own parameter names for the optimizer and checkpoints."""
    from torch.nn.parallel import DistributedDataParallel

    group = mesh["dp_replicate"].get_group()
    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return DistributedDataParallel(model, process_group=group, device_ids=ids)
