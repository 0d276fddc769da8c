"""The parallel layout (`parallel.*` in a recipe): how the world of processes is cut into a device mesh
and how the model is spread over it.

The mesh dimensions multiply to the world size (`torchrun --nproc-per-node N`, or `danlu pretrain
--nproc N`); one of them may be -1, "whatever is left". Data-parallel ranks (dp_replicate x dp_shard)
each take their own rows of every global batch (train.batch_size is the global micro-batch), so a
layout change does not change the data or the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from danlu.errors import check

DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class ParallelConfig:
    # Data-parallel replicas (DDP when dp_shard is 1; the replicate dimension of HSDP otherwise).
    # -1: all ranks that the other dimensions leave.
    dp_replicate: int = -1
    # Data-parallel shards: FSDP2 (fully_shard per block) over this many ranks; 1: no sharding.
    dp_shard: int = 1
    # Tensor-parallel degree: attention heads, MLP width and vocabulary split over this many ranks
    # (it must divide model.n_head, n_kv_head, the MLP width and the vocabulary). Data parallelism
    # on top of it shards (dp_shard, FSDP x TP); dp_replicate > 1 needs dp_shard > 1 then (HSDP x TP).
    tp: int = 1
    # With tp > 1: norms and the residual stream sharded along the sequence over the TP ranks too.
    sequence_parallel: bool = False
    # Pipeline-parallel stages (torch.distributed.pipelining): the blocks cut into pp stages, one
    # group of ranks each; combines with dp_replicate (PP x DP), not with dp_shard or tp.
    pp: int = 1
    # The pipeline schedule: gpipe, 1f1b or interleaved_1f1b.
    pp_schedule: str = "1f1b"
    # Micro-batches a pipelined step's rows are cut into (0: one per stage); must divide the rows
    # each replica trains per step (train.batch_size / data-parallel ranks x train.grad_accum).
    pp_microbatches: int = 0
    # Stages per rank (interleaved_1f1b only, where it should be >= 2; 1 for the other schedules).
    pp_virtual: int = 1
    # Context-parallel degree (not built yet: must be 1).
    cp: int = 1
    # FSDP: free each block's gathered weights after its forward (ZeRO-3); False keeps them until the
    # backward (ZeRO-2 behaviour: gradients and optimizer state sharded, weights gathered once a step).
    reshard_after_forward: bool = True
    # The ZeRO stage, as one key (0: as the keys above say). 1: optimizer state sharded over the
    # data-parallel ranks, weights and gradients replicated (DDP + torch's ZeroRedundancyOptimizer;
    # needs dp_shard=1, tp=1, pp=1). 2 and 3: FSDP (needs dp_shard > 1) with reshard_after_forward
    # False (2) or True (3), which this key then sets.
    zero: int = 0
    # FSDP: keep the sharded parameters, gradients and optimizer state in CPU memory.
    cpu_offload: bool = False
    # FSDP mixed precision: the dtype of the gathered weights in forward/backward (fp32: off) ...
    param_dtype: str = "fp32"
    # ... and of the gradient reduction.
    reduce_dtype: str = "fp32"
    # Step checkpoints of a sharded run (dp_shard > 1 or tp > 1): "gathered" (the default) writes
    # the one-process format from rank 0 (any layout, one process included, resumes it; rank 0
    # holds a full copy while saving); "dcp" has every rank write its own shards
    # (torch.distributed.checkpoint, danlu.parallel.dcp), which any sharded layout resumes.
    checkpoint: str = "gathered"
    # gloo, nccl or auto (nccl on CUDA, gloo on CPU).
    backend: str = "auto"
    # Seconds a collective may wait for a missing rank before the job fails (a killed rank ends the
    # job instead of hanging it).
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        dims = {"dp_replicate": self.dp_replicate, "dp_shard": self.dp_shard, "tp": self.tp}
        dims |= {"pp": self.pp, "cp": self.cp}
        for k, v in dims.items():
            check(v == -1 or v >= 1, f"parallel.{k}", f"must be >= 1 or -1 (the rest), got {v}")
        wild = [k for k, v in dims.items() if v == -1]
        check(len(wild) <= 1, "parallel", f"only one dimension may be -1, got {', '.join(wild)}")
        check(self.tp >= 1, "parallel.tp", f"must be >= 1 (not -1), got {self.tp}")
        check(self.pp >= 1, "parallel.pp", f"must be >= 1 (not -1), got {self.pp}")
        check(self.cp == 1, "parallel.cp", f"context parallelism is not built yet: must be 1, got {self.cp}")
        if self.pp > 1:
            check(
                self.dp_shard == 1 and self.tp == 1,
                "parallel.pp",
                f"pp={self.pp} combines with dp_replicate only (PP x DP); set dp_shard=1 and tp=1, got "
                f"dp_shard={self.dp_shard}, tp={self.tp}",
            )
        schedules = ("gpipe", "1f1b", "interleaved_1f1b")
        check(
            self.pp_schedule in schedules,
            "parallel.pp_schedule",
            f"must be one of {', '.join(schedules)}, got {self.pp_schedule!r}",
        )
        check(
            self.pp_microbatches >= 0, "parallel.pp_microbatches", f"must be >= 0, got {self.pp_microbatches}"
        )
        check(self.pp_virtual >= 1, "parallel.pp_virtual", f"must be >= 1, got {self.pp_virtual}")
        check(
            self.pp_virtual == 1 or self.pp_schedule == "interleaved_1f1b",
            "parallel.pp_virtual",
            f"{self.pp_schedule} runs one stage per rank: pp_virtual must be 1, got {self.pp_virtual}",
        )
        for k in ("param_dtype", "reduce_dtype"):
            v = getattr(self, k)
            check(v in DTYPES, f"parallel.{k}", f"must be one of {', '.join(DTYPES)}, got {v!r}")
        check(
            self.backend in ("auto", "gloo", "nccl"),
            "parallel.backend",
            f"auto, gloo or nccl, got {self.backend!r}",
        )
        check(self.timeout_s > 0, "parallel.timeout_s", f"must be > 0, got {self.timeout_s}")
        check(
            self.checkpoint in ("gathered", "dcp"),
            "parallel.checkpoint",
            f"gathered or dcp, got {self.checkpoint!r}",
        )
        check(self.zero in (0, 1, 2, 3), "parallel.zero", f"must be 0, 1, 2 or 3, got {self.zero}")
        if self.zero == 1:
            check(
                self.dp_shard == 1 and self.tp == 1 and self.pp == 1,
                "parallel.zero",
                "zero=1 shards the optimizer state over data-parallel replicas: set dp_shard=1, tp=1 "
                f"and pp=1 (for sharded weights use zero=2 or 3), got dp_shard={self.dp_shard}, "
                f"tp={self.tp}, pp={self.pp}",
            )
        if self.zero in (2, 3):
            check(
                self.dp_shard != 1,
                "parallel.zero",
                f"zero={self.zero} shards with FSDP: set parallel.dp_shard > 1 (or -1), got dp_shard=1",
            )
            self.reshard_after_forward = self.zero == 3
