"""The training settings (`train.*` in a recipe), shared by every stage that updates weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from danlu.errors import check

SCHEDULES = ("cosine", "linear", "constant", "inv_sqrt", "wsd")
WARMUP_SHAPES = ("linear", "cosine", "exponential")
# the names train.optimizer and train.objective accept (their builders check against these)
OPTIMIZERS = ("adamw", "lion", "adafactor", "adamw8bit", "muon")
OBJECTIVES = ("causal", "mlm", "prefix_lm", "fim", "span")


@dataclass
class LayerLRMults:
    # Multipliers of the learning rate per layer group (muP-style tuning, slower embeddings, ...).
    embed: float = 1.0
    attn: float = 1.0
    mlp: float = 1.0
    norm: float = 1.0
    head: float = 1.0

    def __post_init__(self) -> None:
        for k, v in dataclasses.asdict(self).items():
            check(v > 0, f"train.lr_mults.{k}", f"must be > 0, got {v}")


@dataclass
class TrainConfig:
    # Tokens per training sequence (must not exceed model.max_seq_len).
    seq_len: int = 256
    # Sequences per micro-batch.
    batch_size: int = 16
    # Micro-batches per optimizer step.
    grad_accum: int = 1
    max_steps: int = 1000
    # Stop (checkpoint, evaluate, finish) once training steps have taken this many minutes, counted
    # across resumes and without evaluation or checkpoint time; 0 means no time budget.
    max_minutes: float = 0.0
    # Peak learning rate; None means the model's suggested LR for its width.
    lr: float | None = None
    # adamw, lion, adafactor, adamw8bit or muon (Muon on the hidden matrices, AdamW elsewhere).
    optimizer: str = "adamw"
    # Muon's learning rate for the hidden matrices (lr stays the AdamW-side rate).
    muon_lr: float = 0.02
    lr_mults: LayerLRMults = field(default_factory=LayerLRMults)
    # Decay after warmup: cosine, linear, constant, inv_sqrt or wsd (warmup-stable-decay).
    schedule: str = "cosine"
    # The decay ends at lr * min_lr_ratio.
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    # Warmup shape: linear, cosine or exponential.
    warmup_shape: str = "linear"
    # wsd: the fraction of max_steps spent in the final decay.
    decay_fraction: float = 0.2
    # Micro-batches per step ramp from 1 to grad_accum over this many steps (0: no ramp).
    batch_ramp_steps: int = 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    # Max global gradient norm; 0 disables clipping.
    grad_clip: float = 1.0
    # Weight of the z-loss (mean squared log-partition, PaLM uses 1e-4); 0 disables it.
    z_loss: float = 0.0
    # Pretraining objective (danlu.train.objectives): causal, mlm, prefix_lm, fim or span.
    objective: str = "causal"
    # Cross-entropy label smoothing (targets get 1 - eps, the rest eps spread over the vocabulary).
    label_smoothing: float = 0.0
    # mlm: the fraction of tokens predicted. fim: the fraction of documents rearranged, and of those
    # the fraction in SPM order. span: noise density and mean span length.
    mlm_rate: float = 0.15
    fim_rate: float = 0.5
    fim_spm_rate: float = 0.5
    span_noise: float = 0.15
    span_mean: float = 3.0
    # Loss-spike guard: above mean + spike_k sigma the LR is halved for spike_cooldown steps; above
    # mean + spike_k_severe sigma (or a non-finite loss) training rolls back to the last checkpoint
    # and skips the batches that caused it.
    spike_guard: bool = True
    spike_k: float = 6.0
    spike_k_severe: float = 12.0
    spike_cooldown: int = 50
    # Stop after this many evaluations without a new best validation loss; 0 never stops early.
    early_stop_patience: int = 0
    # Recompute activations of every k-th block in backward (1: all blocks); 0 stores them all.
    activation_checkpointing: int = 0
    # Clip each layer group's gradient norm (embed, attn, mlp, norm, head) to this, before the
    # global clip; 0 disables it.
    grad_clip_group: float = 0.0
    # Metrics destinations besides metrics.jsonl: tensorboard, wandb (offline).
    sinks: list[str] = field(default_factory=list)
    eval_every: int = 100
    # Validation batches per evaluation; 0 means the whole validation split.
    eval_batches: int = 0
    ckpt_every: int = 100
    # Step checkpoints kept on disk (the newest ones).
    keep_last: int = 2
    log_every: int = 10
    seed: int = 1337
    # "auto" picks cuda if available, else cpu.
    device: str = "auto"
    # "auto": fp32 on CPU, bf16 autocast on CUDA; or "fp32" / "bf16" / "fp16" (with loss scaling).
    dtype: str = "auto"
    compile: bool = False
    # A model dir (or step checkpoint) whose weights training starts from, instead of a fresh
    # initialisation; its model config must equal this run's. Ignored when resuming.
    init_from: str | None = None

    def __post_init__(self) -> None:
        for key in (
            "seq_len",
            "batch_size",
            "grad_accum",
            "max_steps",
            "eval_every",
            "ckpt_every",
            "log_every",
            "keep_last",
        ):
            check(getattr(self, key) >= 1, f"train.{key}", f"must be >= 1, got {getattr(self, key)}")
        check(self.max_minutes >= 0, "train.max_minutes", f"must be >= 0, got {self.max_minutes}")
        check(self.lr is None or self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        check(
            0.0 <= self.min_lr_ratio <= 1.0,
            "train.min_lr_ratio",
            f"must be in [0, 1], got {self.min_lr_ratio}",
        )
        check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        check(
            self.schedule in SCHEDULES,
            "train.schedule",
            f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}",
        )
        check(
            self.warmup_shape in WARMUP_SHAPES,
            "train.warmup_shape",
            f"must be one of {', '.join(WARMUP_SHAPES)}, got {self.warmup_shape!r}",
        )
        check(
            0 < self.decay_fraction <= 1,
            "train.decay_fraction",
            f"must be in (0, 1], got {self.decay_fraction}",
        )
        check(self.batch_ramp_steps >= 0, "train.batch_ramp_steps", "must be >= 0")
        check(self.z_loss >= 0, "train.z_loss", "must be >= 0")
        check(
            self.objective in OBJECTIVES,
            "train.objective",
            f"must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}",
        )
        check(0 <= self.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
        for key in ("mlm_rate", "fim_rate", "fim_spm_rate", "span_noise"):
            check(
                0 <= getattr(self, key) <= 1, f"train.{key}", f"must be in [0, 1], got {getattr(self, key)}"
            )
        check(self.mlm_rate > 0 and 0 < self.span_noise < 1, "train.mlm_rate", "rates must be > 0")
        check(self.span_mean >= 1, "train.span_mean", "must be >= 1")
        check(0 < self.spike_k < self.spike_k_severe, "train.spike_k", "need 0 < spike_k < spike_k_severe")
        check(self.spike_cooldown >= 0, "train.spike_cooldown", "must be >= 0")
        check(self.early_stop_patience >= 0, "train.early_stop_patience", "must be >= 0")
        check(self.activation_checkpointing >= 0, "train.activation_checkpointing", "must be >= 0")
        check(self.grad_clip_group >= 0, "train.grad_clip_group", "must be >= 0")
        check(
            self.optimizer in OPTIMIZERS,
            "train.optimizer",
            f"must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}",
        )
        check(self.muon_lr > 0, "train.muon_lr", "must be > 0")
        bad = [s for s in self.sinks if s not in ("tensorboard", "wandb")]
        check(not bad, "train.sinks", f"unknown sink {bad[0] if bad else ''!r}; use tensorboard and/or wandb")
        check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1/beta2", "must be in [0, 1)")
        check(self.grad_clip >= 0, "train.grad_clip", "must be >= 0")
        check(self.eval_batches >= 0, "train.eval_batches", "must be >= 0")
        check(
            self.dtype in ("auto", "fp32", "bf16", "fp16"),
            "train.dtype",
            f"must be auto, fp32, bf16 or fp16, got {self.dtype!r}",
        )
        check(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            "train.device",
            f"must be auto, cpu, cuda[:N] or mps, got {self.device!r}",
        )
