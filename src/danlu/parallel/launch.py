"""`danlu ... --nproc N`: re-run the same command under torchrun (torch.distributed.run) with N processes
on this machine; its rendezvous listens on localhost only. `danlu pretrain --nproc N` relaunches the
whole command; `danlu run --nproc N` runs its other stages in its own process and only the pretrain
stage under torchrun (`launch`). Multi-node runs call torchrun directly:
`torchrun --nnodes ... -m danlu.cli pretrain RECIPE`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from danlu.errors import ConfigError, DanluError
from danlu.parallel.config import ParallelConfig
from danlu.parallel.mesh import ParallelDims

log = logging.getLogger(__name__)


class LaunchFailed(DanluError):
    """The processes torchrun started did not all finish (their own errors are printed above)."""


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


def launch(nproc: int, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Run `danlu argv` in nproc local processes under torchrun, with `env` added to this process's
    environment; a LaunchFailed when any rank fails (torchrun then stops the others)."""
    cmd = torchrun_command(nproc, argv)
    log.info("launching %d processes: %s", nproc, " ".join(cmd))
    code = subprocess.call(cmd, env={**os.environ, **(env or {})})
    if code != 0:
        raise LaunchFailed(
            f"danlu {' '.join(without_nproc(argv))} in {nproc} processes failed (torchrun exit status "
            f"{code}); the failing rank's error is above"
        )
