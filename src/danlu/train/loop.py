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
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from danlu.config import to_dict
from danlu.errors import CheckpointCorrupt, ConfigError, DataError
from danlu.model.config import ModelConfig
from danlu.recipe import RecipeConfig
from danlu.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    mark_best,
    prune_checkpoints,
    remove_stale_temps,
    save_checkpoint,
    save_model_dir,
)
from danlu.train.config import TrainConfig
from danlu.train.losses import (
    IGNORE_INDEX,
    bits_per_byte,
    nats_and_bytes,
    summed_lm_loss,
    token_cross_entropy,
)
from danlu.train.memory import apply_activation_checkpointing
from danlu.train.metrics import METRICS_FILE, MetricsLogger, peak_flops, plot_metrics
from danlu.train.monitor import (
    Alerts,
    ClipRate,
    UpdateRatio,
    alerts,
    clip_grad_norm_by_group,
    grad_norms_by_group,
)
from danlu.train.objectives import Objective
from danlu.train.optimizers import build_named_optimizer
from danlu.train.schedule import grad_accum_at, lr_at
from danlu.train.sinks import open_sinks
from danlu.train.stability import LossScaler, SpikeDetector

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
    if dtype == "fp16":  # weights stay fp32 (the master copy); matmuls run in fp16
        return torch.autocast(device_type=device.type, dtype=torch.float16)
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
    objective: Objective | None = None,
) -> tuple[float, float]:
    """(mean loss in nats/token, bits per byte) over `tcfg.eval_batches` batches of `dataset`, under
    the training objective (its random choices fixed per batch, so every evaluation sees the same)."""
    from danlu.data.loader import eval_batches

    was_training = model.training
    model.eval()
    nats_all, n_tokens, nats_text, n_bytes = 0.0, 0, 0.0, 0
    batches = eval_batches(dataset, tcfg.batch_size, tcfg.seq_len, max_batches=tcfg.eval_batches)
    for i, (x, y) in enumerate(batches):
        mask = None
        if objective is not None:
            x, y, mask = dataclasses.astuple(objective(x, y, step=-1 - i))
        x, y = x.to(device), y.to(device)
        with autocast(device, dtype):
            logits = model(x) if mask is None else model(x, attn_mask=mask.to(device))
        losses = token_cross_entropy(logits, y)
        nats_all += float(losses.double().sum())
        n_tokens += int((y != IGNORE_INDEX).sum())
        nats, nb = nats_and_bytes(losses, y, token_bytes)
        nats_text += nats
        n_bytes += nb
    model.train(was_training)
    if n_tokens == 0:
        raise DataError("the validation split yields no batch; lower train.seq_len/batch_size or add data")
    return nats_all / n_tokens, bits_per_byte(nats_text, n_bytes)


def moe_stats(model: Any) -> dict[str, Any]:
    """Router loss and each MoE layer's share of tokens per expert since the last call (then reset)."""
    loads = []
    for moe in model.moe_layers:
        counts = moe.load.double()
        loads.append([round(v, 4) for v in (counts / counts.sum().clamp(min=1)).tolist()])
        moe.reset_load()
    out: dict[str, Any] = {"moe_load": loads}
    if model.moe_loss is not None:
        out["moe_loss"] = float(model.moe_loss)
    return out


def forward_backward(
    model: Callable[[torch.Tensor], torch.Tensor],
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    dtype: str = "fp32",
    z_loss: float = 0.0,
    loss_scale: float = 1.0,
    aux_loss: Callable[[], torch.Tensor | None] | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Accumulate the gradients of one optimizer step's micro-batches; return its mean loss per token.

    Each micro-batch's summed loss is divided by the token count of the whole step, so the gradient
    is that of one batch holding all the micro-batches, even when their token counts differ
    (masked or padded targets). loss_scale multiplies the loss before backward (fp16). aux_loss, read
    after each forward, is a per-micro-batch mean (MoE router losses): it is weighted by the
    micro-batch's share of the tokens and trained on, but not part of the returned LM loss. A
    micro-batch (x, y, attn_mask) attends through attn_mask (non-causal objectives).
    """
    n_tokens = sum(int((mb[1] != IGNORE_INDEX).sum()) for mb in micro_batches)
    if n_tokens == 0:
        raise DataError("an optimizer step has no target tokens (every target is masked)")
    total = torch.zeros((), device=device)
    for x, y, *rest in micro_batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        mask = rest[0] if rest else None
        with autocast(device, dtype):
            logits = model(x) if mask is None else model(x, attn_mask=mask.to(device))
        loss = summed_lm_loss(logits, y, z_loss, label_smoothing) / n_tokens
        extra = aux_loss() if aux_loss is not None else None
        objective = loss if extra is None else loss + extra * (int((y != IGNORE_INDEX).sum()) / n_tokens)
        (objective * loss_scale).backward()
        total += loss.detach()
    return total


@dataclasses.dataclass
class StepOutcome:
    loss: float
    grad_norm: float
    lr: float
    tokens: int
    status: str  # ok | spike | severe | overflow
    details: dict[str, Any] = dataclasses.field(default_factory=dict)  # on logging steps only


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
        options = {"muon_lr": tcfg.muon_lr} if tcfg.optimizer == "muon" else {}
        self.optimizer = build_named_optimizer(self.model, tcfg.optimizer, self.tcfg, **options)
        self.loader = TrainLoader(self.train_ds, tcfg.batch_size, tcfg.seq_len, tcfg.seed)
        self.objective = None
        if tcfg.objective != "causal":
            self.objective = Objective(
                tcfg.objective,
                self.tok,
                tcfg.seed,
                mlm_rate=tcfg.mlm_rate,
                fim_rate=tcfg.fim_rate,
                fim_spm_rate=tcfg.fim_spm_rate,
                span_noise=tcfg.span_noise,
                span_mean=tcfg.span_mean,
            )
        self.step, self.tokens_seen, self.elapsed = 0, 0, 0.0
        self.best_val: float | None = None
        self.last_eval: dict[str, Any] | None = None
        self.evals_since_best = 0
        self.scaler = LossScaler() if self.dtype == "fp16" else None
        self.spikes = SpikeDetector(tcfg.spike_k, tcfg.spike_k_severe)
        self.lr_mult, self.cooldown_until = 1.0, 0
        self.clip_rate = ClipRate()
        self.alerts = Alerts()
        self._resume()
        if tcfg.activation_checkpointing:
            n = apply_activation_checkpointing(self.model, tcfg.activation_checkpointing)
            log.info("activation checkpointing on %d of %d blocks", n, len(self.model.blocks))
        # compile after loading weights: the compiled wrapper shares the parameters of self.model
        self.forward = torch.compile(self.model) if tcfg.compile else self.model
        self.flops_per_token = float(self.model.flops_per_token(tcfg.seq_len))
        self.peak = peak_flops(self.device.type, self.dtype, torch.get_num_threads())

    # --- resume, checkpoints, rollback --------------------------------------------------------------

    def _resume(self) -> None:
        """Continue from the newest checkpoint that loads; a corrupt one is moved aside with a warning
        and the one before it is used. A checkpoint of another run is an error, never skipped."""
        remove_stale_temps(self.out_dir)
        for _, path in reversed(list_checkpoints(self.out_dir)):
            try:
                self._restore(path, restore_loader=True)
                return
            except CheckpointCorrupt as e:
                aside = path.with_name(f"corrupt-{path.name}")
                shutil.rmtree(aside, ignore_errors=True)
                path.rename(aside)
                log.warning("%s; moved it to %s and trying the previous checkpoint", e, aside)

    def _restore(self, path: Path, restore_loader: bool) -> None:
        state = load_checkpoint(
            path, self.model, self.optimizer, self.model_cfg, self.tok.fingerprint(), self.device
        )
        if restore_loader:
            self.loader.load_state_dict(state["loader"])
        self.step = int(state["step"])
        self.tokens_seen = int(state.get("tokens", 0))
        self.elapsed = float(state.get("elapsed", 0.0))
        self.best_val = state.get("best_val")
        self.last_eval = state.get("last_eval")
        self.evals_since_best = int(state.get("evals_since_best", 0))
        self.lr_mult = float(state.get("lr_mult", 1.0))
        self.cooldown_until = int(state.get("cooldown_until", 0))
        if restore_loader and "spikes" in state:  # a rollback keeps the statistics it has now
            self.spikes.load_state_dict(state["spikes"])
        if self.scaler is not None and "loss_scaler" in state:
            self.scaler.load_state_dict(state["loss_scaler"])
        log.info("restored %s (step %d, %d tokens)", path, self.step, self.tokens_seen)

    def _checkpoint(self) -> None:
        state = {
            "loader": self.loader.state_dict(),
            "tokens": self.tokens_seen,
            "tokenizer_fingerprint": self.tok.fingerprint(),
            "elapsed": self.elapsed,
            "best_val": self.best_val,
            "last_eval": self.last_eval,
            "evals_since_best": self.evals_since_best,
            "lr_mult": self.lr_mult,
            "cooldown_until": self.cooldown_until,
            "spikes": self.spikes.state_dict(),
            "loss_scaler": self.scaler.state_dict() if self.scaler is not None else None,
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
        ev = self.last_eval
        if ev is not None and ev["step"] == self.step and ev["val_loss"] == self.best_val:
            mark_best(self.out_dir, self.step, ev["val_loss"])
        prune_checkpoints(self.out_dir, self.tcfg.keep_last)

    def _rollback(self, metrics: MetricsLogger, loss: float) -> None:
        """Back to the newest checkpoint, keeping the loader where it is: the batches since then,
        the one that blew up included, are skipped."""
        bad_step = self.step + 1
        path = latest_checkpoint(self.out_dir)
        if path is None:
            metrics.log({"step": bad_step, "event": "severe_spike_skipped", "loss": loss})
            log.warning(
                "step %d: loss %.4g is a severe spike; no checkpoint yet, step skipped", bad_step, loss
            )
            return
        self._restore(path, restore_loader=False)
        metrics.rewind(self.step)
        metrics.log({"step": bad_step, "event": "rollback", "loss": loss, "to_step": self.step})
        log.warning("step %d: loss %.4g is a severe spike; rolled back to step %d", bad_step, loss, self.step)

    # --- one step -----------------------------------------------------------------------------------

    def _train_step(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> StepOutcome:
        """One optimizer step over this step's micro-batches, unless a guard refuses it."""
        t = self.tcfg
        accum = grad_accum_at(self.step, t)
        micro: list[tuple[torch.Tensor, ...]] = [next(batches) for _ in range(accum)]
        if self.objective is not None:
            micro = [
                dataclasses.astuple(self.objective(x, y, self.step, i)) for i, (x, y) in enumerate(micro)
            ]
        lr = lr_at(self.step, t) * (self.lr_mult if self.step < self.cooldown_until else 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        scale = self.scaler.scale if self.scaler is not None else 1.0
        moe_loss = (lambda: self.model.moe_loss) if self.model.moe_layers else None
        loss_t = forward_backward(
            self.forward, micro, self.device, self.dtype, t.z_loss, scale, moe_loss, t.label_smoothing
        )
        tokens = sum(mb[0].numel() for mb in micro)
        overflow = self.scaler.unscale_(self.model.parameters()) if self.scaler is not None else False
        if self.scaler is not None:
            self.scaler.update(overflow)
        loss = loss_t.item()  # one sync per step: the spike guard needs the value now
        verdict = self.spikes.check(loss) if t.spike_guard and not overflow else "ok"
        if overflow or verdict == "severe":
            self.optimizer.zero_grad(set_to_none=True)
            return StepOutcome(loss, float("nan"), lr, tokens, "overflow" if overflow else "severe")
        # max_norm=inf still returns the norm and scales by exactly 1, so clipping off changes nothing
        max_norm = t.grad_clip if t.grad_clip > 0 else math.inf
        detailed = (self.step + 1) % t.log_every == 0
        details: dict[str, Any] = {}
        if detailed:  # measured before clipping, like the total norm
            details["grad_norm_by_group"] = grad_norms_by_group(self.model)
            update = UpdateRatio(self.model)
        if t.grad_clip_group > 0:
            clip_grad_norm_by_group(self.model, t.grad_clip_group)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not math.isfinite(grad_norm):  # a finite loss with inf/nan gradients: never step on them
            self.optimizer.zero_grad(set_to_none=True)
            return StepOutcome(loss, grad_norm, lr, tokens, "severe")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if detailed:
            details["update_ratio_by_group"] = update.ratios()
            if self.model.moe_layers:
                details |= moe_stats(self.model)
        return StepOutcome(loss, grad_norm, lr, tokens, verdict, details)

    def _eval(self, metrics: MetricsLogger) -> None:
        val_loss, val_bpb = evaluate(
            self.forward, self.val_ds, self.tcfg, self.token_bytes, self.device, self.dtype, self.objective
        )
        if self.best_val is None or val_loss < self.best_val:
            self.best_val, self.evals_since_best = val_loss, 0
        else:
            self.evals_since_best += 1
        self.last_eval = {"step": self.step, "val_loss": val_loss, "val_bpb": val_bpb}
        metrics.log({**self.last_eval, "elapsed": round(self.elapsed, 3)})
        log.info("step %6d | val loss %.4f | val bpb %.4f", self.step, val_loss, val_bpb)
        plot_metrics(self.out_dir / METRICS_FILE, self.out_dir / "loss.png")

    def _should_stop_early(self) -> bool:
        p = self.tcfg.early_stop_patience
        return p > 0 and self.evals_since_best >= p

    def train(self) -> dict[str, Any]:
        t = self.tcfg
        batches = iter(self.loader)
        bar = tqdm(
            total=t.max_steps,
            initial=self.step,
            desc="pretrain",
            unit="step",
            mininterval=1.0,
            dynamic_ncols=True,
        )
        window_start, window_steps, window_tokens, clipped = time.perf_counter(), 0, 0, 0
        sinks = open_sinks(t.sinks, self.out_dir, self.cfg.name, to_dict(self.cfg))
        with MetricsLogger(self.out_dir, resume_step=self.step, sinks=sinks) as metrics:
            if self.step < t.max_steps:
                log.info(
                    "training %s from step %d to %d on %s (%s), peak lr %.3g",
                    self.model_cfg.preset or "model", self.step, t.max_steps, self.device, self.dtype, t.lr,
                )  # fmt: skip
            while self.step < t.max_steps:
                step_start = time.perf_counter()
                out = self._train_step(batches)
                if out.status == "severe":
                    self._rollback(metrics, out.loss)
                    bar.n = self.step
                    window_start, window_steps, window_tokens = time.perf_counter(), 0, 0
                    if latest_checkpoint(self.out_dir) is None:
                        self.step += 1  # skipped, and the schedule moves on
                    continue
                if out.status == "spike":
                    self.lr_mult, self.cooldown_until = 0.5, self.step + 1 + t.spike_cooldown
                    metrics.log({"step": self.step + 1, "event": "spike", "loss": out.loss, "lr_mult": 0.5})
                    log.warning(
                        "step %d: loss spike %.4f; LR halved for %d steps",
                        self.step + 1,
                        out.loss,
                        t.spike_cooldown,
                    )
                if out.status == "overflow":
                    metrics.log(
                        {"step": self.step + 1, "event": "fp16_overflow", "loss_scale": self.scaler.scale}
                    )
                self.step += 1
                self.tokens_seen += out.tokens
                window_steps += 1
                window_tokens += out.tokens
                was_clipped = t.grad_clip > 0 and out.grad_norm > t.grad_clip
                clipped += was_clipped
                if self.step > t.warmup_steps:  # warmup steps are clipped as a matter of course
                    self.clip_rate.add(was_clipped)
                self.elapsed += time.perf_counter() - step_start
                if self.step % t.log_every == 0 or self.step == t.max_steps:
                    now = time.perf_counter()
                    rec = self._log_record(
                        out, window_tokens / max(now - window_start, 1e-9), clipped / window_steps
                    )
                    metrics.log(rec)
                    rate = self.clip_rate.rate if self.clip_rate.full else 0.0
                    for event, message in self.alerts.update(alerts(out.grad_norm, rate)):
                        metrics.log({"step": self.step, "event": event, "message": message})
                        log.log(
                            logging.WARNING if event == "alert" else logging.INFO,
                            "step %d: %s %s",
                            self.step,
                            event,
                            message,
                        )
                    bar.set_postfix(
                        loss=f"{rec['loss']:.3f}",
                        tok_s=f"{rec['tokens_per_s']:.0f}",
                        mfu=f"{100 * rec['mfu']:.1f}%",
                    )
                    window_start, window_steps, window_tokens, clipped = time.perf_counter(), 0, 0, 0
                bar.update(1)
                if self.step % t.eval_every == 0 or self.step == t.max_steps:
                    self._eval(metrics)
                stop = self._should_stop_early()
                if self.step % t.ckpt_every == 0 or self.step == t.max_steps or stop:
                    self._checkpoint()
                    window_start = time.perf_counter()  # keep eval/checkpoint time out of tokens/s
                if stop:
                    metrics.log({"step": self.step, "event": "early_stop", "best_val": self.best_val})
                    log.info(
                        "early stop at step %d: no better validation loss in %d evaluations",
                        self.step,
                        t.early_stop_patience,
                    )
                    break
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

    def _log_record(self, out: StepOutcome, tokens_per_s: float, clip_rate: float) -> dict[str, Any]:
        t = self.tcfg
        mfu = self.flops_per_token * tokens_per_s / self.peak if self.peak > 0 else 0.0
        eta = (t.max_steps - self.step) * t.batch_size * t.seq_len * t.grad_accum / max(tokens_per_s, 1e-9)
        if self.device.type == "cuda":
            mem = torch.cuda.max_memory_allocated() / 2**30
        else:  # peak resident memory of the process (KiB on Linux, bytes on macOS)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            mem = rss / (2**30 if sys.platform == "darwin" else 2**20)
        log.debug(  # the progress bar shows these; -v prints every logged step
            "step %6d/%d | loss %.4f | lr %.3e | grad norm %.3f | %.0f tok/s | mfu %.2f%% | mem %.1f GiB | eta %.0fs",
            self.step, t.max_steps, out.loss, out.lr, out.grad_norm, tokens_per_s, 100 * mfu, mem, eta,
        )  # fmt: skip
        rec = {
            "step": self.step,
            "loss": out.loss,
            "lr": out.lr,
            "grad_norm": out.grad_norm,
            "clip_rate": clip_rate,
            "tokens": self.tokens_seen,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
            "elapsed": round(self.elapsed, 3),
        }
        rec.update(out.details)
        if self.scaler is not None:
            rec["loss_scale"] = self.scaler.scale
        if mem:
            rec["mem_gib"] = mem
        return rec


def run_pretrain(cfg: RecipeConfig, tokens_dir: Path, tokenizer_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Pretrain (or resume) a model on packed tokens; return {model_dir, val_loss, val_bpb, steps,
    tokens_per_s}. Writes out_dir/metrics.jsonl, loss.png, checkpoints/step-NNNNNN/ and model/."""
    run = _Run(cfg, Path(tokens_dir), Path(tokenizer_dir), Path(out_dir))
    return run.train()
