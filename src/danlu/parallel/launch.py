"""`danlu ... --nproc N`: re-run the same command under torchrun (torch.distributed.run) with N processes
on this machine; its rendezvous listens on localhost only. Multi-node runs call torchrun directly:
`torchrun --nnodes ... -m danlu.cli pretrain RECIPE`."""

from __future__ import annotations

import logging
import subprocess
import sys

from danlu.errors import ConfigError
from danlu.parallel.config import ParallelConfig
from danlu.parallel.mesh import ParallelDims

log = logging.getLogger(__name__)


def check_layout(cfg: ParallelConfig, nproc: int) -> ParallelDims:
    """The layout's degrees for nproc processes, or a LayoutError (before any process starts)."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    return ParallelDims.resolve(cfg, nproc)


def without_nproc(argv: list[str]) -> list[str]:
    """argv less its --nproc flag (the ranks must not launch again)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The torchrun command line that runs `danlu argv` (less --nproc) in nproc local processes."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    argv = without_nproc(argv)
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "danlu.cli", *argv,
    ]  # fmt: skip


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run `danlu argv` under torchrun with nproc processes; its exit status (torchrun stops every rank
    when one fails)."""
    cmd = torchrun_command(nproc, argv)
    log.info("launching %d processes: %s", nproc, " ".join(cmd))
    return subprocess.call(cmd)
