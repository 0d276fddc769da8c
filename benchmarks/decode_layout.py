"""Matmul time per decode step on SmolLM2-135M's shapes: `F.linear` on plain [out, in] weights against
danlu's decode layout (danlu.infer.layout.PackedLinear, oneDNN-packed), in one run.

Random fp32 weights of the model's shapes: the 120 block Linears (30 blocks of qkv 960x576, proj 576x576,
gate_up 3072x576, down 576x1536), each its own matrix so that a step streams them from memory as a real
decode does, and the tied LM head (49152x576) apart. ms per step is the best of --repeats rounds of
--calls steps each, at each batch (rows per step; 512 is a prefill).

    .venv/bin/python benchmarks/decode_layout.py [--threads 2] [--batch 1,8,32,512]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown, markdown_table
from danlu.infer.layout import PackedLinear, onednn_available

BLOCK_SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
HEAD_SHAPE = (49152, 576)


def linears(shapes: list[tuple[int, int]]) -> list[nn.Linear]:
    return [nn.Linear(k, n, bias=False).requires_grad_(False) for n, k in shapes]


def step_ms(mods: list[nn.Module], batch: int, calls: int, repeats: int) -> float:
    xs = {k: torch.randn(batch, k) for k in {m.in_features for m in mods}}
    best = float("inf")
    with torch.inference_mode():
        for m in mods:  # warm-up
            m(xs[m.in_features])
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                for m in mods:
                    m(xs[m.in_features])
            best = min(best, (time.perf_counter() - t0) / calls)
    return 1e3 * best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", default="1,8,32,512")
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if not onednn_available():
        raise SystemExit("torch here has no oneDNN linear; the decode layout is off")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    blocks = linears(BLOCK_SHAPES * 30)
    head = linears([HEAD_SHAPE])
    variants = {
        "blocks": (blocks, [PackedLinear(m) for m in blocks]),
        "head": (head, [PackedLinear(m) for m in head]),
    }
    rows = []
    for b in (int(s) for s in args.batch.split(",")):
        for name, (plain, packed) in variants.items():
            if name == "head" and b > 32:
                continue  # a prefill runs the head on its last position only
            t_plain = step_ms(plain, b, args.calls, args.repeats)
            t_packed = step_ms(packed, b, args.calls, args.repeats)
            rows.append([name, str(b), f"{t_plain:.1f}", f"{t_packed:.1f}", f"{t_plain / t_packed:.2f}x"])
    print(markdown_table(["weights", "batch", "F.linear ms", "packed ms", "speed-up"], rows))
    print()
    print(machine_markdown())
    print("command: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
