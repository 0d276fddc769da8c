"""Greedy decode speed and weight memory of SmolLM2-135M in fp32, int8 and int4 through danlu's Engine,
beside torch's dynamic int8 quantization and llama.cpp on the GGUF, in one run that ends with every
goal's ratio and verdict.

    .venv/bin/python benchmarks/quant_inference.py runs/smollm2 --threads 1 \\
        --llama-python /work/peers/llama-venv/bin/python [--tokens 32] [--repeats 5] [--batch 1,8]

Variants, each generating the same prompt's greedy continuation (end of sequence ignored):

- danlu fp32: the model dir as loaded (SmolLM2's GGUF import: its Q4_1 weights dequantized to fp32),
  in the decode layout that `Engine.from_dir` gives it (danlu.infer.layout: oneDNN-packed Linears; the
  tied head's packed copy is memory beside the embedding). danlu fp32, plain layout: the same weights
  as plain nn.Linears, the model's own size, which the memory ratios divide by.
- danlu int8 native (the goals' int8): RTN, symmetric per output channel, the Linears on Int8Linear's
  `native` kernel (`quantize.int8_kernel: native`: activations int8 per block of 32 columns on the fly,
  danlu's own C kernel, danlu.quant.native, on the stored codes), and with the default --skip
  (`*norm*`, what a recipe's `quantize.skip: ["*norm*"]` does) the tied embedding table as an int8
  QuantEmbedding whose LM head runs the same kernel on the table's codes (one copy for gathers and head).
- danlu int8 dynamic: the same codes, the Linears on the `dynamic` kernel (activations int8 per token,
  fbgemm's W8A8 GEMM), the table's head on the weight-only kernel (one copy of the table).
- danlu int8 weight_only: the same codes, every Linear on torch._weight_int8pack_mm (bf16 activations).
- with --dynamic-head, also danlu int8 dynamic with the table's head on the dynamic kernel too (the
  table then held twice: its codes and fbgemm's packed copy).
- danlu int4 g128: RTN g128, the table int4 g128 too, on danlu's native int4 kernel (the packed codes
  as stored; activations int8 per block of 32). danlu int4 g128, torch kernel: the same model on
  torch._weight_int4pack_mm_for_cpu (bf16 activations; the codes converted to its layout).
- torch quantize_dynamic int8: torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, qint8), its
  standard use: every Linear, the tied LM head included (as its own int8 copy); the embedding stays fp32.
- llama.cpp Q4_1: the GGUF itself, through llama-cpp-python in its own virtualenv (--llama-python; the
  worker of benchmarks/generate.py). llama.cpp Q8_0: the same file requantized by llama.cpp's own
  llama_model_quantize (Q4_1 -> Q8_0: the fp32 weights danlu starts from, on an 8-bit grid).

The model's RMSNorm, RoPE and SwiGLU take their no-autograd paths in every danlu and torch variant
(inference mode). Every danlu and torch variant runs its own Engine (prefix cache off), the variants interleaved in each
repeat; tokens/s is the median over repeats of generated tokens over wall time (the short prompt's
prefill included), for llama.cpp too. Weight memory counts every tensor a model holds (parameters,
buffers, what a kernel keeps beside them) and fbgemm's packed int8 matrices (danlu's dynamic kernel:
out x in bytes each; torch's: the size of its unpacked weights); llama.cpp's is its file's size. The
matmul table times each variant's own Linears of one kind over all blocks at batch 1 (real weights, one
[1, d] input per call): the matmul time of one decode step by layer kind, the rest of a step being
attention, norms, RoPE and the engine.
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown, markdown_table
from danlu.infer.engine import Engine
from danlu.infer.layout import PackedLinear, decode_layout
from danlu.infer.params import SamplingParams
from danlu.model_dir import load_model
from danlu.quant import native
from danlu.quant.apply import quantize_model
from danlu.quant.config import QuantConfig
from danlu.quant.linear import QuantLinear, set_int4_kernel, set_int8_kernel
from generate import LLAMA_INSTALL, LlamaProcess

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time, in a land far away,"
FP32, INT4, TORCH = "danlu fp32", "danlu int4 g128", "torch quantize_dynamic int8"
INT4_TORCH = "danlu int4 g128, torch kernel"
FP32_PLAIN = "danlu fp32, plain layout"
INT8, INT8_DYN, INT8_WO = "danlu int8 native", "danlu int8 dynamic", "danlu int8 weight_only"
INT8_HEAD = "danlu int8 dynamic, dynamic head"
Q4_1, Q8_0 = "llama.cpp Q4_1", "llama.cpp Q8_0"
MEMORY_GOAL, SPEED_GOAL = 0.30, 1.80
QUANTIZE_Q8_0 = """
import sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype, p.allow_requantize, p.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, True, int(sys.argv[3])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))
"""


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
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear

    seen: dict[int, int] = {}
    tensors = [*model.parameters(), *model.buffers()]
    packed = 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            tensors += m.kernel_tensors()
            packed += m.kernel_bytes()
        elif isinstance(m, DynamicQuantLinear):
            tensors += _tensors(m._weight_bias())
        elif isinstance(m, PackedLinear):  # oneDNN's packed fp32 weight: not a storage torch exposes
            packed += m.in_features * m.out_features * 4
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values()) + packed


def torch_dynamic(model: nn.Module) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def make_q8_0(python: str, gguf: Path, work: Path, threads: int) -> Path:
    out = work / "SmolLM2-135M-Instruct.Q8_0.gguf"
    if not out.is_file():
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run(
            [python, "-c", QUANTIZE_Q8_0, str(gguf), str(out), str(threads)],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 or not out.is_file():
            raise SystemExit(
                f"llama_model_quantize to Q8_0 failed ({done.returncode}): {done.stderr[-2000:]}"
            )
    return out


class DanluRun:
    def __init__(self, model: nn.Module, tok: Any, batches: list[int], max_len: int):
        self.engines = {
            b: Engine(model, tok, max_batch=b, max_len=max_len, prefix_cache=False) for b in batches
        }

    def decode(self, prompt: list[int], batch: int, tokens: int) -> tuple[float, list[int]]:
        params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
        t0 = time.perf_counter()
        done = self.engines[batch].generate([prompt] * batch, params)
        return batch * tokens / (time.perf_counter() - t0), list(done[0].token_ids)


class LlamaRun:
    def __init__(self, proc: LlamaProcess):
        self.proc = proc

    def decode(self, prompt: list[int], batch: int, tokens: int) -> tuple[float, list[int]]:
        out = self.proc.generate([prompt] * batch, tokens)
        return batch * tokens / out["seconds"], out["tokens"][0]


def agree(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def matmul_ms(model: nn.Module, name: str, repeats: int) -> float:
    """ms of one [1, d] input through the model's Linear `name` of every block (or the LM head), median
    of repeats."""
    mods = [model.lm_head] if name == "lm_head" else [b.get_submodule(name) for b in model.blocks]
    x = torch.randn(1, getattr(mods[0], "in_features", None) or mods[0].embedding_dim)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            for m in mods:
                m(x)
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[1:])


def verdict(ok: bool | None) -> str:
    return "recorded" if ok is None else ("met" if ok else "NOT met")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="SmolLM2's fp32 danlu model dir (danlu import smollm2-135m-instruct OUT)")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes (the goals read batch 1)")
    p.add_argument("--threads", type=int, default=None, help="torch (and llama.cpp) threads")
    p.add_argument("--skip", default="*norm*", help="quantize.skip of the danlu variants, comma-separated")
    p.add_argument("--llama-python", help=f"python with llama-cpp-python (install: {LLAMA_INSTALL})")
    p.add_argument("--gguf", help="the GGUF (default: the registry's smollm2-135m-instruct)")
    p.add_argument("--work", help="where the Q8_0 GGUF is made (default: a temp dir)")
    p.add_argument("--dynamic-head", action="store_true", help=f"also the row {INT8_HEAD!r}")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load_start = os.getloadavg()[0]
    skip = tuple(s.strip() for s in args.skip.split(",") if s.strip())
    fp32, tok, cfg = load_model(args.model)
    models: dict[str, nn.Module] = {FP32: fp32}
    for label, qcfg in (
        (INT8, QuantConfig(method="rtn", bits=8, skip=skip, int8_kernel="native")),
        (INT8_DYN, QuantConfig(method="rtn", bits=8, skip=skip, int8_kernel="dynamic")),
        (INT8_WO, QuantConfig(method="rtn", bits=8, skip=skip, int8_kernel="weight_only")),
        (INT4, QuantConfig(method="rtn", bits=4, group_size=128, skip=skip)),
    ):
        models[label] = copy.deepcopy(fp32)
        quantize_model(models[label], qcfg)
    models[INT4_TORCH] = copy.deepcopy(models[INT4])
    set_int4_kernel(models[INT4_TORCH], use_native=False)
    if args.dynamic_head:
        models[INT8_HEAD] = copy.deepcopy(models[INT8_DYN])
        set_int8_kernel(models[INT8_HEAD], "dynamic", tables=True)
    # danlu fp32 is what Engine.from_dir (danlu serve, chat) runs: the decode layout (danlu.infer.layout)
    models[FP32_PLAIN] = copy.deepcopy(fp32)
    models[TORCH] = torch_dynamic(copy.deepcopy(fp32))  # of plain nn.Linears, as torch users run it
    decode_layout(fp32.requires_grad_(False))
    prompt = tok.encode(PROMPT)
    batches = [int(b) for b in args.batch.split(",")]
    max_len = len(prompt) + args.tokens + 1
    runs: dict[str, Any] = {label: DanluRun(m, tok, batches, max_len) for label, m in models.items()}
    mem: dict[str, float] = {}
    procs: list[LlamaProcess] = []
    llama_version = None
    if args.llama_python:
        from danlu.interop.gguf import registry_gguf

        gguf = Path(args.gguf) if args.gguf else registry_gguf("smollm2-135m-instruct")
        work = Path(args.work or tempfile.mkdtemp(prefix="danlu-bench-quant-"))
        work.mkdir(parents=True, exist_ok=True)
        for label, file in ((Q4_1, gguf), (Q8_0, make_q8_0(args.llama_python, gguf, work, threads))):
            procs.append(LlamaProcess(args.llama_python, file, threads, max(batches), max_len))
            runs[label], mem[label] = LlamaRun(procs[-1]), file.stat().st_size
            llama_version = procs[-1].version
    speeds: dict[tuple[str, int], list[float]] = {}
    outputs: dict[str, list[int]] = {}
    try:
        for run in runs.values():  # warm-up: kernel layouts, allocator, llama.cpp's graph
            for b in batches:
                run.decode(prompt, b, 4)
        for _ in range(args.repeats):
            for label, run in runs.items():
                for b in batches:
                    tps, out = run.decode(prompt, b, args.tokens)
                    speeds.setdefault((label, b), []).append(tps)
                    outputs.setdefault(label, out)
    finally:
        for proc in procs:
            proc.close()
    # after the runs: the kernels' own layouts (packed weights) exist only once they have been called
    mem |= {label: weight_bytes(m) for label, m in models.items()}
    kinds = ["attn.qkv", "attn.proj", "mlp.gate_up", "mlp.down", "lm_head"]
    matmuls = {label: {k: matmul_ms(m, k, args.repeats) for k in kinds} for label, m in models.items()}
    load_end = os.getloadavg()[0]

    tps = {key: statistics.median(v) for key, v in speeds.items()}
    print(
        f"# model {args.model}: {cfg.n_layer} layers, d {cfg.n_embd}, vocab {cfg.vocab_size}; danlu skip-list {list(skip)}"
    )
    print(
        f"# prompt {len(prompt)} tokens, {args.tokens} new tokens, greedy; median of {args.repeats} repeats"
    )
    level = {2: "built, AVX2", 0: "built, plain loops", -1: "NOT built (its rows ran the torch fallback)"}
    print(f"# danlu native kernels: {level[native.simd_level()]}")
    print(
        f"# {threads} torch threads; llama.cpp: {'llama-cpp-python ' + llama_version if llama_version else 'absent (--llama-python)'}"
    )
    head = ["variant", "weight MB", "vs fp32"]
    for b in batches:
        head += [f"batch {b} tok/s", "vs fp32"]
    head.append(f"greedy tokens equal to fp32 (of {args.tokens})")
    rows = []
    for label in runs:
        row = [label, f"{mem[label] / 2**20:.1f}" + (" (file)" if label in (Q4_1, Q8_0) else "")]
        row.append(f"{mem[label] / mem[FP32_PLAIN]:.2f}x")
        for b in batches:
            row += [f"{tps[(label, b)]:.1f}", f"{tps[(label, b)] / tps[(FP32, b)]:.2f}x"]
        row.append(str(agree(outputs[label], outputs[FP32])))
        rows.append(row)
    print("\n" + markdown_table(head, rows))

    step_ms = {label: 1e3 / tps[(label, 1)] for label in models}
    mm_rows = []
    for label in models:
        total = sum(matmuls[label].values())
        mm_rows.append(
            [label, *(f"{matmuls[label][k]:.2f}" for k in kinds), f"{total:.2f}", f"{step_ms[label]:.2f}"]
        )
    print("\n## matmul ms per decode step at batch 1, by Linear kind (all blocks), against the whole step")
    print(markdown_table(["variant", *kinds, "all matmuls", "whole step (1 / tok/s)"], mm_rows))

    b1 = batches[0]
    goals: list[tuple[str, float, bool | None]] = [
        (
            f"int8 weight memory <= {MEMORY_GOAL:.2f}x fp32",
            mem[INT8] / mem[FP32_PLAIN],
            mem[INT8] / mem[FP32_PLAIN] <= MEMORY_GOAL,
        )
    ]
    for b in batches:
        r = tps[(INT8, b)] / tps[(FP32, b)]
        goals.append((f"int8 decode >= {SPEED_GOAL:.2f}x danlu fp32, batch {b}", r, r >= SPEED_GOAL))
        r = tps[(INT8, b)] / tps[(TORCH, b)]
        goals.append((f"int8 decode >= torch quantize_dynamic, batch {b}", r, r >= 1.0))
        r = tps[(INT4, b)] / tps[(INT8, b)]
        goals.append((f"int4 decode faster than int8, batch {b}", r, r > 1.0))
    for b in batches:
        for ours, theirs in ((INT4, Q4_1), (INT8, Q8_0)):
            if (theirs, b) in tps:
                goals.append((f"{ours} / {theirs}, batch {b}", tps[(ours, b)] / tps[(theirs, b)], None))
    if not procs:
        goals.append(("ratio to llama.cpp", float("nan"), False))
    print(f"\n## goals (batch {b1} is the goal; other batches reported beside it)")
    print(
        markdown_table(
            ["goal", "measured ratio", "verdict"], [[g, f"{r:.2f}x", verdict(ok)] for g, r, ok in goals]
        )
    )
    print(f"\nload average (1 min) at start / end: {load_start:.1f} / {load_end:.1f}")
    print(machine_markdown())
    print("command: .venv/bin/python benchmarks/quant_inference.py " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    main()
