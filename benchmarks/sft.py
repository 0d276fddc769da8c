"""LoRA SFT training step: danlu vs PEFT + transformers, one run, same model, data and batch.

Both sides get the same base weights (danlu's model mapped with danlu.interop.hf_llama), the same
adapter tensors (danlu's LoRA mapped with danlu.interop.peft's key names, B made non-zero so the
adapters matter), the same padded batch of conversations (assistant-only targets) and the same AdamW
over the adapter tensors alone. A step is forward + assistant-token loss + backward + optimizer step.
Before timing, the script checks that the two compute the same logits and that TRL's SFTTrainer,
given the PEFT model and the same rows (its own collator and compute_loss), gives danlu's loss on
that batch within 1e-5.

Tokens/s: medians of alternating repeats in this process (machine noise hits both). Peak memory:
each side again in a fresh subprocess, its peak resident set (VmHWM, reset after the model, batch and
optimizer are built) during a few steps; "step peak" is that minus the resident set before the
steps (activations, gradients, optimizer state: the training step's own memory).

    python benchmarks/sft.py [--size tiny|smollm2] [--steps 3] [--repeats 5] [--threads N]
    python benchmarks/sft.py --quick      # 3 repeats x 2 steps: a check that it runs

The HF side gets no attention_mask (right padding under a causal mask cannot change the real
tokens' logits, and the mask would cost HF a materialized 4D mask): its fastest correct call.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown, markdown_table
from danlu.finetune.lora import AdapterSpec, adapter_state, apply_lora
from danlu.finetune.packing import collate
from danlu.finetune.sft import sft_loss
from danlu.interop.hf_llama import to_hf_config, to_hf_state_dict
from danlu.interop.peft import peft_key
from danlu.model import build_model, resolve_model_config
from danlu.model.config import ModelConfig
from danlu.train.losses import IGNORE_INDEX

# name: (model fields, vocab, seq_len, batch)
SIZES: dict[str, tuple[dict[str, int], int, int, int]] = {
    "tiny": ({"n_layer": 4, "n_embd": 256, "n_head": 4, "ffn_hidden": 688}, 4096, 256, 4),
    # SmolLM2-135M's shape (random weights: speed does not depend on them)
    "smollm2": (
        {
            "n_layer": 30,
            "n_embd": 576,
            "n_head": 9,
            "n_kv_head": 3,
            "ffn_hidden": 1536,
            "tie_embeddings": True,
        },
        49152,
        256,
        2,
    ),
}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SPEC = AdapterSpec(r=16, alpha=32, targets=TARGETS)
PAD = 0


def conversations(n: int, seq_len: int, vocab: int, seed: int = 1) -> list[tuple[list[int], list[int]]]:
    """(ids, loss mask) of n conversations of seq_len/2 .. seq_len+1 tokens: a prompt, then an answer
    (the last 30-70% of the tokens) that the mask covers, as a template renders them."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(seq_len // 2, seq_len + 1)
        prompt = int(length * rng.uniform(0.3, 0.7))
        ids = [rng.randrange(1, vocab) for _ in range(length)]
        out.append((ids, [0] * prompt + [1] * (length - prompt)))
    return out


def _optimizer(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0, fused=True)


class Setup:
    """Both models with the same weights and adapters, the batch, and each side's step."""

    def __init__(self, size: str, sides: tuple[str, ...] = ("danlu", "peft")):
        from transformers import LlamaConfig, LlamaForCausalLM

        fields, vocab, seq, batch = SIZES[size]
        cfg = resolve_model_config(ModelConfig(max_seq_len=seq, **fields), vocab)
        torch.manual_seed(0)
        ours = build_model(cfg, "cpu")
        hf_state = to_hf_state_dict(ours)
        apply_lora(ours, SPEC, seed=3)
        gen = torch.Generator().manual_seed(4)
        with torch.no_grad():
            for name, p in ours.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        for name, p in ours.named_parameters():
            p.requires_grad_(".adapters." in name)
        self.adapter = {peft_key(k): v for k, v in adapter_state(ours, "default").items()}
        self.rows = conversations(batch, seq, vocab)
        self.x, self.y = collate(self.rows, [[i] for i in range(batch)], PAD, packed=False, seq_len=seq)
        self.tokens = self.x.numel()
        self.targets = int((self.y != IGNORE_INDEX).sum())
        self.vocab, self.size = vocab, size
        self.ours = ours.train() if "danlu" in sides else None
        self.peft = None
        if "peft" in sides or "trl" in sides:
            import peft

            hf_cfg = LlamaConfig(**to_hf_config(cfg), attn_implementation="sdpa", use_cache=False)
            hf = LlamaForCausalLM(hf_cfg)
            hf.load_state_dict(hf_state, strict=not cfg.tie_embeddings)
            lcfg = peft.LoraConfig(
                r=SPEC.r, lora_alpha=SPEC.alpha, lora_dropout=0.0, target_modules=list(TARGETS)
            )
            self.peft = peft.get_peft_model(hf, lcfg).train()
            peft.set_peft_model_state_dict(self.peft, self.adapter)
        del hf_state, ours
        gc.collect()

    def trainable(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def step_danlu(self) -> Callable[[], float]:
        model, opt = self.ours, _optimizer(self.trainable(self.ours))

        def step() -> float:
            out = sft_loss(model, (self.x, self.y))
            loss = out.loss_sum / out.n_tokens
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()

        return step

    def step_peft(self) -> Callable[[], float]:
        model, opt = self.peft, _optimizer(self.trainable(self.peft))

        def step() -> float:
            # shift_labels: the pre-shifted targets, so HF scores the same positions as danlu
            out = model(input_ids=self.x, labels=self.y, shift_labels=self.y, use_cache=False)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return out.loss.item()

        return step


def check_same_model(s: Setup) -> float:
    with torch.no_grad():
        return float((s.ours(s.x) - s.peft(input_ids=s.x).logits).abs().max())


def trl_loss(s: Setup) -> float:
    """TRL SFTTrainer's loss of the PEFT model on the same rows (its collator and compute_loss)."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    # the rows are already token ids; the trainer needs a tokenizer object only for its pad token
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": PAD, "<unk>": 1}, unk_token="<unk>")),
        pad_token="<pad>",
    )
    # HF labels are unshifted: position t's label is token t when the mask covers it
    data = [
        {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask, strict=True)]}
        for ids, mask in s.rows
    ]
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=len(data),
            report_to=[],
            use_cpu=True,
            dataset_kwargs={"skip_prepare_dataset": True},
            max_length=None,
        )
        trainer = SFTTrainer(
            model=s.peft, args=args, train_dataset=Dataset.from_list(data), processing_class=tok
        )
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(data))])
        with torch.no_grad():
            return float(trainer.compute_loss(trainer.model, batch))


def danlu_loss(s: Setup) -> float:
    with torch.no_grad():
        out = sft_loss(s.ours, (s.x, s.y))
    return float(out.loss_sum / out.n_tokens)


def _timed(step: Callable[[], float], steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t0


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def memory_child(size: str, side: str, steps: int) -> None:
    """Run in a fresh process: the peak resident set of `steps` steps of one side, printed as JSON."""
    s = Setup(size, (side,))
    step = s.step_danlu() if side == "danlu" else s.step_peft()
    gc.collect()
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    for _ in range(steps):
        step()
    peak = _status_kb("VmHWM")
    print(json.dumps({"rss_before_kb": before, "peak_kb": peak, "step_peak_kb": peak - before}))


def measure_memory(size: str, side: str, steps: int) -> dict[str, int]:
    cmd = [sys.executable, __file__, "--size", size, "--memory-child", side, "--steps", str(steps)]
    cmd += ["--threads", str(torch.get_num_threads())]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny", choices=list(SIZES))
    p.add_argument("--steps", type=int, default=3, help="training steps per timing")
    p.add_argument("--repeats", type=int, default=5, help="timings per side (medians are reported)")
    p.add_argument("--quick", action="store_true", help="3 repeats x 2 steps (a check that it runs)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--memory-child", choices=["danlu", "peft"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.steps, args.repeats = 2, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.size, args.memory_child, args.steps)
        return
    s = Setup(args.size)
    logit_diff = check_same_model(s)
    if logit_diff > 1e-4:
        raise SystemExit(f"danlu and PEFT logits differ by {logit_diff:.2e}: not the same model")
    ours_loss, trl = danlu_loss(s), trl_loss(s)
    step_ours, step_peft = s.step_danlu(), s.step_peft()
    first_ours, first_peft = step_ours(), step_peft()  # warm-up; the same loss (the same work)
    if abs(first_ours - first_peft) > 1e-4:
        raise SystemExit(f"first-step losses differ ({first_ours} vs {first_peft}): not the same work")
    t_ours, t_peft = [], []
    for r in range(args.repeats):
        order = [(step_ours, t_ours), (step_peft, t_peft)]
        for step, times in order if r % 2 == 0 else order[::-1]:
            times.append(_timed(step, args.steps))
    tps_ours = args.steps * s.tokens / statistics.median(t_ours)
    tps_peft = args.steps * s.tokens / statistics.median(t_peft)
    n_train = (sum(p.numel() for p in s.trainable(s.ours)), sum(p.numel() for p in s.trainable(s.peft)))
    shape, targets = tuple(s.x.shape), s.targets
    del s
    gc.collect()
    mem = {side: measure_memory(args.size, side, args.steps) for side in ("danlu", "peft")}
    mib = 1024
    rows = [
        [
            "tokens/s (step)",
            f"{tps_ours:,.0f}",
            f"{tps_peft:,.0f}",
            f"{tps_ours / tps_peft:.2f}",
        ],
        [
            "step peak memory (MiB)",
            f"{mem['danlu']['step_peak_kb'] / mib:,.1f}",
            f"{mem['peft']['step_peak_kb'] / mib:,.1f}",
            f"{mem['danlu']['step_peak_kb'] / max(mem['peft']['step_peak_kb'], 1):.2f}",
        ],
        [
            "process peak RSS (MiB)",
            f"{mem['danlu']['peak_kb'] / mib:,.1f}",
            f"{mem['peft']['peak_kb'] / mib:,.1f}",
            f"{mem['danlu']['peak_kb'] / mem['peft']['peak_kb']:.2f}",
        ],
        ["trainable params", f"{n_train[0]:,}", f"{n_train[1]:,}", f"{n_train[0] / n_train[1]:.2f}"],
    ]
    print(markdown_table(["", "danlu LoRA", "PEFT + transformers", "danlu/PEFT"], rows))
    print()
    fields, vocab, seq, batch = SIZES[args.size]
    print(
        f"model {args.size} ({', '.join(f'{k}={v}' for k, v in fields.items())}, vocab {vocab}), "
        f"LoRA r={SPEC.r} alpha={SPEC.alpha:g} on {', '.join(TARGETS)}; a batch of {batch} conversations "
        f"of up to {seq} tokens, padded to {shape[0]} x {shape[1]} ({targets} assistant targets), fp32, forward + backward + fused AdamW on the adapters; "
        f"median of {args.repeats} x {args.steps} steps"
    )
    print(f"max |logits danlu - PEFT| before training: {logit_diff:.2e}")
    print(f"first step loss: danlu {first_ours:.6f}, PEFT {first_peft:.6f}")
    print(
        f"loss on the batch: danlu {ours_loss:.7f}, TRL SFTTrainer.compute_loss {trl:.7f}, "
        f"|diff| {abs(ours_loss - trl):.2e} ({'within' if abs(ours_loss - trl) <= 1e-5 else 'NOT within'} 1e-5)"
    )
    print(machine_markdown())


if __name__ == "__main__":
    main()
