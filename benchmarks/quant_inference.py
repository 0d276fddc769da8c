"""Greedy decode speed and weight memory of a model in fp32, int8 and int4 through danlu's Engine, beside
torch's dynamic int8 quantization of the same Linears, in one run.

    .venv/bin/python benchmarks/quant_inference.py MODEL_DIR [--tokens 32] [--repeats 3] [--batch 1,8]

Variants: fp32 (the model dir as loaded), danlu int8 (RTN, symmetric per channel: Int8Linear on
torch._weight_int8pack_mm), danlu int4 (RTN g128: Int4Linear on torch._weight_int4pack_mm_for_cpu) and
torch.ao.quantization.quantize_dynamic (qint8) of the same Linears; the skip-list (embeddings, the tied
lm_head, norms) stays fp32 in all of them. Every variant runs the same prompt through its own Engine
(prefix cache off, ignore_eos), the variants interleaved in each repeat; tokens/s is the median over
repeats of generated tokens over wall time (the short prompt's prefill included). Weight memory counts
every tensor the model keeps (parameters, buffers, packed weights, the int4 kernel's own layout).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.infer.engine import Engine
from danlu.infer.params import SamplingParams
from danlu.model_dir import load_model
from danlu.quant.apply import quantize_model, targets
from danlu.quant.config import QuantConfig
from danlu.quant.linear import QuantLinear

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time, in a land far away,"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, tuple | list):
        return [t for o in obj for t in _tensors(o)]
    return []


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every tensor the model holds, each storage once: parameters, buffers, what a quantized
    kernel keeps beside them, and torch's packed dynamic-quantization weights. Read from the modules,
    not from state_dict(), which hands an Int4Linear's codes back in the saved layout."""
    seen: dict[int, int] = {}
    tensors = [*model.parameters(), *model.buffers()]
    for m in model.modules():
        if isinstance(m, QuantLinear):
            tensors += m.kernel_tensors()
        elif hasattr(m, "_packed_params"):  # torch.ao dynamic quantized Linear
            tensors += _tensors(m._packed_params._weight_bias())
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def torch_dynamic(model: nn.Module, names: list[str]) -> nn.Module:
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {n: default_dynamic_qconfig for n in names}, dtype=torch.qint8)


def decode(engine: Engine, prompt: list[int], batch: int, tokens: int) -> tuple[float, list[int]]:
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    t0 = time.perf_counter()
    done = engine.generate([prompt] * batch, params)
    seconds = time.perf_counter() - t0
    return batch * tokens / seconds, list(done[0].token_ids)


def agree(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an fp32 danlu model dir (e.g. danlu import smollm2-135m-instruct OUT)")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fp32, tok, cfg = load_model(args.model)
    names = targets(fp32, QuantConfig())
    variants: dict[str, nn.Module] = {"danlu fp32": fp32}
    for label, qcfg in (
        ("danlu int8", QuantConfig(method="rtn", bits=8)),
        ("danlu int4 g128", QuantConfig(method="rtn", bits=4, group_size=128)),
    ):
        variants[label] = copy.deepcopy(fp32)
        quantize_model(variants[label], qcfg)
    variants["torch quantize_dynamic int8"] = torch_dynamic(copy.deepcopy(fp32), names)
    prompt = tok.encode(PROMPT)
    batches = [int(b) for b in args.batch.split(",")]
    max_len = len(prompt) + args.tokens + 1
    print(f"# {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"# model {args.model}: {cfg.n_layer} layers, d {cfg.n_embd}; {len(names)} Linears quantized")
    print(
        f"# prompt {len(prompt)} tokens, {args.tokens} new tokens, greedy; median of {args.repeats} repeats"
    )
    speeds: dict[tuple[str, int], list[float]] = {}
    outputs: dict[str, list[int]] = {}
    engines = {
        (label, b): Engine(m, tok, max_batch=b, max_len=max_len, prefix_cache=False)
        for label, m in variants.items()
        for b in batches
    }
    for (_label, b), engine in engines.items():  # warm-up: kernel layouts, allocator
        decode(engine, prompt, b, 4)
    for _ in range(args.repeats):
        for (label, b), engine in engines.items():
            tps, out = decode(engine, prompt, b, args.tokens)
            speeds.setdefault((label, b), []).append(tps)
            outputs.setdefault(label, out)
    mem = {label: weight_bytes(m) for label, m in variants.items()}
    base_mem = mem["danlu fp32"]
    head = " | ".join(f"batch {b} tok/s | vs fp32" for b in batches)
    print(f"\n| variant | weight MB | vs fp32 | {head} | greedy tokens equal to fp32 |")
    print("|---|---|---|" + "---|---|" * len(batches) + "---|")
    for label in variants:
        cells = []
        for b in batches:
            tps = statistics.median(speeds[(label, b)])
            cells.append(f"{tps:.1f} | {tps / statistics.median(speeds[('danlu fp32', b)]):.2f}x")
        same = agree(outputs[label], outputs["danlu fp32"])
        print(
            f"| {label} | {mem[label] / 2**20:.1f} | {mem[label] / base_mem:.2f}x | {' | '.join(cells)} "
            f"| {same}/{args.tokens} |"
        )


if __name__ == "__main__":
    main()
