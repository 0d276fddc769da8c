"""Training metrics: `metrics.jsonl` (one JSON object per logged step), a loss plot, and MFU.

MFU = model FLOPs per token * tokens/s / peak FLOP/s of the device. On CUDA the peak is the dense
bf16 tensor-core figure from the table below; elsewhere it is measured once with an fp32 matmul.
"""

from __future__ import annotations

import functools
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch

from danlu.errors import DataError
from danlu.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"

# Dense bf16 tensor-core peak FLOP/s by (lower-case) device-name substring; first match wins.
CUDA_BF16_PEAK = (
    ("gb200", 2.5e15),
    ("b200", 2.25e15),
    ("h200", 989e12),
    ("gh200", 989e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("h800", 989e12),
    ("a100", 312e12),
    ("a800", 312e12),
    ("l40s", 362e12),
    ("l4", 121e12),
    ("a10", 125e12),
)


class MetricsLogger:
    """Append-only JSON lines, flushed per line so a killed run loses at most the line being written."""

    def __init__(self, out_dir: str | Path, resume_step: int = 0, sinks: list[Any] | None = None):
        self.sinks = sinks or []  # more destinations (TensorBoard, W&B): see danlu.train.sinks
        self.path = Path(out_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)

    def _truncate_after(self, step: int) -> None:
        """Keep only records up to `step` (the step training resumes from), so nothing is logged twice."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if isinstance(rec, dict) and rec.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def rewind(self, step: int) -> None:
        """Drop the records after `step` (training went back to it)."""
        self._f.close()
        self._truncate_after(step)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def log(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        for sink in self.sinks:
            sink.log(record)

    def close(self) -> None:
        self._f.close()
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a metrics.jsonl file (a cut-off last line is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_metrics(metrics_path: str | Path, png_path: str | Path) -> None:
    """Train and validation loss against step, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display here; must come before pyplot is imported
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if train:
            ax.plot(*zip(*train, strict=True), label="train loss", lw=1)
        if val:
            ax.plot(*zip(*val, strict=True), "o-", label="val loss", ms=3)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        if train or val:
            ax.legend()
        with atomic_path(png_path) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_training(metrics_path: str | Path, png_path: str | Path) -> Path:
    """Four panels against step (loss and val loss; LR; gradient norm; tokens/s and MFU), with the
    run's events (spikes, rollbacks, overflows, alerts) as vertical lines. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    steps = [r for r in records if "loss" in r and "event" not in r]
    if not steps:
        raise DataError(f"{metrics_path} holds no training steps to plot")

    def series(key: str, rows: list[dict[str, Any]] = steps) -> tuple[list[int], list[float]]:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), dpi=100, sharex=True)
    try:
        (ax_loss, ax_lr), (ax_grad, ax_speed) = axes
        ax_loss.plot(*series("loss"), lw=1, label="train")
        ax_loss.plot(*series("val_loss", records), "o-", ms=3, label="val")
        ax_loss.set_ylabel("loss (nats/token)")
        ax_loss.legend()
        ax_lr.plot(*series("lr"), lw=1)
        ax_lr.set_ylabel("learning rate")
        ax_grad.plot(*series("grad_norm"), lw=1)
        ax_grad.set_ylabel("gradient norm (before clipping)")
        ax_grad.set_yscale("log")
        ax_speed.plot(*series("tokens_per_s"), lw=1, color="tab:green")
        ax_speed.set_ylabel("tokens/s")
        mfu = ax_speed.twinx()
        x, y = series("mfu")
        mfu.plot(x, [100 * v for v in y], lw=0.8, color="tab:gray", alpha=0.6)
        mfu.set_ylabel("MFU %")
        colors = {"spike": "tab:orange", "rollback": "tab:red", "severe_spike_skipped": "tab:red"}
        for ev in (r for r in records if "event" in r):
            for ax in axes.flat:
                ax.axvline(
                    ev["step"], color=colors.get(ev["event"], "tab:purple"), lw=0.8, ls="--", alpha=0.7
                )
        for ax in axes.flat:
            ax.grid(alpha=0.3)
        for ax in axes[1]:
            ax.set_xlabel("step")
        fig.tight_layout()
        with atomic_path(png_path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return Path(png_path)


def _measure_matmul_flops(
    device: torch.device, dtype: torch.dtype, n: int = 512, seconds: float = 0.2
) -> float:
    """Best FLOP/s of an n x n matmul, timed for about `seconds`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0))
    return best


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


PEAKS_FILE = "peak_flops.json"  # in the danlu cache: the best matmul rate measured per machine setting


def _machine_key(device_type: str, dtype_name: str, threads: int) -> str:
    if device_type == "cuda":
        what = torch.cuda.get_device_name()
    else:
        what = f"{cpu_model()} x{threads or torch.get_num_threads()} threads"
    return f"{device_type} {dtype_name} {what} torch {torch.__version__}"


def _best_measured(key: str, flops: float) -> float:
    """The highest rate measured for this machine setting so far, this one included (kept in the danlu
    cache). A peak measured while other jobs load the machine is low and inflates MFU past 100%; the best
    of all measurements approaches the machine's real peak."""
    from danlu.fetch import cache_dir
    from danlu.io import atomic_write_json

    path = cache_dir() / PEAKS_FILE
    try:
        known = json.loads(path.read_text())
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    best = known.get(key)
    if isinstance(best, int | float) and best >= flops:
        return float(best)
    known[key] = flops
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, known)
    except OSError as e:  # a read-only cache only costs the memory of better measurements
        log.debug("could not record the matmul peak in %s: %s", path, e)
    return flops


@functools.cache
def peak_flops(device_type: str, dtype_name: str = "fp32", threads: int = 0) -> float:
    """Peak FLOP/s used for MFU; cached per (device, dtype, thread count) for the process.

    CUDA bf16 uses the datasheet peak of known GPUs; otherwise a short matmul is timed and the best
    rate ever measured for this machine setting is used (see _best_measured). The measurement uses its
    own RNG so it does not disturb the training seed.
    """
    if device_type == "cuda":
        name = torch.cuda.get_device_name().lower()
        if dtype_name == "bf16":
            for key, flops in CUDA_BF16_PEAK:
                if key in name:
                    return flops
    device = torch.device(device_type)
    dtype = torch.bfloat16 if dtype_name == "bf16" and device_type == "cuda" else torch.float32
    with torch.random.fork_rng(devices=[device] if device_type == "cuda" else []):
        measured = _measure_matmul_flops(device, dtype)
    flops = _best_measured(_machine_key(device_type, dtype_name, threads), measured)
    log.info(
        "%s %s matmul peak: %.1f GFLOP/s (measured now %.1f)",
        device_type,
        dtype_name,
        flops / 1e9,
        measured / 1e9,
    )
    return flops
