"""Atomic file writes, hashing and checked JSON reads: an interrupted run never leaves a file that looks
complete, and a damaged one is reported as such."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from danlu.errors import OutputExistsError, RunBusy


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_temp(path: Path, create: Callable[[Path], None]) -> Path:
    """A hidden temp path beside `path`, made by `create` (which fails if it exists). Not mkstemp or
    mkdtemp: those force modes 0600 and 0700, and a model must get the umask's modes like any file."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            create(tmp)
            return tmp
        except FileExistsError:
            continue


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _create_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp(path, _create_file)
    mode = _mode(tmp_path)
    try:
        yield tmp_path
        tmp_path.chmod(mode)  # the writer may have replaced the file with a 0600 one
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory beside `path`; on success rename it to `path` (replacing an old directory,
    never a file). Until the rename, `path` is the old directory (or nothing): never a partial one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} is a file, not a directory; pass another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path, Path.mkdir)
    dir_mode = _mode(tmp)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_symlink():
                continue
            # the modes of a new file and directory under this umask (safetensors writes 0600 files)
            f.chmod(dir_mode & 0o666 if f.is_file() else dir_mode)
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
            elif f.is_dir():
                _fsync_dir(f)
        _fsync_dir(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _model_dir_kind(path: Path) -> str | None:
    """The kind of model dir at path ("danlu", "Hugging Face") or None: the only non-empty directories
    that a model write may replace."""
    config = path / "config.json"
    if not config.is_file():
        return None
    if (path / "model.safetensors").is_file() and (path / "tokenizer").is_dir():
        return "danlu"
    try:
        hf = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(hf, dict) and ("model_type" in hf or "architectures" in hf):
        return "Hugging Face" if any(path.glob("*.safetensors")) else None
    return None


def check_replaceable_output(path: str | Path, force: bool) -> None:
    """Refuse an output that a model-dir write (atomic_dir, which replaces the whole directory) would
    destroy: a file or a non-empty directory of other files always, an existing model dir unless force."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} is a file, not a directory; pass another path for the model dir")
    if not path.is_dir() or not any(path.iterdir()):
        return
    kind = _model_dir_kind(path)
    if kind is None:
        names = sorted(p.name for p in path.iterdir())
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise OutputExistsError(
            f"{path} is not empty and not a model dir (it holds {shown}); writing the model there would "
            "delete those files: pass another path (one that is missing or empty); --force replaces only "
            "an existing model dir"
        )
    if not force:
        raise OutputExistsError(
            f"{path} already holds a model ({kind} model dir); pass --force to replace it, or another path"
        )


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold `folder/.lock` while a run writes into the folder: a second danlu process on the same run
    dir fails at once with the holder's pid instead of racing it over the same stage outputs. The OS
    drops the lock when the process dies, so a killed run never leaves the folder locked."""
    path = Path(folder) / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RunBusy(
                f"another danlu process (pid {holder}) is running in {folder}; "
                "wait for it to finish or give this run another run_dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def read_json_object(path: str | Path, error: type[Exception], remedy: str) -> dict[str, Any]:
    """The JSON object in path; an unreadable, truncated or non-object file raises `error` with `remedy`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path} is unreadable or truncated ({e}); {remedy}") from None
    if not isinstance(data, dict):
        raise error(f"{path} should hold a JSON object; {remedy}")
    return data


def local_input_fingerprint(sources: list[str]) -> list[Any]:
    """Size and mtime of local input files, so editing a local corpus reruns the data stage."""
    out: list[Any] = []
    for src in sources:
        path = Path(src).expanduser()
        if not path.exists():
            out.append(src)  # a registry name (pinned by version and checksum) or a missing path
            continue
        files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
        out.append([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    return out
