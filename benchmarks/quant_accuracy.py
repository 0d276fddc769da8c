"""Held-out perplexity and HellaSwag / ARC-Easy accuracy of one model under each post-training
quantization method, in one run.

    .venv/bin/python benchmarks/quant_accuracy.py MODEL_DIR [--chars 8000] [--calib-samples 16] \
        [--hellaswag 200] [--arc-easy 200] [--save DIR] [--calib FILE] [--held FILE]

The text is the stage's default (the Shakespeare corpus) or --calib FILE: its last --chars characters
are held out and scored (danlu.quant.stage.gate_perplexity: disjoint windows of up to 1024 tokens)
unless --held FILE gives the held-out text; calibration windows of 256 tokens come from the rest, the
same windows for every method. Each row loads the fp32 model afresh, quantizes it
(danlu.quant.apply.quantize_model) and scores the held-out text and the first N items of HellaSwag and
ARC-Easy (validation, 0-shot, danlu's eval harness; the same items for every row): acc_norm with a
95% bootstrap interval, and the paired difference to fp32 over the same items with its own interval.
"recovered" is the share of RTN's perplexity increase at the same bits that the method takes back.
The 2-4 bit rows run on danlu's native int4 kernel (activations int8 per block of 32 columns) where it
is built, as `danlu chat` and `serve` do; rtn-int4-g128-torch-kernel is rtn-int4-g128 on torch's int4
kernel (bf16 activations). rtn-int8 is the weight-only kernel, -dynamic fbgemm's W8A8, -native danlu's.
With --save DIR every quantized row is written to DIR/<row> as a quantized model dir, and a later run
with the same --save loads that dir instead of quantizing again (so rows can be rerun).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown
from danlu.eval import tasks as task_lib
from danlu.eval.harness import evaluate_mc
from danlu.eval.metrics import bootstrap_ci
from danlu.eval.scoring import Scorer
from danlu.model_dir import TOKENIZER_DIR, load_model, read_metadata
from danlu.quant.apply import quantize_model
from danlu.quant.config import QuantConfig
from danlu.quant.linear import set_int4_kernel
from danlu.quant.stage import calibration_ids, calibration_text, gate_perplexity, save_quantized, split_text

ROWS: dict[str, dict[str, object] | None] = {
    "fp32": None,
    "rtn-int8": {"method": "rtn", "bits": 8},
    "rtn-int8-dynamic": {"method": "rtn", "bits": 8, "int8_kernel": "dynamic"},  # W8A8 on fbgemm
    "rtn-int8-native": {"method": "rtn", "bits": 8, "int8_kernel": "native"},  # W8A8, danlu's C kernel
    "rtn-int4-g128": {"method": "rtn", "bits": 4, "group_size": 128},
    "rtn-int4-g128-torch-kernel": {"method": "rtn", "bits": 4, "group_size": 128, "int4_kernel": "torch"},
    "gptq-int4-g128": {"method": "gptq", "bits": 4, "group_size": 128},
    "awq-int4-g128": {"method": "awq", "bits": 4, "group_size": 128},
    "nf4": {"method": "nf4", "bits": 4},
    "smoothquant-w8a8": {"method": "smoothquant", "bits": 8},
    "rtn-int3-g128": {"method": "rtn", "bits": 3, "group_size": 128},
    "gptq-int3-g128": {"method": "gptq", "bits": 3, "group_size": 128},
    "awq-int3-g128": {"method": "awq", "bits": 3, "group_size": 128},
    "rtn-int2-g128": {"method": "rtn", "bits": 2, "group_size": 128},
    "gptq-int2-g128": {"method": "gptq", "bits": 2, "group_size": 128},
    "awq-int2-g128": {"method": "awq", "bits": 2, "group_size": 128},
}
CALIBRATED = ("gptq", "awq", "smoothquant")
TASKS = ("hellaswag", "arc_easy")


def load_row(args: argparse.Namespace, name: str, calib: torch.Tensor) -> tuple[torch.nn.Module, object, str]:
    """The row's model (quantized, or loaded from its saved copy) and how it got there."""
    saved = Path(args.save) / name if args.save else None
    settings = dict(ROWS[name] or {})
    torch_int4 = settings.pop("int4_kernel", None) == "torch"
    if saved is not None and (saved / "config.json").is_file():
        model, tok, _ = load_model(saved)
        set_int4_kernel(model, use_native=not torch_int4)
        return model, tok, f"loaded {saved}"
    model, tok, _ = load_model(args.model)
    if not settings:
        return model, tok, "fp32"
    cfg = QuantConfig(**settings)
    t0 = time.perf_counter()
    layers = quantize_model(model, cfg, calib if cfg.method in CALIBRATED else None)
    set_int4_kernel(model, use_native=not torch_int4)
    how = f"{time.perf_counter() - t0:.0f} s to quantize"
    if saved is not None:
        quant = {"method": cfg.method, "bits": cfg.bits, "group_size": cfg.group_size}
        meta = read_metadata(args.model)
        save_quantized(saved, model, meta, Path(args.model) / TOKENIZER_DIR, quant, {"layers": layers})
        how += f", saved to {saved}"
    return model, tok, how


def task_scores(model: torch.nn.Module, tok: object, docs: dict[str, list]) -> dict[str, np.ndarray]:
    """Per-item acc_norm (0/1) of every task, in item order."""
    out = {}
    for task, items in docs.items():
        _, per_item = evaluate_mc(Scorer(model, tok, batch_size=16), items)
        out[task] = np.array([m["acc_norm"] for m in per_item])
    return out


def fmt_acc(x: np.ndarray) -> str:
    lo, hi = bootstrap_ci(x)
    return f"{x.mean():.3f} [{lo:.3f}, {hi:.3f}]"


def fmt_paired(x: np.ndarray, ref: np.ndarray) -> str:
    d = x - ref
    lo, hi = bootstrap_ci(d)
    return f"{d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an fp32 danlu model dir (e.g. danlu import smollm2-135m-instruct OUT)")
    p.add_argument("--chars", type=int, default=8000, help="held-out characters scored")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib", help="calibration text file (default: the Shakespeare corpus)")
    p.add_argument("--held", help="held-out text file (default: the last --chars of the calibration text)")
    p.add_argument("--hellaswag", type=int, default=0, help="HellaSwag validation items (0: none)")
    p.add_argument("--arc-easy", type=int, default=0, help="ARC-Easy validation items (0: none)")
    p.add_argument("--save", help="directory for the quantized copies (reused when present)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    args = p.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    base = QuantConfig(
        gate_chars=args.chars, calib_samples=args.calib_samples, calib=args.calib, gate_ppl=args.held
    )
    calib_text, held = split_text(calibration_text(base), base)
    _, tok, mcfg = load_model(args.model)
    calib_len = min(base.calib_seq_len, mcfg.max_seq_len)
    calib = calibration_ids(
        tok, calib_text, QuantConfig(calib_samples=args.calib_samples, calib_seq_len=calib_len)
    )
    counts = {"hellaswag": args.hellaswag, "arc_easy": args.arc_easy}
    docs = {t: task_lib.build_docs(task_lib.get_task(t), n) for t, n in counts.items() if n > 0}
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    source = args.held or (args.calib or "the Shakespeare corpus")
    print(
        f"# model {args.model}: {mcfg.n_layer} layers, d {mcfg.n_embd}; held-out {len(held)} chars of {source}"
    )
    print(f"# calibration: {calib.shape[0]} windows of {calib.shape[1]} tokens; skip-list {list(base.skip)}")
    print(
        "# tasks: "
        + (", ".join(f"{t} first {len(d)} validation items, 0-shot" for t, d in docs.items()) or "none")
    )
    results: dict[str, tuple[float, dict[str, np.ndarray]]] = {}
    for name in rows:
        t0 = time.perf_counter()
        model, tok, how = load_row(args, name, calib)
        ppl = gate_perplexity(model, tok, held)
        results[name] = (ppl, task_scores(model, tok, docs))
        accs = " ".join(f"{t} {s.mean():.3f}" for t, s in results[name][1].items())
        print(
            f"# done {name}: ppl {ppl:.4f} {accs} ({how}; {time.perf_counter() - t0:.0f} s in all)",
            flush=True,
        )
    fp32 = results["fp32"] if "fp32" in results else (float("nan"), {})
    head = ["method", "perplexity", "vs fp32", "recovered of RTN's increase"]
    for t in docs:
        head += [f"{t} acc_norm [95% CI]", f"{t} vs fp32, paired [95% CI]"]
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, (ppl, scores) in results.items():
        method, *rest = name.split("-")
        rtn = results.get("-".join(["rtn", *rest]))
        recovered = ""
        if method in CALIBRATED and rtn is not None and rtn[0] > fp32[0]:
            recovered = f"{(rtn[0] - ppl) / (rtn[0] - fp32[0]):.0%}"
        cells = [name, f"{ppl:.4f}", f"{ppl / fp32[0] - 1:+.2%}", recovered]
        for t in docs:
            ref = fp32[1].get(t)
            cells += [fmt_acc(scores[t]), "" if ref is None or name == "fp32" else fmt_paired(scores[t], ref)]
        print("| " + " | ".join(cells) + " |")
    print(machine_markdown())


if __name__ == "__main__":
    main()
