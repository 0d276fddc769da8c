"""DPO training step: danlu's align loss vs TRL's DPOTrainer on the same model, pairs and batch.

The model is a danlu Transformer (the tiny-cpu shape by default, random init) and its exact HF Llama
export (danlu.interop.hf_llama), so both sides train the same weights. The pairs are the same token
ids on both sides: TRL reads them as text through a word-level tokenizer whose words are the ids,
danlu gets the ids; every prompt and response has one length, so both pad nothing. Both precompute
the reference log-probs (outside the timing) and train fully with AdamW at the same learning rate.
Each side runs in its own process, so its peak resident memory is its own: the table shows the
process peak and the growth over the resident set before the first step. Step time is the median
over the timed steps after warm-up steps; tokens/s counts the 2 x batch x length tokens of a step.

    python benchmarks/dpo.py                       # tiny-cpu shape, batch 8, 128-token rows
    python benchmarks/dpo.py --steps 4 --quick     # a smoke run
    python benchmarks/dpo.py --accuracy RUN/align  # before/after held-out numbers of an align run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_config(args):
    from danlu.model.config import ModelConfig

    return ModelConfig(
        n_layer=args.layers, n_embd=args.embd, n_head=args.heads, max_seq_len=2 * args.length,
        vocab_size=args.vocab,
    )  # fmt: skip


def pairs(args) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) ids, ids >= 2 (0 pads, 1 ends a response as TRL's EOS)."""
    g = torch.Generator().manual_seed(0)
    p, r = args.length // 2, args.length - args.length // 2 - 1
    out = []
    for _ in range(args.pairs):
        ids = torch.randint(2, args.vocab, (p + 2 * r,), generator=g).tolist()
        out.append((ids[:p], [*ids[p : p + r], 1], [*ids[p + r :], 1]))
    return out


def run_danlu(args, weights: Path) -> dict:
    from danlu.align import losses as L
    from danlu.align.batches import Encoded, paired_batch
    from danlu.align.logps import precompute, sequence_logps
    from danlu.model.transformer import build_model

    cfg = model_config(args)
    model = build_model(cfg)
    model.load_state_dict(torch.load(weights, weights_only=True))
    enc = [Encoded(p, c, [1] * len(c), r, [1] * len(r)) for p, c, r in pairs(args)]
    collate = lambda items: paired_batch(items, 0)  # noqa: E731
    ref = precompute(model, enc, collate, (("ids", "mask"),), args.batch, torch.device("cpu"), "fp32")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    times, before = [], rss_mib()
    for step in range(args.warmup + args.steps):
        idx = [(step * args.batch + i) % len(enc) for i in range(args.batch)]
        batch = paired_batch([enc[i] for i in idx], 0, ref[idx])
        t = time.perf_counter()
        lp, _ = sequence_logps(model, batch["ids"], batch["mask"])
        pc, pr = lp.chunk(2)
        rc, rr = batch["ref"].chunk(2)
        out = L.dpo(pc, pr, rc, rr, args.beta)
        out.losses.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return {"step_s": statistics.median(times[args.warmup :]), "peak": peak_mib(), "before": before,
            "tokens": int(batch["ids"].numel()), "loss": float(out.losses.mean())}  # fmt: skip


def run_trl(args, weights: Path, tmp: Path) -> dict:
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from danlu.interop.hf_llama import to_hf_config, to_hf_state_dict
    from danlu.model.transformer import build_model

    cfg = model_config(args)
    dmodel = build_model(cfg)
    dmodel.load_state_dict(torch.load(weights, weights_only=True))
    hf = LlamaForCausalLM(LlamaConfig(**to_hf_config(cfg)))
    hf.load_state_dict(to_hf_state_dict(dmodel), strict=False)
    hf.tie_weights()
    del dmodel
    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, args.vocab)}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<eos>")
    words = lambda ids: " ".join(f"w{i}" for i in ids if i != 1)  # noqa: E731
    rows = pairs(args)
    data = Dataset.from_dict(
        {
            "prompt": [words(p) for p, _, _ in rows],
            "chosen": [" " + words(c) for _, c, _ in rows],
            "rejected": [" " + words(r) for _, _, r in rows],
        }
    )
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    dargs = DPOConfig(
        output_dir=str(tmp / "trl"), report_to=[], use_cpu=True, per_device_train_batch_size=args.batch,
        max_steps=args.warmup + args.steps, learning_rate=args.lr, lr_scheduler_type="constant",
        weight_decay=0.0, max_grad_norm=1.0, beta=args.beta, precompute_ref_log_probs=True,
        save_strategy="no", logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0, seed=0,
        max_length=None,
    )  # fmt: skip
    trainer = DPOTrainer(model=hf, args=dargs, train_dataset=data, processing_class=tok, callbacks=[Timer()])
    sample = trainer.data_collator([trainer.train_dataset[i] for i in range(args.batch)])
    assert sample["input_ids"].shape == (2 * args.batch, args.length), sample["input_ids"].shape
    before = rss_mib()
    out = trainer.train()
    return {"step_s": statistics.median(times[args.warmup :]), "peak": peak_mib(), "before": before,
            "tokens": int(sample["input_ids"].numel()), "loss": float(out.training_loss)}  # fmt: skip


def accuracy_report(run: Path) -> None:
    """The held-out numbers before training and at each evaluation of an align run dir."""
    before = json.loads((run / "data" / "before.json").read_text())
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if "val_loss" in r]
    keys = [k for k in before if k != "val_margin"]
    from _machine import machine_markdown, markdown_table

    rows = [["0 (start)", *(f"{before[k]:.4f}" for k in keys)]]
    rows += [[str(r["step"]), *(f"{r[k]:.4f}" for k in keys)] for r in evals]
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    print(f"held-out pairs: {manifest['encoded']['val']} (train {manifest['encoded']['train']})")
    print(markdown_table(["step", *keys], rows))
    n = manifest["encoded"]["val"]
    key = "val_logp_accuracy" if "val_logp_accuracy" in before else "val_accuracy"  # a reward model's
    for name, rec in (("start", before), (f"step {evals[-1]['step']}", evals[-1])):
        lo, hi = wilson(rec[key], n)
        print(f"{key} at {name}: {rec[key]:.3f}, Wilson 95% interval [{lo:.3f}, {hi:.3f}]")
    print(machine_markdown())


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--embd", type=int, default=192)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--length", type=int, default=128, help="tokens of prompt + response")
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--quick", action="store_true", help="a 2-layer 64-wide model, 32-token rows")
    ap.add_argument("--side", choices=["danlu", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--accuracy", metavar="ALIGN_DIR", help="print an align run's held-out numbers")
    args = ap.parse_args()
    if args.accuracy:
        accuracy_report(Path(args.accuracy))
        return
    if args.quick:
        args.layers, args.embd, args.heads, args.length, args.vocab = 2, 64, 4, 32, 512
    if args.side:
        warnings.filterwarnings("ignore")
        with tempfile.TemporaryDirectory() as tmp:
            fn = run_danlu if args.side == "danlu" else lambda a, w: run_trl(a, w, Path(tmp))
            print(json.dumps(fn(args, Path(args.weights))))
        return
    from danlu.model.transformer import build_model

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "w.pt"
        torch.save(build_model(model_config(args)).state_dict(), weights)
        res = {}
        for side in ("danlu", "trl"):
            argv = [a for a in sys.argv[1:]] + ["--side", side, "--weights", str(weights)]
            env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
            proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
            res[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    from _machine import machine_markdown, markdown_table

    rows = []
    for side, r in res.items():
        rows.append([side, f"{r['step_s'] * 1000:.0f}", f"{r['tokens'] / r['step_s']:.0f}",
                     f"{r['peak']:.0f}", f"{r['peak'] - r['before']:.0f}", f"{r['loss']:.4f}"])  # fmt: skip
    d, t = res["danlu"], res["trl"]
    print(
        f"DPO step: {args.layers} layers x {args.embd}, vocab {args.vocab}, batch {args.batch} pairs x "
        f"{args.length} tokens, {args.steps} timed steps (median) after {args.warmup}, fp32 CPU"
    )
    header = ["side", "step ms", "tokens/s", "peak RSS MiB", "growth in training MiB", "loss"]
    print(markdown_table(header, rows))
    print(f"danlu / TRL: speed {t['step_s'] / d['step_s']:.2f}x, peak memory {d['peak'] / t['peak']:.2f}x")
    print(machine_markdown())


if __name__ == "__main__":
    main()
