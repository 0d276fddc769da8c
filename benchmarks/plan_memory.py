"""danlu.plan's training-memory estimate against the measured peak of real CPU training runs.

    python benchmarks/plan_memory.py [--steps 3] [--tokens runs/plan-sweep/base]

Each configuration (the tiny and small presets, with and without activation checkpointing) trains
through the trainer (danlu.train.pretrain.build_pretrainer + fit; fp32, fused AdamW, one micro-batch
per step) on the token shards of recipes/plan-sweep.yaml (run benchmarks/plan_sweep.py, or
`danlu run recipes/plan-sweep.yaml`, first), twice, each time in a fresh process:
- the allocator peak (checked against the estimate): the bytes of the model's parameters and buffers
  plus the highest running sum of torch's CPU allocations minus frees during fit() (torch.profiler
  with profile_memory=True sees every allocation; tracemalloc does not see torch), i.e. the most
  tensor memory alive at once, which is what the estimate models;
- the peak RSS delta (shown beside it, no profiler running): the process's peak resident memory
  (getrusage ru_maxrss, which the trainer logs as mem_gib at every step) minus its resident memory
  just before the trainer is built (after imports and a warm-up of torch's kernels and thread pool),
  with glibc's mmap threshold pinned at 64 KiB (MALLOC_MMAP_THRESHOLD_) so that freed tensors go back
  to the system instead of staying in malloc's heap; it adds what no tensor count includes: the
  autograd graph's and Python's objects, oneDNN's scratch buffers, the tokenizer and the pages of the
  memory-mapped token shards that were read.
The estimate is danlu.plan.memory.training_memory(...).peak for the same shape and setup.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown, markdown_table

ROOT = Path(__file__).resolve().parent.parent
CHILD = r"""
import json, resource, sys, tempfile
from pathlib import Path
import torch
from danlu.recipe import load_recipe
from danlu.train.pretrain import build_pretrainer

preset, batch, seq, ckpt, steps, base_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6])
profile = sys.argv[8] == "profile"

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()

# warm-up: oneDNN/OpenMP pools, autograd and fused AdamW kernels, on a model that is then freed
w = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
opt = torch.optim.AdamW(w.parameters(), fused=True)
w(torch.randn(64, 256)).square().sum().backward(); opt.step()
del w, opt
out = tempfile.mkdtemp()
cfg = load_recipe(sys.argv[7], [
    f"--model.preset={preset}", "--model.depth=null", f"--model.max_seq_len={seq}",
    f"--train.seq_len={seq}", f"--train.batch_size={batch}", f"--train.max_steps={steps}",
    f"--train.activation_checkpointing={ckpt}", "--train.log_every=1", "--train.eval_every=100000",
    "--train.ckpt_every=100000", "--train.eval_batches=1", "--train.optimizer=adamw",
    "--train.dtype=fp32", "--train.device=cpu", f"--run_dir={out}",
])
base = rss()
trainer = build_pretrainer(cfg, base_dir / "tokens", base_dir / "tokenizer", Path(out))
held = top = 0
if profile:
    # the allocator's view: every CPU tensor allocation and free during fit() (torch.profiler memory
    # events), on top of the model's tensors, which exist before fit() starts
    params = {**dict(trainer.model.named_parameters()), **dict(trainer.model.named_buffers())}
    held = sum(t.untyped_storage().nbytes() for t in params.values())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.fit()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = 0
    for _, nbytes in events:
        live += nbytes
        top = max(top, live)
else:
    trainer.fit()
recs = [json.loads(l) for l in open(Path(out) / "metrics.jsonl") if '"mem_gib"' in l]
peak = max(r["mem_gib"] for r in recs if r["step"] <= steps) * 2**30
print(json.dumps({"base": base, "peak": peak, "allocator_peak": held + top, "vocab": trainer.run.model_cfg.vocab_size}))
"""

CONFIGS = (("tiny", 8, 256), ("small", 4, 512))


def main() -> None:
    from danlu.model.config import ModelConfig
    from danlu.plan.flops import model_shape
    from danlu.plan.memory import TrainSetup, training_memory

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--tokens", default="runs/plan-sweep/base", help="a run dir with tokens/ and tokenizer/")
    args = p.parse_args()
    recipe = ROOT / "recipes" / "plan-sweep.yaml"
    rows, worst = [], 0.0
    for preset, batch, seq in CONFIGS:
        for ckpt in (0, 1):
            cmd = [sys.executable, "-c", CHILD, preset, str(batch), str(seq), str(ckpt), str(args.steps)]
            r = {}
            for mode, env in (("profile", {}), ("rss", {"MALLOC_MMAP_THRESHOLD_": "65536"})):
                out = subprocess.run(
                    [*cmd, args.tokens, str(recipe), mode],
                    capture_output=True,
                    text=True,
                    env={**os.environ, **env},
                )
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
                r[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            measured = r["profile"]["allocator_peak"]
            rss = r["rss"]["peak"] - r["rss"]["base"]
            vocab = r["profile"]["vocab"]
            shape = model_shape(ModelConfig(preset=preset, max_seq_len=seq), vocab)
            setup = TrainSetup(micro_batch=batch, seq_len=seq, precision="fp32", checkpointing=ckpt)
            est = training_memory(shape, setup)
            err = est.peak / measured - 1
            worst = max(worst, abs(err))
            rows.append(
                [
                    f"{preset} ({shape.n_layer}L d{shape.n_embd}, vocab {shape.vocab_size}, {shape.n_params / 1e6:.1f}M)",
                    f"{batch} x {seq}",
                    "every block" if ckpt else "none",
                    f"{(est.weights + est.optimizer) / 2**20:.0f}",
                    f"{est.activations / 2**20:.0f}",
                    f"{est.logits / 2**20:.0f}",
                    f"{est.peak / 2**20:.0f}",
                    f"{measured / 2**20:.0f}",
                    f"{100 * err:+.1f}%",
                    f"{rss / 2**20:.0f}",
                    f"{100 * (est.peak / rss - 1):+.1f}%",
                ]
            )
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    header = [
        "config",
        "batch x seq",
        "checkpointing",
        "est. weights + AdamW (MiB)",
        "est. activations (MiB)",
        "est. logits + grads (MiB)",
        "estimated peak (MiB)",
        "measured allocator peak (MiB)",
        "estimate vs allocator",
        "measured peak RSS delta (MiB)",
        "estimate vs RSS delta",
    ]
    print(f"fp32, fused AdamW, {args.steps} steps through the trainer, a fresh process per measurement\n")
    print(markdown_table(header, rows))
    print(f"\nlargest difference from the allocator peak: {100 * worst:.1f}% (goal: within 15%)")
    print(machine_markdown())


if __name__ == "__main__":
    main()
