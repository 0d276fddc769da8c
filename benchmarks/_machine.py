"""Machine description printed under every benchmark table (CPU model, cores, threads, versions, date)."""

from __future__ import annotations

import datetime
import os
import platform

import torch

from danlu.train.metrics import cpu_model


def machine_info() -> dict[str, str]:
    info = {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_markdown() -> str:
    """One line for BENCHMARKS.md: `machine: cpu ... | cores 2 | ...`."""
    return "machine: " + " | ".join(f"{k} {v}" for k, v in machine_info().items())


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
