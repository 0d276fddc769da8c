"""Quantization-aware training on the tiny recipe: BitNet b1.58 against fp32, and QAT int4 against
post-training RTN int4, at equal steps, in one run.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/qat.py [--steps 200] [--qat-steps 100]

recipes/tiny-cpu.yaml's data, tokenizer and model shape (its data, tokenizer and pack stages run once
into runs/qat-bench/), trained for --steps instead of 500:

  fp32      plain training from scratch
  bitnet    the same from scratch through BitNet b1.58 (qat.method bitnet): ternary weights with an
            absmean scale, 8-bit absmax activations per token, in every Linear of the blocks
  then, both starting from the fp32 model and trained --qat-steps more with the same schedule:
  fp32+     plain, then RTN on each --grids grid (the quantize stage's: min/max or symmetric) (PTQ)
  qat+      through the same grid (qat.method int), then quantized with it (QAT)

Every validation loss is over the same --eval-batches batches of the validation split. The quantized
models are the deployed ones (danlu.quant.apply.quantize_model: Int4Linear and W8A8Linear on their CPU
kernels). The loss curves (training loss every 10 steps, validation every --eval-every) go to a PNG.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_markdown, markdown_table
from danlu.model_dir import load_model
from danlu.quant.apply import quantize_model
from danlu.quant.config import QATConfig, QuantConfig
from danlu.recipe import load_recipe
from danlu.run import RunLayout, run_stages
from danlu.train.pretrain import evaluate, run_pretrain


def val_loss(model_dir: Path, cfg, layout: RunLayout, quant: QuantConfig | None = None) -> float:
    """Validation loss of a model dir, quantized first when quant is given."""
    from danlu.data.loader import TokenDataset

    model, tok, _ = load_model(model_dir)
    if quant is not None:
        quantize_model(model, quant)
    token_bytes = torch.as_tensor(np.asarray(tok.token_bytes()), dtype=torch.long)
    ds = TokenDataset(layout.tokens, "val")
    return evaluate(model, ds, cfg.train, token_bytes, torch.device("cpu"), "fp32")["val_loss"]


def train(cfg, layout: RunLayout, name: str) -> tuple[Path, float, list[dict]]:
    out = layout.root / name
    shutil.rmtree(out, ignore_errors=True)  # this script's own earlier run: start over, never resume
    t0 = time.perf_counter()
    result = run_pretrain(cfg, layout.tokens, layout.tokenizer, out)
    seconds = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return Path(result["model_dir"]), seconds, records


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, recs), color in zip(curves.items(), ("tab:blue", "tab:red"), strict=False):
        train = [(r["step"], r["loss"]) for r in recs if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
        ax.plot(*zip(*train, strict=True), color=color, alpha=0.6, label=f"{name} train")
        ax.plot(*zip(*val, strict=True), "o-", color=color, label=f"{name} validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("tiny-cpu recipe: BitNet b1.58 against fp32, equal steps")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--qat-steps", type=int, default=100)
    ap.add_argument("--grids", default="4:128,4:512:sym,3:128", help="BITS:GROUP[:sym],... for QAT vs PTQ")
    ap.add_argument("--eval-batches", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--run-dir", default="runs/qat-bench")
    ap.add_argument("--png", default="benchmarks/results/qat_bitnet_loss.png")
    args = ap.parse_args()

    overrides = [
        f"--run_dir={args.run_dir}",
        f"--train.max_steps={args.steps}",
        f"--train.eval_every={args.eval_every}",
        f"--train.eval_batches={args.eval_batches}",
        f"--train.ckpt_every={args.steps}",
        "--train.keep_last=1",
        "--train.device=cpu",
    ]
    base = load_recipe("recipes/tiny-cpu.yaml", overrides)
    layout = RunLayout(base.run_path)
    run_stages(base, ("data", "tokenizer", "pack"))

    fp32_dir, fp32_s, fp32_recs = train(base, layout, "fp32")
    bit_cfg = dataclasses.replace(base, qat=QATConfig(method="bitnet"))
    bit_dir, bit_s, bit_recs = train(bit_cfg, layout, "bitnet")

    more = dataclasses.replace(
        base.train,
        max_steps=args.qat_steps,
        init_from=str(fp32_dir),
        lr=1e-3,
        warmup_steps=10,
        ckpt_every=args.qat_steps,
    )
    plus_dir, _, _ = train(dataclasses.replace(base, train=more), layout, "fp32-more")
    rows = {
        "fp32": val_loss(fp32_dir, base, layout),
        "bitnet (fake-quant, as trained)": val_loss(bit_dir, base, layout),
        "bitnet (deployed: ternary W8A8Linear)": val_loss(
            bit_dir, base, layout, QATConfig("bitnet").deployment()
        ),
        f"fp32+{args.qat_steps}": val_loss(plus_dir, base, layout),
    }
    verdicts = []
    for text in args.grids.split(","):
        bits, group, *sym = text.split(":")
        grid = QATConfig(method="int", bits=int(bits), group_size=int(group), symmetric=sym == ["sym"])
        name = f"int{bits} g{group}{' sym' if sym else ''}"
        qat_dir, _, _ = train(dataclasses.replace(base, train=more, qat=grid), layout, f"qat-more-{text}")
        ptq = val_loss(plus_dir, base, layout, grid.deployment())
        qat = val_loss(qat_dir, base, layout, grid.deployment())
        rows[f"fp32+{args.qat_steps} RTN {name} (PTQ)"] = ptq
        rows[f"qat+{args.qat_steps} {name} (fake-quant, as trained)"] = val_loss(qat_dir, base, layout)
        rows[f"qat+{args.qat_steps} {name} (QAT, deployed)"] = qat
        fp = rows[f"fp32+{args.qat_steps}"]
        verdicts.append(
            f"{name}: QAT {qat:.4f} vs PTQ RTN {ptq:.4f} at equal steps: "
            f"{'QAT better' if qat < ptq else 'QAT NOT better'} by {ptq - qat:+.4f} nats; quantizing costs "
            f"PTQ {ptq - fp:+.4f}, QAT {qat - fp:+.4f} against the fp32+{args.qat_steps} model"
        )
    plot({"fp32": fp32_recs, "bitnet b1.58": bit_recs}, Path(args.png))

    m = base.model
    print(
        f"tiny-cpu shape: {m.n_layer} layers, n_embd {m.n_embd}, seq {base.train.seq_len}, batch "
        f"{base.train.batch_size}; {args.steps} steps from scratch, then {args.qat_steps} more from the "
        f"fp32 model (lr 1e-3); grids: RTN min/max (or sym) per group; validation loss over "
        f"{args.eval_batches} batches ({args.eval_batches * base.train.batch_size * base.train.seq_len} tokens)"
    )
    print(markdown_table(["model", "val loss (nats/token)"], [[k, f"{v:.4f}"] for k, v in rows.items()]))
    print()
    curve = [["step", "fp32 val loss", "bitnet val loss"]]
    fp_val = {r["step"]: r["val_loss"] for r in fp32_recs if "val_loss" in r}
    bit_val = {r["step"]: r["val_loss"] for r in bit_recs if "val_loss" in r}
    print(
        markdown_table(
            curve[0],
            [[str(s), f"{fp_val[s]:.4f}", f"{bit_val[s]:.4f}"] for s in sorted(fp_val) if s in bit_val],
        )
    )
    print()
    print("\n".join(verdicts))
    print(
        f"BitNet b1.58 - fp32 at step {args.steps}: {rows['bitnet (fake-quant, as trained)'] - rows['fp32']:+.4f} "
        f"nats; wall time bitnet/fp32 {bit_s / fp32_s:.2f}x (the machine is shared and loaded)"
    )
    print(f"plot: {args.png}")
    print(machine_markdown())


if __name__ == "__main__":
    main()
