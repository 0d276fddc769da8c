"""A process-count cap for sandboxed code run by root, who is exempt from RLIMIT_NPROC: a fresh cgroup of
the pids controller (cgroup v1's pids hierarchy, or v2's unified one where `pids` is enabled for its
children) with `pids.max` set, which the child joins between fork and exec. Every task it and its
descendants start counts (threads too); a fork past the cap fails with EAGAIN, as under RLIMIT_NPROC.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

V1_PIDS, V2_ROOT = Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")
_ids = itertools.count()


def _hierarchies() -> list[Path]:
    found = []
    if (V1_PIDS / "cgroup.procs").is_file():
        found.append(V1_PIDS)
    control = V2_ROOT / "cgroup.subtree_control"
    with contextlib.suppress(OSError):
        if "pids" in control.read_text().split():
            found.append(V2_ROOT)
    return found


def make(limit: int) -> Path | None:
    """A new pids cgroup capped at `limit` tasks, or None where this process cannot make one."""
    for root in _hierarchies():
        path = root / f"danlu-sandbox-{os.getpid()}-{next(_ids)}"
        try:
            path.mkdir()
            (path / "pids.max").write_text(str(limit))
            return path
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
    return None


def available() -> bool:
    """Whether a capped pids cgroup can be made here (made and removed again to find out)."""
    path = make(1)
    if path is None:
        return False
    remove(path)
    return True


def join_self(path: Path) -> None:
    """Move the calling process into the cgroup (runs in the child, between fork and exec)."""
    with open(path / "cgroup.procs", "w") as f:
        f.write("0")  # 0: the writer itself


def remove(path: Path, wait_s: float = 2.0) -> None:
    """Remove the cgroup once its last task is gone (killed tasks take a moment to leave)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            path.rmdir()
            return
        except OSError:
            if time.monotonic() >= deadline:
                log.warning("sandbox cgroup %s still holds tasks; left in place", path)
                return
            time.sleep(0.01)


@contextlib.contextmanager
def capped(limit: int) -> Iterator[Path | None]:
    """A capped pids cgroup for the duration (None where none can be made)."""
    path = make(limit)
    try:
        yield path
    finally:
        if path is not None:
            remove(path)
