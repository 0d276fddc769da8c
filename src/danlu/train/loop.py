"""The pretraining loop: `run_pretrain(cfg, tokens_dir, tokenizer_dir, out_dir)`.

One explicit loop (nanoGPT style): grad accumulation, global-norm clipping, warmup + cosine LR,
periodic validation (loss and bits per byte), metrics.jsonl + loss.png, step checkpoints, and an
automatic, exact resume from the newest checkpoint in out_dir/checkpoints.

Exactness: the model, optimizer, data-loader position, LR step and every RNG are restored, so the
loss at each step after a resume equals the uninterrupted run's (bitwise in fp32 on CPU with the
same thread count). Evaluation consumes no randomness, so it does not perturb this.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from danlu.config import ModelConfig, RecipeConfig, TrainConfig
from danlu.errors import ConfigError, DataError
from danlu.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_temps,
    save_checkpoint,
    save_model_dir,
)
from danlu.train.losses import bits_per_byte, cross_entropy, nats_and_bytes, token_cross_entropy
from danlu.train.metrics import METRICS_FILE, MetricsLogger, peak_flops, plot_metrics
from danlu.train.optim import build_optimizer
from danlu.train.schedule import lr_at

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available; use train.device=auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={name!r} but MPS is not available; use train.device=auto or cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> str:
    """Dtype name; auto means bf16 autocast on CUDA and fp32 elsewhere (bf16 matmuls are ~100x slower on CPUs here)."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_tokens(tokens_dir: Path, tok: Any) -> None:
    """The token shards must come from this tokenizer: same vocab size and fingerprint."""
    index_path = Path(tokens_dir) / "index.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{index_path} not found; run the pack stage first (danlu pack)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{index_path} is unreadable ({e}); re-run the pack stage") from None
    fp = index.get("fingerprint")
    if index.get("vocab_size") != tok.vocab_size or (fp is not None and fp != tok.fingerprint()):
        raise DataError(
            f"token shards in {tokens_dir} were packed with another tokenizer (vocab "
            f"{index.get('vocab_size')}, fingerprint {fp}) than {tok.vocab_size}/{tok.fingerprint()}; "
            "re-run the pack stage with this tokenizer"
        )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Any,
    tcfg: TrainConfig,
    token_bytes: torch.Tensor,
    device: torch.device,
    dtype: str,
) -> tuple[float, float]:
    """(mean loss in nats/token, bits per byte) over `tcfg.eval_batches` batches of `dataset`."""
    from danlu.data.loader import eval_batches

    was_training = model.training
    model.eval()
    nats_all, n_tokens, nats_text, n_bytes = 0.0, 0, 0.0, 0
    for x, y in eval_batches(dataset, tcfg.batch_size, tcfg.seq_len, max_batches=tcfg.eval_batches):
        x, y = x.to(device), y.to(device)
        with autocast(device, dtype):
            logits = model(x)
        losses = token_cross_entropy(logits, y)
        nats_all += float(losses.double().sum())
        n_tokens += y.numel()
        nats, nb = nats_and_bytes(losses, y, token_bytes)
        nats_text += nats
        n_bytes += nb
    model.train(was_training)
    if n_tokens == 0:
        raise DataError("the validation split yields no batch; lower train.seq_len/batch_size or add data")
    return nats_all / n_tokens, bits_per_byte(nats_text, n_bytes)


def forward_backward(
    model: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    grad_accum: int,
    device: torch.device,
    dtype: str = "fp32",
) -> torch.Tensor:
    """Accumulate gradients of `grad_accum` micro-batches; return the step's mean loss (detached).

    Each micro-loss is divided by grad_accum, so the summed gradient equals that of one batch
    grad_accum times larger.
    """
    total = torch.zeros((), device=device)
    for _ in range(grad_accum):
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = model(x)
        loss = cross_entropy(logits, y) / grad_accum
        loss.backward()
        total += loss.detach()
    return total


class _Run:
    """Everything one pretraining run holds; `train()` runs from the current step to max_steps."""

    def __init__(self, cfg: RecipeConfig, tokens_dir: Path, tokenizer_dir: Path, out_dir: Path):
        from danlu.data.loader import TokenDataset, TrainLoader
        from danlu.model.presets import resolve_model_config, suggested_lr
        from danlu.model.transformer import build_model
        from danlu.tokenizer import Tokenizer

        self.cfg, self.out_dir, self.tokenizer_dir = cfg, Path(out_dir), Path(tokenizer_dir)
        self.device = resolve_device(cfg.train.device)
        self.dtype = resolve_dtype(cfg.train.dtype, self.device)
        self.tok = Tokenizer.load(tokenizer_dir)
        _check_tokens(tokens_dir, self.tok)
        self.model_cfg: ModelConfig = resolve_model_config(cfg.model, self.tok.vocab_size)
        tcfg = cfg.train
        if tcfg.seq_len > self.model_cfg.max_seq_len:
            raise ConfigError(
                f"train.seq_len={tcfg.seq_len} exceeds model.max_seq_len={self.model_cfg.max_seq_len}; "
                "lower train.seq_len or raise model.max_seq_len"
            )
        lr = tcfg.lr if tcfg.lr is not None else suggested_lr(self.model_cfg)
        self.tcfg = dataclasses.replace(tcfg, lr=lr)
        self.train_ds = TokenDataset(tokens_dir, "train")
        self.val_ds = TokenDataset(tokens_dir, "val")
        self.token_bytes = torch.as_tensor(
            np.asarray(self.tok.token_bytes()), dtype=torch.long, device=self.device
        )

        _seed_everything(tcfg.seed)
        self.model = build_model(self.model_cfg, self.device)
        self.model.train()
        self.optimizer = build_optimizer(self.model, self.tcfg)
        self.loader = TrainLoader(self.train_ds, tcfg.batch_size, tcfg.seq_len, tcfg.seed)
        self.step, self.tokens_seen, self.elapsed = 0, 0, 0.0
        self.best_val: float | None = None
        self.last_eval: dict[str, Any] | None = None
        self._resume()
        # compile after loading weights: the compiled wrapper shares the parameters of self.model
        self.forward = torch.compile(self.model) if tcfg.compile else self.model
        self.flops_per_token = float(self.model.flops_per_token(tcfg.seq_len))
        self.peak = peak_flops(self.device.type, self.dtype, torch.get_num_threads())

    def _resume(self) -> None:
        remove_stale_temps(self.out_dir)
        path = latest_checkpoint(self.out_dir)
        if path is None:
            return
        state = load_checkpoint(
            path, self.model, self.optimizer, self.model_cfg, self.tok.fingerprint(), self.device
        )
        self.loader.load_state_dict(state["loader"])
        self.step = int(state["step"])
        self.tokens_seen = int(state.get("tokens", 0))
        self.elapsed = float(state.get("elapsed", 0.0))
        self.best_val = state.get("best_val")
        self.last_eval = state.get("last_eval")
        log.info("resumed from %s (step %d, %d tokens)", path, self.step, self.tokens_seen)

    def _eval(self, metrics: MetricsLogger) -> None:
        val_loss, val_bpb = evaluate(
            self.forward, self.val_ds, self.tcfg, self.token_bytes, self.device, self.dtype
        )
        self.best_val = val_loss if self.best_val is None else min(self.best_val, val_loss)
        self.last_eval = {"step": self.step, "val_loss": val_loss, "val_bpb": val_bpb}
        metrics.log({**self.last_eval, "elapsed": round(self.elapsed, 3)})
        log.info("step %6d | val loss %.4f | val bpb %.4f", self.step, val_loss, val_bpb)
        plot_metrics(self.out_dir / METRICS_FILE, self.out_dir / "loss.png")

    def _checkpoint(self) -> None:
        state = {
            "loader": self.loader.state_dict(),
            "tokens": self.tokens_seen,
            "tokenizer_fingerprint": self.tok.fingerprint(),
            "elapsed": self.elapsed,
            "best_val": self.best_val,
            "last_eval": self.last_eval,
        }
        save_checkpoint(
            self.out_dir,
            self.step,
            self.model,
            self.optimizer,
            self.model_cfg,
            self.cfg,
            state,
            self.tokenizer_dir,
        )
        prune_checkpoints(self.out_dir, self.tcfg.keep_last)

    def _train_step(
        self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over grad_accum micro-batches: (mean loss, grad norm before clipping)."""
        t = self.tcfg
        lr = lr_at(self.step, t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = forward_backward(self.forward, batches, t.grad_accum, self.device, self.dtype)
        # max_norm=inf still returns the norm and scales by exactly 1, so clipping off changes nothing
        max_norm = t.grad_clip if t.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm

    def train(self) -> dict[str, Any]:
        t = self.tcfg
        tokens_per_step = t.batch_size * t.seq_len * t.grad_accum
        batches = iter(self.loader)
        bar = tqdm(
            total=t.max_steps,
            initial=self.step,
            desc="pretrain",
            unit="step",
            mininterval=1.0,
            dynamic_ncols=True,
        )
        window_start, window_steps = time.perf_counter(), 0
        with MetricsLogger(self.out_dir, resume_step=self.step) as metrics:
            if self.step < t.max_steps:
                log.info(
                    "training %s from step %d to %d on %s (%s), %d tokens/step, peak lr %.3g",
                    self.model_cfg.preset or "model",
                    self.step,
                    t.max_steps,
                    self.device,
                    self.dtype,
                    tokens_per_step,
                    t.lr,
                )
            while self.step < t.max_steps:
                step_start = time.perf_counter()
                loss, grad_norm = self._train_step(batches)
                self.step += 1
                self.tokens_seen += tokens_per_step
                window_steps += 1
                self.elapsed += time.perf_counter() - step_start
                if self.step % t.log_every == 0 or self.step == t.max_steps:
                    now = time.perf_counter()  # .item() below syncs, so the window timing is real
                    rec = self._log_record(
                        loss.item(),
                        grad_norm.item(),
                        lr_at(self.step - 1, t),
                        window_steps * tokens_per_step / max(now - window_start, 1e-9),
                    )
                    metrics.log(rec)
                    bar.set_postfix(
                        loss=f"{rec['loss']:.3f}",
                        tok_s=f"{rec['tokens_per_s']:.0f}",
                        mfu=f"{100 * rec['mfu']:.1f}%",
                    )
                    window_start, window_steps = time.perf_counter(), 0
                bar.update(1)
                if self.step % t.eval_every == 0 or self.step == t.max_steps:
                    self._eval(metrics)
                if self.step % t.ckpt_every == 0 or self.step == t.max_steps:
                    self._checkpoint()
                    window_start = time.perf_counter()  # keep eval/checkpoint time out of tokens/s
            if self.last_eval is None or self.last_eval["step"] != self.step:
                self._eval(metrics)  # e.g. resumed a finished run whose last eval was lost
        bar.close()
        plot_metrics(self.out_dir / METRICS_FILE, self.out_dir / "loss.png")
        model_dir = save_model_dir(self.out_dir / "model", self.model, self.model_cfg, self.tokenizer_dir)
        assert self.last_eval is not None
        return {
            "model_dir": model_dir,
            "val_loss": self.last_eval["val_loss"],
            "val_bpb": self.last_eval["val_bpb"],
            "steps": self.step,
            "tokens_per_s": self.tokens_seen / self.elapsed if self.elapsed > 0 else 0.0,
        }

    def _log_record(self, loss: float, grad_norm: float, lr: float, tokens_per_s: float) -> dict[str, Any]:
        t = self.tcfg
        mfu = self.flops_per_token * tokens_per_s / self.peak if self.peak > 0 else 0.0
        eta = (t.max_steps - self.step) * t.batch_size * t.seq_len * t.grad_accum / max(tokens_per_s, 1e-9)
        mem = torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else 0.0
        log.debug(  # the progress bar shows these; -v prints every logged step
            "step %6d/%d | loss %.4f | lr %.3e | grad norm %.3f | %.0f tok/s | mfu %.2f%% | mem %.1f GiB"
            " | elapsed %.0fs | eta %.0fs",
            self.step,
            t.max_steps,
            loss,
            lr,
            grad_norm,
            tokens_per_s,
            100 * mfu,
            mem,
            self.elapsed,
            eta,
        )
        return {
            "step": self.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": self.tokens_seen,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
            "elapsed": round(self.elapsed, 3),
        }


def run_pretrain(cfg: RecipeConfig, tokens_dir: Path, tokenizer_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Pretrain (or resume) a model on packed tokens; return {model_dir, val_loss, val_bpb, steps,
    tokens_per_s}. Writes out_dir/metrics.jsonl, loss.png, checkpoints/step-NNNNNN/ and model/."""
    run = _Run(cfg, Path(tokens_dir), Path(tokenizer_dir), Path(out_dir))
    return run.train()
