"""The layout's degrees checked against the world size, and the named device mesh built from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from danlu.errors import ConfigError
from danlu.parallel.config import ParallelConfig

# mesh dimension names, outermost first (torchtitan's order)
DIMS = ("pp", "dp_replicate", "dp_shard", "tp")


class LayoutError(ConfigError):
    """The parallel layout does not fit the number of processes."""


@dataclass(frozen=True)
class ParallelDims:
    """Concrete degrees (no -1 left) whose product is the world size."""

    dp_replicate: int
    dp_shard: int
    world_size: int
    tp: int = 1
    pp: int = 1

    @classmethod
    def resolve(cls, cfg: ParallelConfig, world_size: int) -> ParallelDims:
        """Fill the one -1 dimension with what the world leaves; raise LayoutError unless the degrees
        multiply to world_size."""
        dims = {"dp_replicate": cfg.dp_replicate, "dp_shard": cfg.dp_shard}
        fixed = 1
        for v in (*dims.values(), cfg.tp, cfg.pp, cfg.cp):
            fixed *= v if v != -1 else 1
        for k, v in dims.items():
            if v == -1:
                if world_size % fixed:
                    raise LayoutError(
                        f"parallel.{k}=-1 cannot fill {world_size} processes: the other degrees multiply to "
                        f"{fixed}, which does not divide {world_size}"
                    )
                dims[k] = world_size // fixed
        product = dims["dp_replicate"] * dims["dp_shard"] * cfg.tp * cfg.pp * cfg.cp
        if product != world_size:
            raise LayoutError(
                f"parallel layout dp_replicate={dims['dp_replicate']} x dp_shard={dims['dp_shard']} x "
                f"tp={cfg.tp} x pp={cfg.pp} x cp={cfg.cp} = {product} processes, but {world_size} were "
                f"launched; launch {product} (--nproc {product}) or change the parallel.* degrees"
            )
        return cls(dims["dp_replicate"], dims["dp_shard"], world_size, cfg.tp, cfg.pp)

    @property
    def dp(self) -> int:
        """Data-parallel ranks: each takes its own rows of every batch."""
        return self.dp_replicate * self.dp_shard

    @property
    def kind(self) -> str:
        """single, ddp, fsdp or hsdp, with "+tp" under tensor parallelism; pp or pp+ddp when pipelined."""
        if self.world_size == 1:
            return "single"
        if self.pp > 1:
            return "pp" if self.dp == 1 else "pp+ddp"
        if self.tp > 1:
            return "tp" if self.dp == 1 else f"{'fsdp' if self.dp_replicate == 1 else 'hsdp'}+tp"
        if self.dp_shard == 1:
            return "ddp"
        return "fsdp" if self.dp_replicate == 1 else "hsdp"


def build_mesh(dims: ParallelDims, device_type: str) -> Any:  # a DeviceMesh
    """The named 4-D mesh (pp, dp_replicate, dp_shard, tp) over the initialized process group; rank 0
    holds the first pipeline stage."""
    from torch.distributed.device_mesh import init_device_mesh

    shape = (dims.pp, dims.dp_replicate, dims.dp_shard, dims.tp)
    return init_device_mesh(device_type, shape, mesh_dim_names=DIMS)


def data_parallel_mesh(mesh: Any) -> Any:
    """The data-parallel dimensions flattened into one (the group that sums losses and counts; each
    of its ranks trains its own rows of a batch, the TP ranks of one of them the same rows)."""
    return mesh["dp_replicate", "dp_shard"]._flatten("dp")
