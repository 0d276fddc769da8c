"""Training-step throughput of danlu's Transformer vs transformers.LlamaForCausalLM, in one run.

Both models get the same weights (mapped with danlu.interop.hf_llama), the same batch, the same targets
and the same fused AdamW; each step is forward + backward + optimizer step, in fp32 on a CPU and under
bf16 autocast (fp32 master weights) on a CUDA GPU. The two are timed in alternating order, repeat after
repeat, so machine noise hits both; the table gives medians.

    python benchmarks/train_throughput.py [--sizes tiny small] [--steps 5] [--repeats 5]
    python benchmarks/train_throughput.py --quick      # 3 repeats x 3 steps: a check that it runs
    python benchmarks/train_throughput.py --device cuda [--sizes small 124m] [--compile]

HF runs with use_cache=False (config and call), as in training: no KV cache is built; a step that
returns one stops the benchmark. MFU on a GPU is against the datasheet's dense bf16 peak (the
convention of the field's reports); the measured matmul peak of the same run is printed beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown, markdown_table
from danlu.interop.hf_llama import to_hf_config, to_hf_state_dict
from danlu.model import build_model, resolve_model_config
from danlu.model.config import ModelConfig
from danlu.train.metrics import peak_flops
from peak_flops import measure_peak_flops

# name: (model fields, vocab, seq_len, batch on a CPU, batch on a GPU)
SIZES: dict[str, tuple[dict[str, int], int, int, int, int]] = {
    "tiny": ({"n_layer": 4, "n_embd": 256, "n_head": 4, "ffn_hidden": 688}, 4096, 256, 8, 64),
    "small": ({"n_layer": 8, "n_embd": 512, "n_head": 8, "ffn_hidden": 1376}, 8192, 512, 4, 64),
    # GPT-2 small's shape as a Llama (SwiGLU width 8/3 d, RoPE, RMSNorm): 124M parameters
    "124m": ({"n_layer": 12, "n_embd": 768, "n_head": 12, "ffn_hidden": 2048}, 50304, 1024, 1, 32),
}


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[object]:
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_steps(
    size: str, device: torch.device, dtype: str, compile: bool
) -> tuple[Callable[[], float], Callable[[], float], int, int]:
    """(danlu step, HF step, tokens per step, flops per token); each step returns its loss."""
    from transformers import LlamaConfig, LlamaForCausalLM

    fields, vocab, seq, cpu_batch, gpu_batch = SIZES[size]
    batch = gpu_batch if device.type == "cuda" else cpu_batch
    cfg = resolve_model_config(ModelConfig(max_seq_len=seq, **fields), vocab)
    torch.manual_seed(0)
    ours = build_model(cfg, "cpu").train()
    hf_cfg = LlamaConfig(**to_hf_config(cfg), attn_implementation="sdpa", use_cache=False)
    hf = LlamaForCausalLM(hf_cfg).train()
    hf.load_state_dict(to_hf_state_dict(ours), strict=not cfg.tie_embeddings)
    ours, hf = ours.to(device), hf.to(device)
    tokens = torch.randint(0, vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(1))
    x, y = tokens[:, :-1].contiguous().to(device), tokens[:, 1:].contiguous().to(device)
    opt_ours, opt_hf = _optimizer(ours), _optimizer(hf)
    run_ours = torch.compile(ours) if compile else ours
    run_hf = torch.compile(hf) if compile else hf

    def step_ours() -> float:
        with _autocast(device, dtype):
            loss = F.cross_entropy(run_ours(x).view(-1, vocab).float(), y.view(-1))
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        return loss.item()

    def step_hf() -> float:
        with _autocast(device, dtype):
            # shift_labels: HF uses our pre-shifted targets instead of shifting (and losing) one position
            out = run_hf(input_ids=x, labels=y, shift_labels=y, use_cache=False)
        if out.past_key_values is not None:
            raise SystemExit("HF built a KV cache in a training step: not the same work")
        loss = out.loss
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


def bench(
    size: str, steps: int, repeats: int, peak: float, device: torch.device, dtype: str, compile: bool
) -> list[str]:
    step_ours, step_hf, tokens, fpt = make_steps(size, device, dtype, compile)
    first_ours, first_hf = step_ours(), step_hf()  # warm-up; same weights and batch: same loss
    if abs(first_ours - first_hf) > (1e-3 if dtype == "fp32" else 3e-2):
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
        str(tokens),
        f"{tps_ours:,.0f}",
        f"{tps_hf:,.0f}",
        f"{tps_ours / tps_hf:.2f}",
        f"{100 * fpt * tps_ours / peak:.1f}%",
        f"{100 * fpt * tps_hf / peak:.1f}%",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        choices=list(SIZES),
        help="default: tiny small on a CPU, small 124m on a GPU",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["fp32", "bf16"],
        help="default: fp32 on a CPU, bf16 autocast on a GPU",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--steps", type=int, default=5, help="training steps per timing")
    p.add_argument("--repeats", type=int, default=5, help="timings per model (medians are reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="3 repeats x 3 steps (a check that it runs)")
    args = p.parse_args()
    if args.quick:
        args.steps, args.repeats = 3, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    dtype = args.dtype or ("bf16" if gpu else "fp32")
    sizes = args.sizes or (["small", "124m"] if gpu else ["tiny", "small"])
    if gpu:
        measured = measure_peak_flops(
            n=8192, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32, device=args.device, inner=10
        )
        peak = peak_flops("cuda", dtype)
        peak_note = (
            f"{'datasheet' if peak != measured else 'measured'} peak {peak / 1e12:.0f} TFLOP/s "
            f"(measured {dtype} 8192^3 matmul: {measured / 1e12:.0f} TFLOP/s)"
        )
    else:
        peak = measure_peak_flops()
        peak_note = f"measured peak {peak / 1e9:.1f} GFLOP/s"
    rows = [bench(size, args.steps, args.repeats, peak, device, dtype, args.compile) for size in sizes]
    header = ["size", "tokens/step", "danlu tok/s", "HF Llama tok/s", "danlu/HF", "danlu MFU", "HF MFU"]
    print(markdown_table(header, rows))
    print()
    mode = "fp32" if dtype == "fp32" else "bf16 autocast, fp32 master weights"
    print(
        f"{mode}{', torch.compile' if args.compile else ', eager'}, forward + backward + fused AdamW; "
        f"median of {args.repeats} x {args.steps} steps; MFU = (6 N_matmul + 12 L d T) tok/s / {peak_note}"
    )
    print(machine_markdown())


if __name__ == "__main__":
    main()
