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
    # Pipeline-parallel stages: must be 1 in danlu pretrain, whose Trainer runs micro-batches one by
    # one (danlu.parallel.pipeline.PipelineRunner is the pipelined training step, tested on its own).
    pp: int = 1
    # Context-parallel degree (not built yet: must be 1).
    cp: int = 1
    # FSDP: free each block's gathered weights after its forward (ZeRO-3); False keeps them until the
    # backward (ZeRO-2 behaviour: gradients and optimizer state sharded, weights gathered once a step).
    reshard_after_forward: bool = True
    # FSDP: keep the sharded parameters, gradients and optimizer state in CPU memory.
    cpu_offload: bool = False
    # FSDP mixed precision: the dtype of the gathered weights in forward/backward (fp32: off) ...
    param_dtype: str = "fp32"
    # ... and of the gradient reduction.
    reduce_dtype: str = "fp32"
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
        for k in ("pp", "cp"):
            check(
                getattr(self, k) == 1,
                f"parallel.{k}",
                f"{k} > 1 is not supported by danlu pretrain yet; use dp_replicate/dp_shard/tp, got "
                f"{getattr(self, k)}",
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
