"""Local document files: .txt (one document per file), .jsonl and .parquet (a "text" field), folders."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from danlu.data.sources import Document
from danlu.errors import DataError

SUFFIXES = (".txt", ".jsonl", ".parquet")


def _read_txt(path: Path) -> Iterator[Document]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}); convert it to UTF-8") from None
    yield {"id": str(path), "text": text, "source": str(path), "meta": {"file": str(path)}}


def _read_jsonl(path: Path) -> Iterator[Document]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise DataError(f'{path}:{lineno}: each line must be an object with a string "text" field')
            meta = {"file": str(path), **{k: v for k, v in row.items() if k not in ("text", "id")}}
            yield {
                "id": str(row.get("id", f"{path}:{lineno}")),
                "text": row["text"],
                "source": str(path),
                "meta": meta,
            }


def _read_parquet(path: Path) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path} is not a readable parquet file ({e})") from None
    if "text" not in pf.schema_arrow.names:
        raise DataError(f'{path} has no "text" column (columns: {", ".join(pf.schema_arrow.names)})')
    has_id = "id" in pf.schema_arrow.names
    row = 0
    for batch in pf.iter_batches(columns=["text", "id"] if has_id else ["text"]):
        cols = batch.to_pydict()
        for i, text in enumerate(cols["text"]):
            doc_id = str(cols["id"][i]) if has_id else f"{path}:{row}"
            row += 1
            if text is not None:
                yield {"id": doc_id, "text": text, "source": str(path), "meta": {"file": str(path)}}


_READERS = {".txt": _read_txt, ".jsonl": _read_jsonl, ".parquet": _read_parquet}


def read_path(path: str | Path) -> Iterator[Document]:
    """Documents of a local file or of every supported file under a folder (sorted, so order is stable)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"input {path} not found")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise DataError(f"folder {path} holds no {'/'.join(SUFFIXES)} files")
    elif path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(SUFFIXES)}")
    else:
        files = [path]
    for f in files:
        try:
            yield from _READERS[f.suffix](f)
        except PermissionError:
            raise DataError(f"{f} is not readable (permission denied)") from None
        except IsADirectoryError:
            raise DataError(f"{f} is a directory, expected a file") from None
