"""The process group of a distributed run and what the Trainer asks of it.

`init_parallel(cfg, device)` joins the group that `torchrun` (or `danlu ... --nproc N`) started,
checks the layout against the world size, builds the device mesh and returns a `Distributed`; in a
single process it only checks the layout and returns None. The Trainer uses the object to shard the
model, wrap its forward (DDP), sum token counts and losses over the data-parallel ranks, clip the
gradients, and save and load checkpoints; only rank 0 logs at INFO, writes metrics, checkpoints and
the model dir. Under pipeline parallelism (pp > 1) it also runs each step's forward and backward
through the pipeline schedule (`forward_backward`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from danlu.errors import ConfigError
from danlu.model.config import ModelConfig
from danlu.parallel.apply import apply_ddp, apply_fsdp
from danlu.parallel.checkpoint import (
    StateHolder,
    export_sharded_model_dir,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)
from danlu.parallel.config import ParallelConfig
from danlu.parallel.dcp import is_dcp_checkpoint
from danlu.parallel.mesh import ParallelDims, build_mesh, data_parallel_mesh
from danlu.parallel.pipeline import PipelineRunner, build_stages
from danlu.parallel.tensor import FusedOrder, apply_tp

log = logging.getLogger(__name__)


def world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class Distributed:
    """One rank's view of the run (see the module docstring)."""

    def __init__(self, cfg: ParallelConfig, dims: ParallelDims, mesh: Any, device: torch.device, owns: bool):
        self.cfg, self.dims, self.mesh, self.device = cfg, dims, mesh, device
        self.rank, self._owns = dist.get_rank(), owns
        self.is_main = self.rank == 0
        dp_mesh = data_parallel_mesh(mesh)
        self.dp_rank, self.dp = dp_mesh.get_local_rank(), dims.dp
        self._dp_group = dp_mesh.get_group()
        self.fsdp, self.tp = dims.dp_shard > 1, dims.tp
        self.sharded = self.fsdp or self.tp > 1  # the parameters are DTensors
        self.order: FusedOrder | None = None  # the TP row order of the fused layers, once applied
        self.pipelined = dims.pp > 1
        self.zero1 = cfg.zero == 1
        self.runner: PipelineRunner | None = None  # this rank's pipeline stages, once sharded
        # under pp > 1: (logits, targets) -> summed loss, computed on the last stage (None: plain
        # cross-entropy); the stage sets it before the Trainer shards the model
        self.logits_loss: Any = None
        # DDP and FSDP average gradients over the dp ranks; the loss is divided by the step's global
        # target tokens, so multiplying by dp makes the reduced gradient that of the whole batch
        self.grad_scale = float(dims.dp)

    # --- the model --------------------------------------------------------------------------------

    def build_model(self, model_cfg: ModelConfig, device: torch.device) -> nn.Module:
        """The initial model (every rank the same weights from the seed): under pp > 1 only this
        rank's pipeline stages are allocated (danlu.parallel.pipeline.build_stages)."""
        from danlu.model.transformer import build_model

        if not self.pipelined:
            return build_model(model_cfg, device)
        c = self.cfg
        return build_stages(model_cfg, c.pp, self.mesh["pp"].get_local_rank(), c.pp_virtual, device)

    def shard(self, model: nn.Module) -> nn.Module:
        """Tensor parallelism when tp > 1, then FSDP2 when dp_shard > 1, in place (before the optimizer
        is built); under pp > 1 the pipeline stages of this rank (the model itself is unchanged);
        otherwise unchanged."""
        if self.pipelined:
            c = self.cfg
            self.runner = PipelineRunner(
                model,
                self.mesh["pp"].get_group(),
                c.pp_microbatches or c.pp * c.pp_virtual,
                c.pp_schedule,
                c.pp_virtual,
                self.device,
                dp_group=self._dp_group if self.dp > 1 else None,
                loss_of_logits=self.logits_loss,
            )
            return model
        if self.cfg.checkpoint == "dcp" and not self.sharded:
            raise ConfigError(
                "parallel.checkpoint=dcp saves sharded parameters (parallel.dp_shard > 1 or tp > 1); "
                f"this layout ({self.dims.kind}) saves the one-process format: remove it"
            )
        if self.cfg.cpu_offload and (not self.fsdp or self.device.type != "cuda"):
            raise ConfigError(
                "parallel.cpu_offload needs parallel.dp_shard > 1 on GPUs (FSDP2 offloads to pinned CPU "
                "memory); on CPU the parameters are in CPU memory already: remove it"
            )
        if self.tp > 1:
            if self.dims.dp_replicate > 1 and not self.fsdp:
                raise ConfigError(
                    f"parallel.tp={self.tp} with dp_replicate={self.dims.dp_replicate} and dp_shard=1: data "
                    "parallelism over tensor-parallel weights shards; use parallel.dp_shard (FSDP x TP)"
                )
            self.order = apply_tp(model, self.mesh["tp"], self.cfg.sequence_parallel)
        return apply_fsdp(model, self.mesh, self.dims, self.cfg) if self.fsdp else model

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Under parallel.zero=1: the same optimizer (class, groups, options) as a
        ZeroRedundancyOptimizer, each data-parallel rank holding the state of its share of the
        parameters; otherwise the optimizer itself."""
        if not self.zero1:
            return optimizer
        from torch.distributed.optim import ZeroRedundancyOptimizer

        groups = [dict(g) for g in optimizer.param_groups]
        kind = type(optimizer)
        # the options its constructor takes (AdamW records decoupled_weight_decay, which it does not take)
        accepted = inspect.signature(kind.__init__).parameters
        options = {k: v for k, v in optimizer.defaults.items() if k in accepted}
        log.info("ZeRO-1: %s state sharded over %d data-parallel ranks", kind.__name__, self.dp)
        return ZeroRedundancyOptimizer(groups, optimizer_class=kind, process_group=self._dp_group, **options)

    def wrap_forward(self, model: nn.Module) -> nn.Module:
        """What the trainer calls forward on: a DDP wrapper for pure data parallelism, else the model
        (pipelined: the whole model, which evaluates after sync_model)."""
        return model if self.sharded or self.pipelined else apply_ddp(model, self.mesh, self.device)

    @contextlib.contextmanager
    def accumulating(self, forward: nn.Module, last: bool) -> Iterator[None]:
        """Skip DDP's gradient all-reduce on all but the last micro-batch of a step (the sum is the same)."""
        ctx = forward.no_sync() if not last and hasattr(forward, "no_sync") else contextlib.nullcontext()
        with ctx:
            yield

    # --- the pipelined step -----------------------------------------------------------------------

    def forward_backward(
        self, micro_batches: list[Any], n_tokens: int, loss_scale: float = 1.0
    ) -> torch.Tensor:
        """Under pp > 1: one step's forward and backward through the pipeline schedule. The step's
        micro-batches (inputs, targets) are joined and cut into parallel.pp_microbatches; returns
        this replica's summed loss divided by n_tokens (the step's target tokens over all replicas)."""
        assert self.runner is not None, "shard() builds the pipeline first"
        if loss_scale != 1.0:
            raise ConfigError("pipeline parallelism does not scale losses (train.dtype=fp16); use bf16")
        if any(len(mb) != 2 for mb in micro_batches):
            raise ConfigError(
                "pipeline parallelism trains (inputs, targets) batches only: no attention masks"
            )
        self.runner.release_others()  # gathered for the last evaluation or checkpoint
        x = torch.cat([mb[0] for mb in micro_batches])
        y = torch.cat([mb[1] for mb in micro_batches])
        return self.runner.forward_backward(x, y, n_tokens)

    def clip_grad_norm_(self, params: list[nn.Parameter], max_norm: float) -> float:
        """torch's clip_grad_norm_ over the whole model: across the pipeline stages under pp > 1."""
        if self.runner is not None:
            return self.runner.clip_grad_norm_(max_norm)
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def sync_model(self, model: nn.Module) -> None:
        """Bring this rank's copy of the whole model up to date (under pp > 1 each rank trains only its
        stages); a no-op for the other layouts."""
        if self.runner is not None:
            self.runner.sync_stages()

    # --- collectives ------------------------------------------------------------------------------

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over the data-parallel ranks (a new tensor)."""
        out = t.detach().clone()
        dist.all_reduce(out, group=self._dp_group)
        return out

    def count(self, n: int) -> int:
        """An integer count summed over the data-parallel ranks."""
        return int(self.sum(torch.tensor(n, dtype=torch.int64, device=self._comm_device)))

    def gather(self, values: list[float]) -> list[list[float]]:
        """Every rank's `values`, indexed by global rank (all ranks call it)."""
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(out, t)
        return [o.tolist() for o in out]

    def max(self, value: float) -> float:
        t = torch.tensor(value, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._dp_group)
        return float(t)

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        dist.barrier()

    # --- checkpoints and the model dir ------------------------------------------------------------

    def save_checkpoint(self, out_dir: Path, step: int, model: nn.Module, *args: Any) -> Path:
        """train.checkpoint.save_checkpoint's arguments; rank 0 writes, all ranks return together."""
        from danlu.train.checkpoint import checkpoint_dir, save_checkpoint

        if self.runner is not None:  # the stages' weights and optimizer states, merged
            self.runner.sync_stages()
            osd = self.runner.merge_optimizer_states(args[0])
            path = checkpoint_dir(out_dir, step)
            if self.is_main:
                save_checkpoint(out_dir, step, model, StateHolder(osd), *args[1:])  # type: ignore[arg-type]
            self.runner.release_others()
        elif self.sharded:
            dcp = self.cfg.checkpoint == "dcp"
            path = save_sharded_checkpoint(self.rank, out_dir, step, model, *args, order=self.order, dcp=dcp)
        else:
            if self.zero1:  # the optimizer state's shards, gathered to rank 0 for its state_dict()
                args[0].consolidate_state_dict(to=0)
            path = (
                save_checkpoint(out_dir, step, model, *args)
                if self.is_main
                else checkpoint_dir(out_dir, step)
            )
        self.barrier()
        return path

    def load_checkpoint(self, path: Path, model: nn.Module, *args: Any) -> dict[str, Any]:
        """train.checkpoint.load_checkpoint's arguments, on every rank."""
        from danlu.train.checkpoint import load_checkpoint

        if is_dcp_checkpoint(path) and not self.sharded:
            raise ConfigError(
                f"{path} is a DCP checkpoint (parallel.checkpoint=dcp): resume it under a sharded "
                "layout (parallel.dp_shard > 1 or tp > 1)"
            )
        if self.sharded:
            return load_sharded_checkpoint(path, model, *args, order=self.order)
        with warnings.catch_warnings():  # under pp > 1 the stages of other ranks are on meta: skipped
            warnings.filterwarnings("ignore", message=".*to a meta parameter in the current model")
            return load_checkpoint(path, model, *args)

    def save_model_dir(
        self, path: Path, model: nn.Module, model_cfg: ModelConfig, tokenizer_dir: Path
    ) -> Path:
        """The trained model as a single-process model dir, written by rank 0."""
        from danlu.model_dir import save_model_dir

        self.sync_model(model)
        if self.sharded:
            export_sharded_model_dir(self.rank, path, model, model_cfg, tokenizer_dir, self.order)
        elif self.is_main:
            save_model_dir(path, model, model_cfg, tokenizer_dir)
        self.barrier()
        if self.runner is not None:
            self.runner.release_others()
        return Path(path)

    def close(self) -> None:
        """Leave the process group if init_parallel created it."""
        if self._owns and dist.is_initialized():
            dist.destroy_process_group()


def init_parallel(cfg: ParallelConfig, device: torch.device) -> Distributed | None:
    """Join the torchrun process group and build the mesh (see the module docstring)."""
    dims = ParallelDims.resolve(cfg, world_size())
    if dims.world_size == 1:
        return None
    owns = not dist.is_initialized()
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if owns:
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend, timeout=timedelta(seconds=cfg.timeout_s))
    rank = dist.get_rank()
    if rank != 0:  # rank-0 logging: the others report only warnings and errors
        logging.getLogger().setLevel(logging.WARNING)
    mesh = build_mesh(dims, device.type)
    log.info(
        "distributed: %d processes (%s), backend %s, device %s",
        dims.world_size,
        dims.kind,
        dist.get_backend(),
        device,
    )
    return Distributed(cfg, dims, mesh, device, owns)
