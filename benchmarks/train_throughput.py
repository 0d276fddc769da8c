"""Training-step throughput of danlu's Transformer vs transformers.LlamaForCausalLM, in one run.

Both models get the same weights (mapped with danlu.interop.hf_llama), the same batch, the same targets
and the same fused AdamW; each step is forward + backward + optimizer step in fp32. The two are
timed in alternating order, repeat after repeat, so machine noise hits both; the table gives medians.

    python benchmarks/train_throughput.py [--sizes tiny small] [--steps 5] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown, markdown_table
from danlu.config import ModelConfig
from danlu.interop.hf_llama import to_hf_config, to_hf_state_dict
from danlu.model import build_model, resolve_model_config
from peak_flops import measure_peak_flops

# name: (model fields, vocab, seq_len, batch)
SIZES: dict[str, tuple[dict[str, int], int, int, int]] = {
    "tiny": ({"n_layer": 4, "n_embd": 256, "n_head": 4, "ffn_hidden": 688}, 4096, 256, 8),
    "small": ({"n_layer": 8, "n_embd": 512, "n_head": 8, "ffn_hidden": 1376}, 8192, 512, 4),
}


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)


def make_steps(size: str) -> tuple[Callable[[], float], Callable[[], float], int, int]:
    """(danlu step, HF step, tokens per step, flops per token); each step returns its loss."""
    from transformers import LlamaConfig, LlamaForCausalLM

    fields, vocab, seq, batch = SIZES[size]
    cfg = resolve_model_config(ModelConfig(max_seq_len=seq, **fields), vocab)
    torch.manual_seed(0)
    ours = build_model(cfg, "cpu").train()
    hf = LlamaForCausalLM(LlamaConfig(**to_hf_config(cfg), attn_implementation="sdpa")).train()
    hf.load_state_dict(to_hf_state_dict(ours), strict=not cfg.tie_embeddings)
    tokens = torch.randint(0, vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(1))
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    opt_ours, opt_hf = _optimizer(ours), _optimizer(hf)

    def step_ours() -> float:
        loss = F.cross_entropy(ours(x).view(-1, vocab), y.view(-1))
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        return loss.item()

    def step_hf() -> float:
        # shift_labels: HF uses our pre-shifted targets instead of shifting (and losing) one position
        loss = hf(input_ids=x, labels=y, shift_labels=y).loss
        loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)
        return loss.item()

    return step_ours, step_hf, batch * seq, ours.flops_per_token(seq)


def _timed(step: Callable[[], float], steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t0


def bench(size: str, steps: int, repeats: int, peak: float) -> list[str]:
    step_ours, step_hf, tokens, fpt = make_steps(size)
    first_ours, first_hf = step_ours(), step_hf()  # warm-up; same weights and batch: same loss
    if abs(first_ours - first_hf) > 1e-3:
        raise SystemExit(f"{size}: first-step losses differ ({first_ours} vs {first_hf}): not the same work")
    step_ours(), step_hf()
    t_ours, t_hf = [], []
    for r in range(repeats):
        order = [(step_ours, t_ours), (step_hf, t_hf)]
        for step, times in order if r % 2 == 0 else order[::-1]:
            times.append(_timed(step, steps))
    tps_ours = steps * tokens / statistics.median(t_ours)
    tps_hf = steps * tokens / statistics.median(t_hf)
    return [
        size,
        f"{tps_ours:,.0f}",
        f"{tps_hf:,.0f}",
        f"{tps_ours / tps_hf:.2f}",
        f"{100 * fpt * tps_ours / peak:.1f}%",
        f"{100 * fpt * tps_hf / peak:.1f}%",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--steps", type=int, default=5, help="training steps per timing")
    p.add_argument("--repeats", type=int, default=5, help="timings per model (medians are reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = measure_peak_flops()
    rows = [bench(size, args.steps, args.repeats, peak) for size in args.sizes]
    header = ["size", "danlu tok/s", "HF Llama tok/s", "danlu/HF", "danlu MFU", "HF MFU"]
    print(markdown_table(header, rows))
    print()
    print(
        f"fp32, forward + backward + fused AdamW; median of {args.repeats} x {args.steps} steps; "
        f"MFU = (6 N_matmul + 12 L d T) tok/s / measured peak {peak / 1e9:.1f} GFLOP/s"
    )
    print(machine_markdown())


if __name__ == "__main__":
    main()
