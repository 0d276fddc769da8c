"""Run untrusted Python (model-written code plus its tests) in a limited subprocess.

What limits what, honestly:
- Enforced by the kernel: a wall-clock timeout (the whole process group is killed), CPU time
  (RLIMIT_CPU), address space (RLIMIT_AS), size of written files (RLIMIT_FSIZE), and the number of
  processes: RLIMIT_NPROC for a non-root user; for root, who is exempt from it, a capped pids cgroup
  (danlu.eval.sandbox_cgroup) where one can be made, else only the timeout cuts a fork bomb short.
  Where unprivileged user namespaces work, the code runs under `unshare --user --net --pid`: no
  network interface but a downed loopback, and every process it starts, even one that left the process
  group, dies with it.
- Best effort only: a preamble that runs before the code replaces socket creation and the file-writing
  functions of `builtins`, `io` and `os` with ones that refuse paths outside the fresh temp dir that is
  the program's cwd and HOME. Hostile code can undo a preamble (import `_io`, `_socket`, spawn a shell),
  so it is NOT a security boundary; it stops accidents of ordinary generated code. Writes outside the
  temp dir are blocked for real only by running as a user without write access there, or in a
  container/seccomp jail, which this module does not set up.
Run model code only on machines whose data you can afford to lose to such code.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from danlu.errors import ConfigError
from danlu.eval import sandbox_cgroup

log = logging.getLogger(__name__)

PASSED, FAILED, TIMEOUT, ERROR = "passed", "failed", "timeout", "error"
_EXIT_ASSERTION = 3  # the runner's exit code when the tests raised AssertionError
_UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--"]


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of one sandboxed run.

    isolate: run under unshare (no network, own PID namespace); None = when available, True = required.
    guard: install the Python preamble that blocks sockets and writes outside the temp dir.
    """

    timeout_s: float = 10.0
    cpu_s: int | None = None  # None: the wall-clock timeout rounded up, plus one second
    memory_mb: int = 1024
    file_mb: int = 16
    max_procs: int = 32
    isolate: bool | None = None
    guard: bool = True
    tail_chars: int = 2000

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "file_mb", "max_procs", "tail_chars"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"SandboxConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.cpu_s is not None and self.cpu_s <= 0:
            raise ConfigError(f"SandboxConfig.cpu_s must be > 0 or None, got {self.cpu_s}")


@dataclass(frozen=True)
class SandboxResult:
    status: str  # passed | failed | timeout | error
    returncode: int | None
    stdout_tail: str
    stderr_tail: str
    duration_s: float
    isolated: bool  # ran under unshare (network and PID namespace)

    @property
    def passed(self) -> bool:
        return self.status == PASSED


# The runner is the program the interpreter starts: argv = [runner, main.py, root, guard(0/1)].
_RUNNER = r"""
import sys, os


def _install_guard(root):
    import builtins, errno, io, socket

    devnull = os.path.realpath(os.devnull)

    def inside(path):
        if isinstance(path, int):
            return True  # an fd the program already holds
        p = os.path.realpath(os.fsdecode(path))
        return p == devnull or p == root or p.startswith(root + os.sep)

    def deny(path):
        return PermissionError(errno.EACCES, "sandbox: writing outside the working directory is blocked", path)

    def wrap_open(orig):
        def guarded_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and not inside(file):
                raise deny(file)
            return orig(file, mode, *args, **kwargs)
        return guarded_open

    builtins.open = io.open = wrap_open(io.open)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    orig_os_open = os.open

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & write_flags and not inside(path):
            raise deny(path)
        return orig_os_open(path, flags, *args, **kwargs)

    os.open = guarded_os_open

    def wrap_paths(orig, npaths):
        def guarded(*args, **kwargs):
            for p in args[:npaths]:
                if not inside(p):
                    raise deny(p)
            return orig(*args, **kwargs)
        return guarded

    for name, n in [("remove", 1), ("unlink", 1), ("rmdir", 1), ("mkdir", 1), ("chmod", 1), ("chown", 1),
                    ("truncate", 1), ("utime", 1), ("mkfifo", 1), ("mknod", 1), ("rename", 2),
                    ("replace", 2), ("link", 2), ("symlink", 2)]:
        if hasattr(os, name):
            setattr(os, name, wrap_paths(getattr(os, name), n))

    def no_network(*args, **kwargs):
        raise PermissionError(errno.EACCES, "sandbox: network access is disabled")

    class BlockedSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            no_network()

    socket.socket = BlockedSocket
    for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
        setattr(socket, name, no_network)


def _main():
    main, root, guard = sys.argv[1], os.path.realpath(sys.argv[2]), sys.argv[3] == "1"
    if guard:
        _install_guard(root)
    import runpy, traceback
    sys.argv = [main]
    sys.path.insert(0, root)
    try:
        runpy.run_path(main, run_name="__main__")
    except AssertionError:
        traceback.print_exc()
        sys.exit(3)
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.exit(1)


_main()
"""


@functools.cache
def unshare_available() -> bool:
    """Whether `unshare --user --net --pid` works here (unprivileged user namespaces enabled)."""
    if shutil.which("unshare") is None:
        return False
    try:
        proc = subprocess.run([*_UNSHARE, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if proc.returncode != 0:
        log.info("unshare unavailable (%s); sandbox relies on its Python preamble", proc.stderr.strip())
    return proc.returncode == 0


def _user_task_count() -> int:
    """Threads of this uid: RLIMIT_NPROC counts them all, so the sandbox's budget is added on top."""
    uid, n = os.getuid(), 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    n += len(os.listdir(entry / "task"))
            except OSError:
                continue  # exited while we looked
    return n


def _limiter(cfg: SandboxConfig, nproc: int | None, cgroup: Path | None):
    cpu = _cpu_limit(cfg)
    mem = cfg.memory_mb * 2**20
    fsize = cfg.file_mb * 2**20

    def set_limits() -> None:  # runs in the child between fork and exec
        if cgroup is not None:
            sandbox_cgroup.join_self(cgroup)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    return set_limits


def _tail(path: Path, n: int) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - n))
        return f.read().decode("utf-8", errors="replace")


def run_python(code: str, config: SandboxConfig | None = None) -> SandboxResult:
    """Run `code` as a Python program in a fresh temp dir under the limits of `config`.

    passed: exit status 0; failed: an AssertionError escaped (the tests ran and one failed);
    timeout: wall-clock or CPU limit hit; error: anything else (syntax error, exception, memory).
    """
    cfg = config or SandboxConfig()
    isolate = unshare_available() if cfg.isolate is None else cfg.isolate
    if isolate and not unshare_available():
        raise ConfigError(
            "SandboxConfig(isolate=True) but `unshare --user --net --pid` does not work here "
            "(user namespaces disabled?): use isolate=None to fall back to the Python preamble"
        )
    # root ignores RLIMIT_NPROC, so setting it would only mislead: a pids cgroup caps root's children
    # (the cap also counts the runner and, isolated, unshare)
    root_user = os.geteuid() == 0
    nproc = None if root_user else _user_task_count() + cfg.max_procs
    with (
        sandbox_cgroup.capped(cfg.max_procs + (2 if isolate else 1))
        if root_user
        else contextlib.nullcontext() as cgroup,
        tempfile.TemporaryDirectory(prefix="danlu-sandbox-") as work,
        tempfile.TemporaryDirectory(prefix="danlu-sandbox-io-") as io_dir,
    ):
        root = Path(work)
        (root / "main.py").write_text(code, encoding="utf-8")
        runner = Path(io_dir) / "runner.py"
        runner.write_text(_RUNNER, encoding="utf-8")
        argv = [
            sys.executable,
            "-I",
            "-B",
            str(runner),
            str(root / "main.py"),
            str(root),
            "1" if cfg.guard else "0",
        ]
        if isolate:
            argv = [*_UNSHARE, *argv]
        # a fresh environment: no proxies, tokens or PYTHON* variables leak in
        env = {"PATH": "/usr/bin:/bin", "HOME": str(root), "TMPDIR": str(root), "LANG": "C.UTF-8"}
        out_path, err_path = Path(io_dir) / "stdout", Path(io_dir) / "stderr"
        start = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                argv,
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, so the kill below reaches its children
                preexec_fn=_limiter(cfg, nproc, cgroup),
            )
            rc, cpu_used = _wait(proc, start + cfg.timeout_s)
        duration = time.monotonic() - start
        stderr = _tail(err_path, cfg.tail_chars)
        stdout = _tail(out_path, cfg.tail_chars)
    # CPU time is read from the child's rusage rather than its exit signal: unshare does not pass
    # SIGXCPU/SIGKILL deaths of its child on faithfully
    if rc is None or cpu_used >= _cpu_limit(cfg) - 0.05 or rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        status = TIMEOUT
    elif rc == 0:
        status = PASSED
    elif rc == _EXIT_ASSERTION:
        status = FAILED
    else:
        status = ERROR
    return SandboxResult(status, rc, stdout, stderr, duration, isolate)


def _wait(proc: subprocess.Popen, deadline: float) -> tuple[int | None, float]:
    """Exit status (None on timeout) and CPU seconds of the child and the descendants it reaped."""
    delay = 0.002
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            rc = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() >= deadline:
            _kill_group(proc.pid)
            _, status, usage = os.wait4(proc.pid, 0)
            rc = None
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    proc.returncode = rc if rc is not None else -signal.SIGKILL  # reaped here, so Popen must not wait
    _kill_group(proc.pid)  # leftovers that stayed in the group
    return rc, usage.ru_utime + usage.ru_stime


def _cpu_limit(cfg: SandboxConfig) -> int:
    return cfg.cpu_s if cfg.cpu_s is not None else math.ceil(cfg.timeout_s) + 1


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pgid, signal.SIGKILL)


def run_many(
    programs: Sequence[str], config: SandboxConfig | None = None, workers: int = 1
) -> list[SandboxResult]:
    """Run programs concurrently (each in its own sandbox); results in input order."""
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        return [run_python(p, config) for p in programs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_python(p, config), programs))
