"""Local document files: .txt (one document per file), .jsonl (plain, .gz, .zst), .parquet, folders.

jsonl and parquet records need a "text" field. Readers run in one of two modes:
  strict (report=None): the first malformed record or file raises a DataError naming it;
  lenient (a ReadReport): malformed input is counted and up to a few examples are kept, the rest of
    the file is read. Nothing is dropped silently: every skipped record or file is in the report.
Text that is not valid UTF-8 is counted as malformed: kept in lenient mode, decoded with U+FFFD
replacements, while those are under MAX_REPLACED of its characters (a stray byte, a few accented letters
in another encoding), and dropped above it ("undecodable": a binary file, or text that would be noise).
"""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from danlu.data.sources import Document
from danlu.errors import DataError

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
MAX_REPLACED = 0.01  # the share of U+FFFD replacements (per character) above which text is not kept


@dataclass
class ReadReport:
    """Counts of malformed input by problem, with a few locations of each, and of what was read."""

    problems: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    files: int = 0
    records: int = 0
    max_examples: int = 5

    def add(self, problem: str, where: str) -> None:
        self.problems[problem] += 1
        shown = self.examples.setdefault(problem, [])
        if len(shown) < self.max_examples:
            shown.append(where)

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "records": self.records,
            "problems": dict(sorted(self.problems.items())),
            "examples": {k: self.examples[k] for k in sorted(self.examples)},
        }


def _problem(report: ReadReport | None, problem: str, message: str) -> None:
    """Raise in strict mode; count in lenient mode."""
    if report is None:
        raise DataError(message)
    report.add(problem, message)


def _suffix(path: Path) -> str | None:
    return next((s for s in SUFFIXES if path.name.endswith(s)), None)


def _replaced(raw: bytes, error: UnicodeDecodeError, where: str, report: ReadReport | None) -> str | None:
    """Bytes that are not valid UTF-8, decoded with U+FFFD (counted as bad_encoding); None (counted as
    undecodable) where the replacements are MAX_REPLACED of the characters or more."""
    text = raw.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - raw.count("\ufffd".encode())  # a U+FFFD in the input is text
    share = replaced / len(text)
    if share >= MAX_REPLACED:
        _problem(
            report,
            "undecodable",
            f"{where}: {share:.0%} of it is not UTF-8 (from byte {error.start}), so it is binary or in "
            "another encoding; skipped. Convert text to UTF-8",
        )
        return None
    _problem(report, "bad_encoding", f"{where}: not UTF-8 (byte {error.start}); convert it to UTF-8")
    return text


def _read_txt(path: Path, report: ReadReport | None) -> Iterator[Document]:
    try:
        text: str | None = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        text = _replaced(path.read_bytes(), e, str(path), report)
    if text is None:
        return
    if report is not None and not text.strip():
        report.add("empty_file", str(path))
        return
    yield {"id": str(path), "text": text, "source": str(path), "meta": {"file": str(path)}}


def _open_binary(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise DataError(
                f"{path}: reading .zst needs the zstandard package: pip install 'danlu[data]'"
            ) from None
        # a BufferedReader gives line iteration over the decompressing stream
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _read_jsonl(path: Path, report: ReadReport | None) -> Iterator[Document]:
    n_docs = 0
    lineno = 0
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    line: str | None = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    line = _replaced(raw, e, f"{path}:{lineno}", report)
                if line is None:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    _problem(report, "bad_json", f"{path}:{lineno}: not valid JSON ({e.msg})")
                    continue
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    _problem(
                        report,
                        "missing_text",
                        f'{path}:{lineno}: each line must be an object with a string "text" field',
                    )
                    continue
                meta = {"file": str(path), **{k: v for k, v in row.items() if k not in ("text", "id")}}
                n_docs += 1
                yield {
                    "id": str(row.get("id", f"{path}:{lineno}")),
                    "text": row["text"],
                    "source": str(path),
                    "meta": meta,
                }
    except (EOFError, OSError, ValueError) as e:  # truncated or corrupt .gz/.zst stream
        if isinstance(e, PermissionError | IsADirectoryError):
            raise
        _problem(report, "corrupt_file", f"{path}: unreadable after line {lineno} ({e}); re-create the file")
        return
    if report is not None and n_docs == 0 and lineno == 0:
        report.add("empty_file", str(path))


def _read_parquet(path: Path, report: ReadReport | None) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        _problem(report, "corrupt_file", f"{path} is not a readable parquet file ({e})")
        return
    if "text" not in pf.schema_arrow.names:
        _problem(
            report,
            "missing_text",
            f'{path} has no "text" column (columns: {", ".join(pf.schema_arrow.names)})',
        )
        return
    has_id = "id" in pf.schema_arrow.names
    row = 0
    try:
        for batch in pf.iter_batches(columns=["text", "id"] if has_id else ["text"]):
            cols = batch.to_pydict()
            for i, text in enumerate(cols["text"]):
                doc_id = str(cols["id"][i]) if has_id else f"{path}:{row}"
                row += 1
                if text is None:
                    if report is not None:
                        report.add("missing_text", f"{path}: row {row - 1} has a null text")
                    continue
                yield {"id": doc_id, "text": text, "source": str(path), "meta": {"file": str(path)}}
    except (pa.ArrowException, OSError) as e:
        _problem(report, "corrupt_file", f"{path}: unreadable after row {row} ({e}); re-create the file")
    if report is not None and pf.metadata.num_rows == 0:
        report.add("empty_file", str(path))


_READERS = {
    ".txt": _read_txt,
    ".jsonl": _read_jsonl,
    ".jsonl.gz": _read_jsonl,
    ".jsonl.zst": _read_jsonl,
    ".parquet": _read_parquet,
}


def input_files(path: str | Path) -> list[Path]:
    """The supported files of a path: itself, or every one under a folder (sorted, so order is stable)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"input {path} not found")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p))
        if not files:
            raise DataError(f"folder {path} holds no .txt/.jsonl/.parquet files (nor .jsonl.gz/.jsonl.zst)")
        return files
    if _suffix(path) is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(SUFFIXES)}")
    return [path]


def read_path(path: str | Path, report: ReadReport | None = None) -> Iterator[Document]:
    """Documents of a local file or folder; malformed input raises, or is counted in `report` if given."""
    for f in input_files(path):
        if report is not None:
            report.files += 1
        try:
            for doc in _READERS[_suffix(f) or ""](f, report):
                if report is not None:
                    report.records += 1
                yield doc
        except PermissionError:
            raise DataError(f"{f} is not readable (permission denied)") from None
        except IsADirectoryError:
            raise DataError(f"{f} is a directory, expected a file") from None
