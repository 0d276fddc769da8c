"""One trainer for every stage that updates weights: pretraining, finetuning, reward models, preference
losses, quantization-aware training, distillation.

A stage supplies a model, an optimizer builder, a resumable stream of batches, a loss and, where it
needs them, hooks (`Hooks`): a model transform applied before the optimizer is built and before a
resume (LoRA swaps Linears by name), which parameters train, a per-step batch preparation, an
evaluation callback, extra state saved in checkpoints, and weights to start from (`init_from`). The
trainer owns the rest: accumulation normalized by target tokens, clipping, precision and fp16 loss
scaling, the spike guard with rollback, early stopping, metrics and sinks, checksummed atomic
checkpoints and exact resume.

Exactness: model, optimizer, batch position, LR step, trainer state, extra state and every RNG are
restored, so the loss at each step after a resume equals the uninterrupted run's (bitwise in fp32 on
CPU with the same thread count). Evaluation must consume no randomness, so it does not perturb this.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from danlu.config import to_dict
from danlu.errors import CheckpointCorrupt, CheckpointError, DataError
from danlu.model_dir import MODEL_DIR_FILES, load_weights, read_model_config, require_files
from danlu.train.checkpoint import (
    config_differences,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    mark_best,
    prune_checkpoints,
    remove_stale_temps,
    save_checkpoint,
)
from danlu.train.config import TrainConfig
from danlu.train.interface import (  # noqa: F401  (re-exported: the Trainer's public interface)
    Batches,
    Hooks,
    LossFn,
    LossOutput,
    Parallel,
    RunInfo,
    Stateful,
    batch_sizes,
    to_device,
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
from danlu.train.precision import autocast
from danlu.train.schedule import grad_accum_at, lr_at
from danlu.train.sinks import open_sinks
from danlu.train.stability import LossScaler, SpikeDetector

log = logging.getLogger(__name__)


class _Discard:
    """The metrics logger of a rank other than 0: records are kept by rank 0 only."""

    def log(self, record: dict[str, Any]) -> None:
        pass

    def rewind(self, step: int) -> None:
        pass


@dataclass
class TrainState:
    """The trainer's own counters; with the model, optimizer, batches and RNGs, all a resume needs."""

    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    best_val: float | None = None
    last_eval: dict[str, Any] | None = None
    evals_since_best: int = 0
    lr_mult: float = 1.0  # the spike guard's LR factor, until cooldown_until
    cooldown_until: int = 0

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in dataclasses.fields(self):
            default = f.default if f.default is not dataclasses.MISSING else None
            setattr(self, f.name, state.get(f.name, default))
        self.step, self.tokens, self.elapsed = int(self.step), int(self.tokens), float(self.elapsed)


@dataclass
class StepOutcome:
    loss: float
    grad_norm: float
    lr: float
    tokens: int
    status: str  # ok | spike | severe | overflow
    details: dict[str, Any] = field(default_factory=dict)  # on logging steps only
    local_tokens: int = 0  # the input tokens of this rank's own micro-batches


def _scalar(v: Any) -> Any:
    return float(v) if isinstance(v, torch.Tensor) else v


class Trainer:
    """`fit()` trains from the current step (0, or the newest checkpoint's) to cfg.max_steps."""

    def __init__(
        self,
        model: nn.Module,
        make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
        batches: Batches,
        loss_fn: LossFn,
        cfg: TrainConfig,
        run: RunInfo,
        device: torch.device,
        dtype: str,
        hooks: Hooks | None = None,
        flops_per_token: float = 0.0,
        parallel: Parallel | None = None,
    ):
        if cfg.lr is None:
            raise ValueError("resolve train.lr before building the Trainer")
        self.cfg, self.run, self.device, self.dtype = cfg, run, device, dtype
        self.hooks = hooks or Hooks()
        self.loss_fn, self.batches = loss_fn, batches
        self.out_dir = Path(run.out_dir)
        if self.hooks.init_from is not None and not list_checkpoints(self.out_dir):
            self._init_from(model, Path(self.hooks.init_from))
        if self.hooks.transform is not None:
            model = self.hooks.transform(model) or model
        if self.hooks.trainable is not None:
            for name, p in model.named_parameters():
                p.requires_grad_(bool(self.hooks.trainable(name, p)))
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("no parameter trains: the trainable hook rejected all of them")
        self.parallel = parallel
        self.is_main = parallel is None or parallel.is_main
        if parallel is not None:  # sharded in place before the optimizer sees the parameters
            model = parallel.shard(model)
        self.model = model
        self.model.train()
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(model)
        if parallel is not None:  # e.g. ZeRO-1: the optimizer state sharded over the ranks
            self.optimizer = parallel.wrap_optimizer(self.optimizer)
        self.state = TrainState()
        self.scaler = LossScaler() if dtype == "fp16" else None
        self.spikes = SpikeDetector(cfg.spike_k, cfg.spike_k_severe)
        self.clip_rate, self.alerts = ClipRate(), Alerts()
        self._resume()
        if cfg.activation_checkpointing:
            n = apply_activation_checkpointing(self.model, cfg.activation_checkpointing)
            log.info("activation checkpointing on %d blocks", n)
        # compile after loading weights: the compiled wrapper shares the parameters of self.model
        forward = parallel.wrap_forward(self.model) if parallel is not None else self.model
        self.forward = torch.compile(forward) if cfg.compile else forward
        # A frozen weight (LoRA's base, a QLoRA base) still costs its forward and its input gradient,
        # but no weight gradient: 4 FLOPs per token, not the 6 that flops_per_token counts.
        frozen = sum(
            m.weight.numel()
            for m in model.modules()
            if isinstance(m, nn.Linear) and isinstance(m.weight, nn.Parameter) and not m.weight.requires_grad
        )
        self.flops_per_token = max(flops_per_token - 2 * frozen, 0.0) if flops_per_token else 0.0
        self.peak = peak_flops(device.type, dtype, torch.get_num_threads())

    # --- state, checkpoints, resume, rollback -------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The trainer state a checkpoint stores beside the weights and the optimizer."""
        out = self.state.state_dict()
        out.pop("step")  # save_checkpoint records it
        return out | {
            "loader": self.batches.state_dict(),
            "tokenizer_fingerprint": self.run.fingerprint,
            "spikes": self.spikes.state_dict(),
            "loss_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "extra": {k: v.state_dict() for k, v in self.hooks.extra_state.items()},
        }

    def load_state_dict(self, state: dict[str, Any], restore_batches: bool = True) -> None:
        """Restore the counters, and unless rolling back (which keeps its place in the data and its
        spike statistics) the batch position and the spike guard."""
        self.state.load_state_dict(state)
        if restore_batches:
            self.batches.load_state_dict(state["loader"])
            if "spikes" in state:
                self.spikes.load_state_dict(state["spikes"])
        if self.scaler is not None and state.get("loss_scaler"):
            self.scaler.load_state_dict(state["loss_scaler"])
        for key, obj in self.hooks.extra_state.items():
            if key not in state.get("extra", {}):
                raise CheckpointError(f"the checkpoint has no {key!r} state, which this stage needs")
            obj.load_state_dict(state["extra"][key])

    def _init_from(self, model: nn.Module, path: Path) -> None:
        require_files(path, MODEL_DIR_FILES)
        diffs = config_differences(read_model_config(path), self.run.model_cfg)
        if diffs:
            raise CheckpointError(f"init_from {path} has another model shape: {'; '.join(diffs)}")
        load_weights(model, path, self.device)
        log.info("initialised from %s", path)

    def _resume(self) -> None:
        """Continue from the newest checkpoint that loads; a corrupt one is moved aside with a warning
        and the one before it is used. A checkpoint of another run is an error, never skipped."""
        remove_stale_temps(self.out_dir)
        for _, path in reversed(list_checkpoints(self.out_dir)):
            try:
                self._restore(path, restore_batches=True)
                return
            except CheckpointCorrupt as e:
                if self.parallel is not None:  # every rank has read it before the main rank moves it
                    self.parallel.barrier()
                aside = path.with_name(f"corrupt-{path.name}")
                if self.is_main:
                    shutil.rmtree(aside, ignore_errors=True)
                    path.rename(aside)
                    log.warning("%s; moved it to %s and trying the previous checkpoint", e, aside)
                if self.parallel is not None:
                    self.parallel.barrier()

    def _restore(self, path: Path, restore_batches: bool) -> None:
        r = self.run
        load = self.parallel.load_checkpoint if self.parallel is not None else load_checkpoint
        state = load(path, self.model, self.optimizer, r.model_cfg, r.fingerprint, self.device)
        self.load_state_dict(state, restore_batches)
        log.info("restored %s (step %d, %d tokens)", path, self.state.step, self.state.tokens)

    def _checkpoint(self) -> None:
        r, s = self.run, self.state
        save = self.parallel.save_checkpoint if self.parallel is not None else save_checkpoint
        save(
            self.out_dir,
            s.step,
            self.model,
            self.optimizer,
            r.model_cfg,
            r.run_config,
            self.state_dict(),
            r.tokenizer_dir,
        )
        ev = s.last_eval
        if self.is_main:
            if ev is not None and ev["step"] == s.step and ev["val_loss"] == s.best_val:
                mark_best(self.out_dir, s.step, ev["val_loss"])
            prune_checkpoints(self.out_dir, self.cfg.keep_last)
        if self.parallel is not None:
            self.parallel.barrier()

    def _rollback(self, metrics: MetricsLogger, loss: float) -> None:
        """Back to the newest checkpoint, keeping the batch stream where it is: the batches since
        then, the one that blew up included, are skipped."""
        bad_step = self.state.step + 1
        path = latest_checkpoint(self.out_dir)
        if path is None:
            metrics.log({"step": bad_step, "event": "severe_spike_skipped", "loss": loss})
            log.warning(
                "step %d: loss %.4g is a severe spike; no checkpoint yet, step skipped", bad_step, loss
            )
            return
        self._restore(path, restore_batches=False)
        metrics.rewind(self.state.step)
        metrics.log({"step": bad_step, "event": "rollback", "loss": loss, "to_step": self.state.step})
        log.warning(
            "step %d: loss %.4g is a severe spike; rolled back to step %d", bad_step, loss, self.state.step
        )

    # --- one step -----------------------------------------------------------------------------------

    def forward_backward(
        self, micro_batches: list[Any], loss_scale: float = 1.0, counts: list[int] | None = None
    ) -> tuple[torch.Tensor, dict]:
        """Accumulate the gradients of one optimizer step's micro-batches; return (its mean loss per
        target token, the last micro-batch's loss metrics).

        Each micro-batch's summed loss is divided by the target-token count of the whole step, so the
        gradient is that of one batch holding all of them, even when their counts differ (masked or
        padded targets). An aux loss (a per-micro-batch mean) is weighted by the micro-batch's share
        of the tokens and trained on, but is not part of the returned loss. counts: each micro-batch's
        target tokens, if the caller has them already."""
        if counts is None:
            counts = [self.hooks.sizes(mb)[1] for mb in micro_batches]
        n_tokens = sum(counts) if self.parallel is None else self.parallel.count(sum(counts))
        grad_scale = 1.0 if self.parallel is None else self.parallel.grad_scale
        if n_tokens == 0:
            raise DataError("an optimizer step has no target tokens (every target is masked)")
        if self.parallel is not None and self.parallel.pipelined:  # the schedule runs the whole step
            batch = [to_device(mb, self.device) for mb in micro_batches]
            return self.parallel.forward_backward(batch, n_tokens, loss_scale), {}
        total = torch.zeros((), device=self.device)
        metrics: dict[str, Any] = {}
        for i, (mb, count) in enumerate(zip(micro_batches, counts, strict=True)):
            last = i == len(micro_batches) - 1
            sync = (
                self.parallel.accumulating(self.forward, last) if self.parallel else contextlib.nullcontext()
            )
            with sync:
                with autocast(self.device, self.dtype):
                    out = self.loss_fn(self.forward, to_device(mb, self.device))
                assert out.n_tokens == count, "loss_fn counted other target tokens than Hooks.sizes"
                loss = out.loss_sum / n_tokens
                objective = loss if out.aux is None else loss + out.aux * (count / n_tokens)
                (objective * (loss_scale * grad_scale)).backward()
            total += loss.detach()
            metrics = out.metrics
        return total, metrics

    def _train_step(self, batches: Iterator[Any]) -> StepOutcome:
        """One optimizer step over this step's micro-batches, unless a guard refuses it."""
        t, s = self.cfg, self.state
        micro = [next(batches) for _ in range(grad_accum_at(s.step, t))]
        if self.hooks.prepare is not None:
            micro = [self.hooks.prepare(mb, s.step, i) for i, mb in enumerate(micro)]
        lr = lr_at(s.step, t) * (s.lr_mult if s.step < s.cooldown_until else 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        scale = self.scaler.scale if self.scaler is not None else 1.0
        sizes = [self.hooks.sizes(mb) for mb in micro]
        loss_t, loss_metrics = self.forward_backward(micro, scale, [n for _, n in sizes])
        tokens = local_tokens = sum(n for n, _ in sizes)
        if self.parallel is not None:  # the step's loss and tokens over every data-parallel rank
            loss_t, tokens = self.parallel.sum(loss_t), self.parallel.count(tokens)
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
        # per-group norms and update ratios would cover one pipeline stage only: not logged then
        pipelined = self.parallel is not None and self.parallel.pipelined
        detailed = (s.step + 1) % t.log_every == 0 and not pipelined
        details: dict[str, Any] = {}
        if detailed:  # measured before clipping, like the total norm
            details["grad_norm_by_group"] = grad_norms_by_group(self.model)
            update = UpdateRatio(self.model)
        if t.grad_clip_group > 0:
            clip_grad_norm_by_group(self.model, t.grad_clip_group)
        if self.parallel is not None:
            grad_norm = self.parallel.clip_grad_norm_(self.trainable, max_norm)
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, max_norm))
        if not math.isfinite(grad_norm):  # a finite loss with inf/nan gradients: never step on them
            self.optimizer.zero_grad(set_to_none=True)
            return StepOutcome(loss, grad_norm, lr, tokens, "severe")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if detailed:
            details["update_ratio_by_group"] = update.ratios()
            if self.hooks.step_metrics is not None:
                details |= self.hooks.step_metrics(self.model)
            details |= {k: _scalar(v) for k, v in loss_metrics.items()}
        return StepOutcome(loss, grad_norm, lr, tokens, verdict, details, local_tokens)

    def _eval(self, metrics: MetricsLogger) -> None:
        if self.hooks.evaluate is None:
            return
        s = self.state
        if self.parallel is not None:
            self.parallel.sync_model(self.model)
        self.model.eval()  # dropout off: an evaluation must not draw random numbers
        try:
            result = self.hooks.evaluate(self.forward)
        finally:
            self.model.train()
        val_loss = result["val_loss"]
        if s.best_val is None or val_loss < s.best_val:
            s.best_val, s.evals_since_best = val_loss, 0
        else:
            s.evals_since_best += 1
        s.last_eval = {"step": s.step, **result}
        metrics.log({**s.last_eval, "elapsed": round(s.elapsed, 3)})
        log.info("step %6d | %s", s.step, " | ".join(f"{k} {v:.4f}" for k, v in result.items()))
        if self.is_main:
            plot_metrics(self.out_dir / METRICS_FILE, self.out_dir / "loss.png")

    def _should_stop_early(self) -> bool:
        p = self.cfg.early_stop_patience
        return p > 0 and self.state.evals_since_best >= p

    def _out_of_time(self) -> bool:
        return self.cfg.max_minutes > 0 and self.state.elapsed >= 60 * self.cfg.max_minutes

    # --- the loop -----------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to max_steps (or an early stop, or train.max_minutes); return the last evaluation's numbers, steps and
        tokens_per_s. Writes metrics.jsonl, loss.png and checkpoints/ under the run's out_dir."""
        t, s = self.cfg, self.state
        batches = iter(self.batches)
        bar = tqdm(
            total=t.max_steps,
            initial=s.step,
            desc=self.run.name,
            unit="step",
            mininterval=1.0,
            dynamic_ncols=True,
            disable=not self.is_main,
        )
        window_start, window_steps, window_tokens, clipped = time.perf_counter(), 0, 0, 0
        window_local = 0  # this rank's own input tokens in the logging window
        run_name = getattr(self.run.run_config, "name", self.out_dir.name)
        logger: Any = _Discard()
        if self.is_main:
            sinks = open_sinks(t.sinks, self.out_dir, run_name, self._config_record())
            logger = MetricsLogger(self.out_dir, resume_step=s.step, sinks=sinks)
        with logger if self.is_main else contextlib.nullcontext(logger) as metrics:
            if s.step < t.max_steps:
                log.info(
                    "%s: %s from step %d to %d on %s (%s), peak lr %.3g",
                    self.run.name, self.run.model_cfg.preset or "model", s.step, t.max_steps,
                    self.device, self.dtype, t.lr,
                )  # fmt: skip
            while s.step < t.max_steps and not self._out_of_time():
                step_start = time.perf_counter()
                out = self._train_step(batches)
                if out.status == "severe":
                    self._rollback(metrics, out.loss)
                    bar.n = s.step
                    window_start, window_steps, window_tokens = time.perf_counter(), 0, 0
                    window_local = 0
                    if latest_checkpoint(self.out_dir) is None:
                        s.step += 1  # skipped, and the schedule moves on
                    continue
                self._note_guards(out, metrics)
                s.step += 1
                s.tokens += out.tokens
                window_steps += 1
                window_tokens += out.tokens
                window_local += out.local_tokens
                was_clipped = t.grad_clip > 0 and out.grad_norm > t.grad_clip
                clipped += was_clipped
                if s.step > t.warmup_steps:  # warmup steps are clipped as a matter of course
                    self.clip_rate.add(was_clipped)
                s.elapsed += time.perf_counter() - step_start
                if s.step % t.log_every == 0 or s.step == t.max_steps:
                    now = time.perf_counter()
                    rate = window_tokens / max(now - window_start, 1e-9)
                    rec = self._log_record(
                        out, rate, clipped / window_steps, window_local / max(window_tokens, 1)
                    )
                    metrics.log(rec)
                    self._alerts(out, metrics)
                    bar.set_postfix(
                        loss=f"{rec['loss']:.3f}",
                        tok_s=f"{rec['tokens_per_s']:.0f}",
                        mfu=f"{100 * rec['mfu']:.1f}%",
                    )
                    window_start, window_steps, window_tokens, clipped = time.perf_counter(), 0, 0, 0
                    window_local = 0
                bar.update(1)
                if s.step % t.eval_every == 0 or s.step == t.max_steps:
                    self._eval(metrics)
                stop = self._should_stop_early()
                out_of_time = s.step < t.max_steps and self._out_of_time()
                if s.step % t.ckpt_every == 0 or s.step == t.max_steps or stop or out_of_time:
                    self._checkpoint()
                    window_start = time.perf_counter()  # keep eval/checkpoint time out of tokens/s
                if out_of_time:
                    metrics.log({"step": s.step, "event": "time_budget", "elapsed": round(s.elapsed, 3)})
                    log.info("time budget: stopped at step %d after %.1f minutes", s.step, s.elapsed / 60)
                if stop:
                    metrics.log({"step": s.step, "event": "early_stop", "best_val": s.best_val})
                    log.info(
                        "early stop at step %d: no better validation loss in %d evaluations",
                        s.step,
                        t.early_stop_patience,
                    )
                    break
            if self.hooks.evaluate is not None and (s.last_eval is None or s.last_eval["step"] != s.step):
                self._eval(metrics)  # e.g. resumed a finished run whose last eval was lost
        bar.close()
        if self.is_main:
            plot_metrics(self.out_dir / METRICS_FILE, self.out_dir / "loss.png")
        last = {k: v for k, v in (s.last_eval or {}).items() if k != "step"}
        return last | {
            "steps": s.step,
            "tokens_per_s": s.tokens / s.elapsed if s.elapsed > 0 else 0.0,
        }

    def _config_record(self) -> dict[str, Any]:
        rc = self.run.run_config
        return to_dict(rc) if dataclasses.is_dataclass(rc) else dict(rc or {})

    def _note_guards(self, out: StepOutcome, metrics: MetricsLogger) -> None:
        s, t = self.state, self.cfg
        if out.status == "spike":
            s.lr_mult, s.cooldown_until = 0.5, s.step + 1 + t.spike_cooldown
            metrics.log({"step": s.step + 1, "event": "spike", "loss": out.loss, "lr_mult": 0.5})
            log.warning(
                "step %d: loss spike %.4f; LR halved for %d steps", s.step + 1, out.loss, t.spike_cooldown
            )
        if out.status == "overflow":
            assert self.scaler is not None
            metrics.log({"step": s.step + 1, "event": "fp16_overflow", "loss_scale": self.scaler.scale})

    def _alerts(self, out: StepOutcome, metrics: MetricsLogger) -> None:
        rate = self.clip_rate.rate if self.clip_rate.full else 0.0
        for event, message in self.alerts.update(alerts(out.grad_norm, rate)):
            metrics.log({"step": self.state.step, "event": event, "message": message})
            level = logging.WARNING if event == "alert" else logging.INFO
            log.log(level, "step %d: %s %s", self.state.step, event, message)

    def _log_record(
        self, out: StepOutcome, tokens_per_s: float, clip_rate: float, local_share: float = 1.0
    ) -> dict[str, Any]:
        t, s = self.cfg, self.state
        mfu = self.flops_per_token * tokens_per_s / self.peak if self.peak > 0 else 0.0
        eta = (t.max_steps - s.step) * t.batch_size * t.seq_len * t.grad_accum / max(tokens_per_s, 1e-9)
        if self.device.type == "cuda":
            mem = torch.cuda.max_memory_allocated() / 2**30
        else:  # peak resident memory of the process (KiB on Linux, bytes on macOS)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            mem = rss / (2**30 if sys.platform == "darwin" else 2**20)
        log.debug(  # the progress bar shows these; -v prints every logged step
            "step %6d/%d | loss %.4f | lr %.3e | grad norm %.3f | %.0f tok/s | mfu %.2f%% | mem %.1f GiB | eta %.0fs",
            s.step, t.max_steps, out.loss, out.lr, out.grad_norm, tokens_per_s, 100 * mfu, mem, eta,
        )  # fmt: skip
        rec = {
            "step": s.step,
            "loss": out.loss,
            "lr": out.lr,
            "grad_norm": out.grad_norm,
            "clip_rate": clip_rate,
            "tokens": s.tokens,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
            "elapsed": round(s.elapsed, 3),
        }
        rec.update(out.details)
        if self.scaler is not None:
            rec["loss_scale"] = self.scaler.scale
        if mem:
            rec["mem_gib"] = mem
        if self.parallel is not None:  # every rank's peak memory and own tokens/s (a collective)
            by_rank = self.parallel.gather([mem, tokens_per_s * local_share])
            rec["mem_gib_by_rank"] = [round(m, 4) for m, _ in by_rank]
            rec["tokens_per_s_by_rank"] = [round(r, 1) for _, r in by_rank]
        return rec
