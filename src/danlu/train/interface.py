"""What a stage hands the Trainer (danlu.train.trainer): its batches, loss function and hooks, the run's
identity for checkpoints and, in a distributed run, the Parallel object. The Trainer imports these;
stages may import them from here or from danlu.train.trainer."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from danlu.model.config import ModelConfig
from danlu.train.losses import IGNORE_INDEX


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Batches(Stateful, Iterable[Any], Protocol):
    """An endless, resumable stream of micro-batches (its state_dict is its position)."""


class Parallel(Protocol):
    """A distributed run as the trainer sees it (danlu.parallel.runtime.Distributed): the batches are
    this rank's rows of each global batch; counts and losses are summed over the data-parallel ranks."""

    is_main: bool
    grad_scale: float  # the loss factor that turns the ranks' averaged gradients into the batch's
    # the model is cut into pipeline stages: forward_backward runs each step, and every rank's copy
    # of the model is current only after sync_model
    pipelined: bool

    def shard(self, model: nn.Module) -> nn.Module: ...
    def wrap_forward(self, model: nn.Module) -> nn.Module: ...
    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer: ...
    def accumulating(self, forward: nn.Module, last: bool) -> contextlib.AbstractContextManager: ...
    def sum(self, t: torch.Tensor) -> torch.Tensor: ...
    def count(self, n: int) -> int: ...
    def gather(self, values: list[float]) -> list[list[float]]: ...  # every rank's values, by rank
    def barrier(self) -> None: ...
    def forward_backward(
        self, micro_batches: list[Any], n_tokens: int, loss_scale: float
    ) -> torch.Tensor: ...
    def clip_grad_norm_(self, params: list[nn.Parameter], max_norm: float) -> float: ...
    def sync_model(self, model: nn.Module) -> None: ...
    def save_checkpoint(self, out_dir: Path, step: int, model: nn.Module, *args: Any) -> Path: ...
    def load_checkpoint(self, path: Path, model: nn.Module, *args: Any) -> dict[str, Any]: ...


@dataclass
class LossOutput:
    """What a loss function returns for one micro-batch."""

    loss_sum: torch.Tensor  # the loss summed over the micro-batch's target tokens (reported and trained)
    n_tokens: int  # its target tokens
    aux: torch.Tensor | None = None  # a mean-valued extra loss trained beside it (MoE router loss)
    metrics: dict[str, Any] = field(default_factory=dict)  # logged on logging steps (last micro-batch)


# loss_fn(model, batch on the device) -> LossOutput; it runs under the trainer's autocast
LossFn = Callable[[nn.Module, Any], LossOutput]


def batch_sizes(batch: Any) -> tuple[int, int]:
    """(input tokens, target tokens) of a micro-batch (inputs, targets, ...), targets IGNORE_INDEX-masked."""
    return batch[0].numel(), int((batch[1] != IGNORE_INDEX).sum())


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


@dataclass
class Hooks:
    """What a stage may change about training; every hook is optional."""

    # applied to the model before the optimizer is built and before a resume; may return a new module
    transform: Callable[[nn.Module], nn.Module | None] | None = None
    # which parameters train (name, parameter) -> bool; the others get requires_grad=False
    trainable: Callable[[str, nn.Parameter], bool] | None = None
    # (batch, step, micro-batch index) -> batch, e.g. a pretraining objective's masking
    prepare: Callable[[Any, int, int], Any] | None = None
    # (input tokens, target tokens) of a prepared micro-batch
    sizes: Callable[[Any], tuple[int, int]] = batch_sizes
    # model -> {"val_loss": ..., ...}: evaluation every eval_every steps, run in eval mode and under
    # no randomness (or exact resume breaks)
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    # model -> metrics added to the record of a logging step (e.g. MoE expert loads)
    step_metrics: Callable[[nn.Module], dict[str, Any]] | None = None
    # objects saved in and restored from every checkpoint (a value head's running stats, a reference id);
    # their state_dict() must be plain JSON (it goes into trainer_state.json)
    extra_state: dict[str, Stateful] = field(default_factory=dict)
    # a model dir whose weights the model starts from (before transform), unless resuming
    init_from: str | Path | None = None


@dataclass
class RunInfo:
    """What a checkpoint records about the run, and what a resume must match."""

    out_dir: Path
    model_cfg: ModelConfig
    tokenizer_dir: Path
    fingerprint: str
    run_config: Any  # the stage's config (a dataclass or dict), saved under "recipe"
    name: str = "train"  # progress bar and log label
