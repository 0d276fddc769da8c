"""`danlu data report`: a readable summary of a documents directory, with histograms.

Writes `<docs>/report/report.md` with the per-source and per-block counts of the manifest (documents in
and out, removals by reason, examples of removed documents, PII placeholders, malformed input), and
PNG histograms of document lengths and of every numeric score the blocks wrote into `meta`
(`gopher_quality.mean_word_length`, `lang_score`, `toxicity.score`, ...), read from the output splits.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from danlu.data.documents import SPLITS, read_documents
from danlu.errors import DataError

log = logging.getLogger(__name__)


def find_docs_dir(path: str | Path) -> Path:
    """A documents directory itself, or the `data/` directory of a run."""
    path = Path(path).expanduser()
    for cand in (path, path / "data"):
        if (cand / "manifest.json").is_file():
            return cand
    raise DataError(
        f"{path} is neither a documents directory nor a run directory (no manifest.json); run danlu data"
    )


def _numbers(meta: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    for k, v in meta.items():
        key = f"{prefix}{k}"
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            yield key, float(v)
        elif isinstance(v, dict) and not prefix:  # one level: block name -> its scores
            yield from _numbers(v, f"{key}.")


def collect_values(docs_dir: Path, max_docs: int = 200_000) -> dict[str, list[float]]:
    """Lengths (chars, words) and numeric meta scores of up to max_docs output documents."""
    values: dict[str, list[float]] = {"length.chars": [], "length.words": []}
    n = 0
    for split in SPLITS:
        for d in read_documents(docs_dir, split):
            values["length.chars"].append(len(d["text"]))
            values["length.words"].append(len(d["text"].split()))
            for k, v in _numbers(d["meta"]):
                if not k.startswith("pii."):
                    values.setdefault(k, []).append(v)
            n += 1
            if n >= max_docs:
                return values
    return values


def _histogram(name: str, vals: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arr = np.asarray(vals, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    log_x = name.startswith("length.") and arr.min() > 0 and arr.max() / arr.min() > 100
    bins = np.geomspace(arr.min(), arr.max(), 50) if log_x else 50
    ax.hist(arr, bins=bins, color="#4878a8")
    if log_x:
        ax.set_xscale("log")
    ax.set_title(f"{name} ({len(arr)} documents)")
    ax.set_xlabel(name)
    ax.set_ylabel("documents")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _table(rows: list[list[Any]], header: list[str]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _clip(text: str, n: int = 160) -> str:
    one_line = " ".join(text.split())
    return (one_line[:n] + "...") if len(one_line) > n else one_line


def write_report(path: str | Path) -> Path:
    """Write report.md and histograms under <docs>/report/; return the report.md path."""
    docs_dir = find_docs_dir(path)
    manifest = json.loads((docs_dir / "manifest.json").read_text())
    out = docs_dir / "report"
    out.mkdir(exist_ok=True)
    lines = [f"# Data report: {docs_dir}", ""]
    pipeline = manifest.get("pipeline")
    if pipeline:
        lines += ["Pipeline: " + " -> ".join(b["block"] for b in pipeline), ""]
    splits = manifest.get("splits", {})
    lines += ["## Splits", ""]
    lines += _table(
        [[k, v["documents"], v["chars"]] for k, v in splits.items()], ["split", "documents", "chars"]
    )
    lines += ["", "## Sources", ""]
    src_rows = []
    for name, s in manifest.get("sources", {}).items():
        removed = {
            k: v
            for k, v in s.items()
            if k not in ("documents_in", "documents_out", "chars_out", "malformed_input")
        }
        bad = s.get("malformed_input", {}).get("problems", {})
        src_rows.append(
            [name, s["documents_in"], s["documents_out"], s.get("chars_out", ""), removed or "", bad or ""]
        )
    lines += _table(src_rows, ["source", "in", "out", "chars out", "removed", "malformed input"])
    blocks = manifest.get("blocks", {})
    if blocks:
        lines += ["", "## Blocks", ""]
        rows = [
            [
                n,
                b.get("documents_in", 0),
                b.get("documents_out", 0),
                b.get("removed_by_reason") or "",
                b.get("counts") or "",  # a block's own totals, e.g. what substring_dedup cut
            ]
            for n, b in blocks.items()
        ]
        lines += _table(rows, ["block", "in", "out", "removed by reason", "other counts"])
        for n, b in blocks.items():
            for reason, shown in (b.get("examples") or {}).items():
                lines += ["", f"### {n}: {reason}", ""]
                lines += [f"- `{e['id']}`: {_clip(e['text'])}" for e in shown]
    if manifest.get("pii"):
        lines += ["", "## PII replaced (in the output)", ""]
        lines += _table([[k, v] for k, v in manifest["pii"].items()], ["kind", "count"])
    for name, s in manifest.get("sources", {}).items():
        examples = s.get("malformed_input", {}).get("examples", {})
        if examples:
            lines += ["", f"## Malformed input in {name}", ""]
            lines += [f"- {kind}: {where}" for kind, shown in examples.items() for where in shown]
    values = collect_values(docs_dir)
    lines += ["", "## Histograms", ""]
    for name, vals in sorted(values.items()):
        if len(vals) < 2 or min(vals) == max(vals):
            continue
        png = out / f"{name.replace('/', '_')}.png"
        _histogram(name, vals, png)
        lines += [f"![{name}]({png.name})"]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    log.info("report written to %s", report)
    return report
