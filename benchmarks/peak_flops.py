"""Measured fp32 matmul peak (GFLOP/s) at the current thread count: the denominator of CPU MFU.

python benchmarks/peak_flops.py [--n 2048] [--repeats 7] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown, markdown_table


def _time_mm(n: int, dtype: torch.dtype, device: str, repeats: int, inner: int) -> list[float]:
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, dtype=dtype, device=device, generator=gen)
    b = torch.randn(n, n, dtype=dtype, device=device, generator=gen)
    out = torch.empty(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):  # warm-up: thread pool, caches, clocks
        torch.mm(a, b, out=out)
    sync()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        sync()
        rates.append(inner * 2 * n**3 / (time.perf_counter() - t0))
    return rates


def measure_peak_flops(
    n: int = 2048, repeats: int = 7, dtype: torch.dtype = torch.float32, device: str = "cpu", inner: int = 3
) -> float:
    """Median FLOP/s of n x n torch.mm over `repeats` timings of `inner` matmuls, after warm-up."""
    return statistics.median(_time_mm(n, dtype, device, repeats, inner))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048, help="matrix size")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rates = _time_mm(args.n, torch.float32, "cpu", args.repeats, 3)
    rows = [
        [
            f"fp32 torch.mm {args.n}x{args.n}",
            str(torch.get_num_threads()),
            f"{statistics.median(rates) / 1e9:.1f}",
            f"{min(rates) / 1e9:.1f}-{max(rates) / 1e9:.1f}",
        ]
    ]
    print(markdown_table(["op", "threads", "median GFLOP/s", "range"], rows))
    print()
    print(machine_markdown())


if __name__ == "__main__":
    main()
