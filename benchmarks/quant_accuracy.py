"""Held-out perplexity of one model under each post-training quantization method, in one run.

    .venv/bin/python benchmarks/quant_accuracy.py MODEL_DIR [--chars 8000] [--calib-samples 16]

The text is the stage's default (the Shakespeare corpus): its last --chars characters are held out and
scored (danlu.quant.stage.gate_perplexity: disjoint windows of up to 1024 tokens), calibration windows
of 256 tokens come from the rest, the same windows for every method. Each row loads the fp32 model
afresh, quantizes it (danlu.quant.apply.quantize_model) and scores the held-out text; "recovered" is the
share of RTN's perplexity increase at the same bits that the method takes back.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from danlu.model_dir import load_model
from danlu.quant.apply import quantize_model
from danlu.quant.config import QuantConfig
from danlu.quant.stage import calibration_ids, calibration_text, gate_perplexity, split_text

ROWS: dict[str, dict[str, object] | None] = {
    "fp32": None,
    "rtn-int8": {"method": "rtn", "bits": 8},
    "rtn-int4-g128": {"method": "rtn", "bits": 4, "group_size": 128},
    "gptq-int4-g128": {"method": "gptq", "bits": 4, "group_size": 128},
    "awq-int4-g128": {"method": "awq", "bits": 4, "group_size": 128},
    "nf4": {"method": "nf4", "bits": 4},
    "smoothquant-w8a8": {"method": "smoothquant", "bits": 8},
    "rtn-int3-g128": {"method": "rtn", "bits": 3, "group_size": 128},
    "gptq-int3-g128": {"method": "gptq", "bits": 3, "group_size": 128},
    "awq-int3-g128": {"method": "awq", "bits": 3, "group_size": 128},
}
CALIBRATED = ("gptq", "awq", "smoothquant")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an fp32 danlu model dir (e.g. danlu import smollm2-135m-instruct OUT)")
    p.add_argument("--chars", type=int, default=8000, help="held-out characters scored")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    args = p.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    base = QuantConfig(gate_chars=args.chars, calib_samples=args.calib_samples)
    calib_text, held = split_text(calibration_text(base), base)
    _, tok, mcfg = load_model(args.model)
    calib = calibration_ids(tok, calib_text, base)
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"# model {args.model}: {mcfg.n_layer} layers, d {mcfg.n_embd}; held-out {len(held)} chars of Shakespeare"
    )
    print(f"# calibration: {calib.shape[0]} windows of {calib.shape[1]} tokens; skip-list {list(base.skip)}")
    results: dict[str, tuple[float, float]] = {}
    for name in rows:
        cfg = None if ROWS[name] is None else QuantConfig(**ROWS[name])
        model, tok, _ = load_model(args.model)
        t0 = time.perf_counter()
        if cfg is not None:
            quantize_model(model, cfg, calib if cfg.method in CALIBRATED else None)
        seconds = time.perf_counter() - t0
        results[name] = (gate_perplexity(model, tok, held), seconds)
        print(f"# done {name}: ppl {results[name][0]:.4f} ({seconds:.0f} s to quantize)", flush=True)
    fp32 = results.get("fp32", (float("nan"), 0))[0]
    print("\n| method | perplexity | vs fp32 | recovered of RTN's increase | quantize s |")
    print("|---|---|---|---|---|")
    for name, (ppl, seconds) in results.items():
        method, *rest = name.split("-")
        rtn = results.get("-".join(["rtn", *rest]))
        recovered = ""
        if method in CALIBRATED and rtn is not None and rtn[0] > fp32:
            recovered = f"{(rtn[0] - ppl) / (rtn[0] - fp32):.0%}"
        print(f"| {name} | {ppl:.4f} | {ppl / fp32 - 1:+.2%} | {recovered} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
