"""Hugging Face datasets as a document source, streamed (no full download), where a network allows.

A source spec `hf:OWNER/NAME[:CONFIG][@SPLIT]` (e.g. `hf:HuggingFaceFW/fineweb-edu:sample-10BT@train`,
`hf:roneneldan/TinyStories`) reads the split's "text" field through `datasets.load_dataset(...,
streaming=True)`; the default offline recipes never use it. Records without a string text field are
counted as malformed instead of stopping the run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from danlu.data.readers import ReadReport, _problem
from danlu.data.sources import Document
from danlu.errors import DataError

PREFIX = "hf:"
_SPEC = re.compile(
    r"^hf:(?P<name>[\w.-]+(?:/[\w.-]+)?)(?::(?P<config>[\w.-]+))?(?:@(?P<split>[\w.\[\]:%-]+))?$"
)


def parse_spec(spec: str) -> dict[str, str | None]:
    """{"name", "config", "split"} of an `hf:` source spec."""
    m = _SPEC.match(spec)
    if m is None:
        raise DataError(f"{spec!r} is not a Hugging Face source; write hf:OWNER/NAME[:CONFIG][@SPLIT]")
    return {"name": m["name"], "config": m["config"], "split": m["split"] or "train"}


def read_hf_dataset(
    name: str,
    config: str | None = None,
    split: str = "train",
    text_field: str = "text",
    report: ReadReport | None = None,
    **load_kwargs: Any,
) -> Iterator[Document]:
    """Stream documents {"id", "text", "source", "meta"} from a dataset (load_kwargs go to load_dataset,
    e.g. data_files for the generic "json"/"parquet" builders)."""
    try:
        import datasets
    except ImportError:
        raise DataError("Hugging Face sources need the datasets package: pip install 'danlu[hf]'") from None
    source = f"hf:{name}" + (f":{config}" if config else "")
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True, **load_kwargs)
    except Exception as e:  # offline, unknown dataset, bad config: all surface from load_dataset
        raise DataError(f"cannot stream {source}@{split}: {type(e).__name__}: {e}") from None
    for i, record in enumerate(stream):
        text = record.get(text_field)
        if not isinstance(text, str):
            _problem(report, "missing_text", f"{source} record {i} has no string field {text_field!r}")
            continue
        meta = {
            k: v for k, v in record.items() if k != text_field and isinstance(v, str | int | float | bool)
        }
        yield {"id": f"{source}@{split}/{i}", "text": text, "source": source, "meta": meta}


def read_hf_spec(spec: str, report: ReadReport | None = None) -> Iterator[Document]:
    parts = parse_spec(spec)
    return read_hf_dataset(str(parts["name"]), parts["config"], str(parts["split"]), report=report)
