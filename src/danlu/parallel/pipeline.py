"""Pipeline parallelism with torch.distributed.pipelining: the blocks of a Transformer cut into
stages over the ranks of a pipeline group, trained with a GPipe, 1F1B or interleaved-1F1B schedule
over micro-batches.

Stage 0 holds the embedding, the last stage the final norm and the head. With tied embeddings the
first and the last stage each hold the shared matrix and sum its gradient before the step (as
Megatron's embedding group does), so both copies stay equal. Rank r holds stages r, r + pp, ...
(one per rank for GPipe/1F1B; `virtual` per rank for the interleaved schedule).

`PipelineRunner.step(x, y)` runs one optimizer step's forward and backward: the loss of each
micro-batch is its summed cross-entropy divided by the target tokens of the whole batch, so the
accumulated gradient is that of the batch (as in the Trainer). Clipping takes the norm over all
stages. `danlu pretrain` drives it through the Trainer's forward_backward hook
(danlu.parallel.runtime.Distributed.forward_backward).

Memory: `build_stages` builds the model on the meta device and allocates only this rank's stages
(initialised to the values building the whole model gives them), so between evaluations each rank
holds the parameters, gradients and optimizer state of its own stages only. The whole model is
gathered only when it is needed: `sync_stages()` allocates the other stages and takes their weights
from their owners (before an evaluation, a checkpoint or the model dir), and `release_others()` frees
them again (at the next step). `owned_optimizer_state` / `merge_optimizer_states` assemble the
one-process optimizer state from the stages, so checkpoints keep the single-process format.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.overrides import TorchFunctionMode

from danlu.errors import ConfigError
from danlu.model.config import ModelConfig

log = logging.getLogger(__name__)

SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")
IGNORE_INDEX = -100


class Stage(nn.Module):
    """Blocks [first, last) of a Transformer (named as in the whole model, so its state dict keys are
    a subset of the model's), with the embedding when first == 0 and the norm and head when last is
    the model's depth."""

    def __init__(self, model: nn.Module, first: int, last: int):
        super().__init__()
        cfg = model.cfg
        self.embed = model.embed if first == 0 else None
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in range(first, last)})
        end = last == cfg.n_layer
        self.norm = model.norm if end else None
        self.lm_head = model.lm_head if end else None
        self.softcap = cfg.logit_softcap
        if cfg.pos == "rope":
            self.register_buffer("rope_cos", model.rope_cos, persistent=False)
            self.register_buffer("rope_sin", model.rope_sin, persistent=False)
        self.rope = cfg.pos == "rope"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            x = self.embed(x)
        T = x.size(1)
        rope = (self.rope_cos[:T].to(x.dtype), self.rope_sin[:T].to(x.dtype)) if self.rope else None
        for i, block in self.blocks.items():
            x, _ = block(x, int(i), rope, (None, T > 1), None)
        if self.lm_head is None:
            return x
        logits = self.lm_head(self.norm(x)).float()
        return self.softcap * torch.tanh(logits / self.softcap) if self.softcap > 0 else logits


def check_pp(model_cfg: Any, pp: int, virtual: int) -> None:
    problems = []
    if model_cfg.n_layer % (pp * virtual):
        problems.append(f"n_layer={model_cfg.n_layer} must divide into {pp * virtual} stages")
    if model_cfg.n_experts > 0:
        problems.append("MoE layers are not pipelined (use n_experts=0)")
    if model_cfg.n_unique_layers:
        problems.append("cross-layer sharing (n_unique_layers) is not pipelined")
    if model_cfg.pos not in ("rope", "none") or model_cfg.sliding_window:
        problems.append("only rope/none positions with plain causal attention are pipelined")
    if problems:
        raise ConfigError(f"parallel.pp={pp}: " + "; ".join(problems))


def stage_bounds(n_layer: int, n_stages: int, stage: int) -> tuple[int, int]:
    per = n_layer // n_stages
    return stage * per, (stage + 1) * per


def stage_ids(pp: int, rank: int, virtual: int) -> list[int]:
    """The stages pipeline rank `rank` trains: rank, rank + pp, ... (`virtual` of them)."""
    return [rank + pp * v for v in range(virtual)]


_INIT = torch.nn.init
# the in-place random fills an initialisation may call (the nn.init ones reach the mode first)
_RANDOM_FILLS = {
    _INIT.normal_, _INIT.uniform_, _INIT.trunc_normal_, _INIT.xavier_normal_, _INIT.xavier_uniform_,
    _INIT.kaiming_normal_, _INIT.kaiming_uniform_, _INIT.orthogonal_, _INIT.sparse_,
    torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.bernoulli_, torch.Tensor.random_,
    torch.Tensor.exponential_, torch.Tensor.log_normal_, torch.Tensor.cauchy_, torch.Tensor.geometric_,
}  # fmt: skip


class _DrawForMeta(TorchFunctionMode):
    """A random fill of a meta tensor draws the same numbers into a scratch tensor on `device` and
    drops them: the random stream advances as if the whole model were allocated, so the tensors
    that are allocated get exactly the values a whole-model initialisation gives them."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        t = args[0] if args else kwargs.get("tensor")
        if func not in _RANDOM_FILLS or not isinstance(t, torch.Tensor) or not t.is_meta:
            return func(*args, **kwargs)
        scratch = torch.empty(t.shape, dtype=t.dtype, device=self.device)
        func(scratch, *args[1:], **kwargs) if args else func(**{**kwargs, "tensor": scratch})
        return t


@torch.no_grad()
def build_stages(cfg: ModelConfig, pp: int, rank: int, virtual: int, device: torch.device) -> nn.Module:
    """The model with only pipeline rank `rank`'s stages in memory (see the module docstring): built
    on meta; those stages' parameters and every buffer allocated on `device`; initialised under the
    same seed as a whole model, so they hold the same values; the other parameters stay on meta."""
    from danlu.model.transformer import build_meta

    check_pp(cfg, pp, virtual)
    model = build_meta(cfg)
    n_stages = pp * virtual
    stages = [Stage(model, *stage_bounds(cfg.n_layer, n_stages, s)) for s in stage_ids(pp, rank, virtual)]
    owned = {id(p) for stage in stages for p in stage.parameters()}
    real: dict[int, nn.Parameter] = {}  # a tied matrix is one parameter at two names
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in owned:
                if id(p) not in real:
                    real[id(p)] = nn.Parameter(torch.empty_like(p, device=device), p.requires_grad)
                setattr(module, name, real[id(p)])
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = torch.empty_like(b, device=device)
    with _DrawForMeta(torch.device(device)):
        model.init_weights()
    return model


class PipelineRunner:
    """This rank's stages of `model` and the schedule that trains them (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        group: Any,
        n_microbatches: int,
        schedule: str = "1f1b",
        virtual: int = 1,
        device: torch.device | str = "cpu",
        dp_group: Any = None,
        loss_of_logits: Any = None,
    ):
        from torch.distributed.pipelining import (
            PipelineStage,
            Schedule1F1B,
            ScheduleGPipe,
            ScheduleInterleaved1F1B,
        )

        if schedule not in SCHEDULES:
            raise ConfigError(f"parallel.pp_schedule: one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if schedule != "interleaved_1f1b" and virtual != 1:
            raise ConfigError(f"parallel.pp_schedule={schedule} runs one stage per rank (virtual=1)")
        self.group, self.dp_group = group, dp_group
        # (logits, targets) -> the summed loss over the targets (plain cross-entropy by default)
        self.loss_of_logits = loss_of_logits or _summed_cross_entropy
        self.pp, self.rank = dist.get_world_size(group), dist.get_rank(group)
        check_pp(model.cfg, self.pp, virtual)
        if n_microbatches < self.pp:
            raise ConfigError(f"pipeline: {n_microbatches} micro-batches cannot fill {self.pp} stages")
        n_stages = self.pp * virtual
        ids = stage_ids(self.pp, self.rank, virtual)
        self.modules = [Stage(model, *stage_bounds(model.cfg.n_layer, n_stages, s)) for s in ids]
        # every stage of the model and the pipeline rank that trains it (for sync_stages)
        self._all = [
            (s % self.pp, Stage(model, *stage_bounds(model.cfg.n_layer, n_stages, s)))
            for s in range(n_stages)
        ]
        # the other stages' parameters when build_stages left them on meta: (module, name, meta
        # parameter), and their allocated copies while the whole model is gathered
        self._others = [
            (m, name, p)
            for m in model.modules()
            for name, p in m._parameters.items()
            if p is not None and p.is_meta
        ]
        self._gathered = False
        self.n_microbatches = n_microbatches
        device = self.device = torch.device(device)
        stages = [
            PipelineStage(m, s, n_stages, device, group=group) for m, s in zip(self.modules, ids, strict=True)
        ]
        self.first, self.last = 0 in ids, n_stages - 1 in ids
        self._tokens = 1  # the target tokens of the current step (set by step)
        kind = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}.get(schedule)
        loss = self._loss
        if kind is None:
            self.schedule = ScheduleInterleaved1F1B(stages, n_microbatches, loss_fn=loss, scale_grads=False)
        else:
            self.schedule = kind(stages[0], n_microbatches, loss_fn=loss, scale_grads=False)
        # the tied embedding/head matrix lives on the first and the last stage's ranks
        self.tied = model.embed.weight if model.embed.weight is model.lm_head.weight else None
        self._tied_group = group if self.pp == 2 or self.tied is None else _pair_group(group, self.pp)
        log.info(
            "pipeline: %d stages over %d ranks (%s, %d micro-batches), this rank: stages %s",
            n_stages, self.pp, schedule, n_microbatches, ids,
        )  # fmt: skip

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_of_logits(logits, y) / self._tokens

    def parameters(self) -> list[nn.Parameter]:
        """This rank's distinct parameters (the tied matrix once)."""
        seen: dict[int, nn.Parameter] = {}
        for m in self.modules:
            for p in m.parameters():
                seen.setdefault(id(p), p)
        return list(seen.values())

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Forward and backward of one batch through the pipeline; the batch's mean loss per target
        token, on every rank. The ranks of a pipeline pass the same batch (only the ends read it);
        with a dp_group, each pipeline replica passes its own rows of the global batch and the
        gradients are summed over the replicas (the losses are divided by the global token count)."""
        tokens = torch.tensor(int((y != IGNORE_INDEX).sum()), dtype=torch.int64)
        if self.dp_group is not None:
            dist.all_reduce(tokens, group=self.dp_group)
        total = self.forward_backward(x, y, int(tokens))
        if self.dp_group is not None:
            dist.all_reduce(total, group=self.dp_group)
        return float(total)

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, tokens: int) -> torch.Tensor:
        """step() for a caller that knows the target tokens of the global batch: this replica's
        summed loss divided by `tokens` (on every rank of the pipeline), the gradients summed over
        the replicas and the tied matrix's over its two stages."""
        if x.size(0) % self.n_microbatches:
            raise ConfigError(
                f"parallel.pp_microbatches={self.n_microbatches} must divide the {x.size(0)} rows a "
                "pipeline replica trains per step (train.batch_size / data-parallel ranks x grad_accum)"
            )
        self._tokens = max(tokens, 1)
        losses: list[torch.Tensor] = []
        kwargs: dict[str, Any] = {"target": y, "losses": losses} if self.last else {}
        args = (x,) if self.first else ()
        self.schedule.step(*args, **kwargs)
        device = x.device
        total = torch.stack(losses).sum().detach() if losses else torch.zeros((), device=device)
        dist.all_reduce(total, group=self.group)  # only the last stage's ranks contribute
        if self.dp_group is not None:
            for p in self.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad, group=self.dp_group)
        if self.tied is not None and self.tied.grad is not None and self._in_tied_group:
            dist.all_reduce(self.tied.grad, group=self._tied_group)
        return total

    def _swap_others(self, allocate: bool) -> None:
        copies: dict[int, nn.Parameter] = {}  # a tied matrix is one parameter at two names
        for module, name, meta in self._others:
            if allocate and id(meta) not in copies:
                copies[id(meta)] = nn.Parameter(torch.empty_like(meta, device=self.device), False)
            setattr(module, name, copies[id(meta)] if allocate else meta)
        self._gathered = allocate

    def release_others(self) -> None:
        """Free the other stages' parameters gathered by sync_stages (back on meta); a no-op when
        this rank holds the whole model."""
        if self._gathered:
            self._swap_others(allocate=False)

    @torch.no_grad()
    def sync_stages(self) -> None:
        """Every rank's copy of the whole model takes each stage's weights from the rank that trains
        it, allocating the stages it does not train (every rank of the pipeline calls it)."""
        if self._others and not self._gathered:
            self._swap_others(allocate=True)
        for owner, stage in self._all:
            src = dist.get_global_rank(self.group, owner)
            for p in stage.parameters():
                dist.broadcast(p.data, src=src, group=self.group)

    def owned_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[int, Any]:
        """The positional-id optimizer state of this rank's own parameters (the tied matrix is owned
        by the first stage)."""
        mine = {id(p) for p in self.parameters() if not (p is self.tied and not self.first)}
        ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
        state = optimizer.state_dict()["state"]
        return {i: v for i, v in state.items() if ids[i] in mine}

    def merge_optimizer_states(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The whole model's optimizer state in torch's positional form, assembled from every stage
        (all ranks of the pipeline call it; every rank gets the result)."""
        parts: list[Any] = [None] * self.pp
        dist.all_gather_object(parts, self.owned_optimizer_state(optimizer), group=self.group)
        merged: dict[int, Any] = {}
        for part in parts:
            merged.update(part)
        groups = optimizer.state_dict()["param_groups"]
        return {"state": dict(sorted(merged.items())), "param_groups": groups}

    @property
    def _in_tied_group(self) -> bool:
        return self.pp == 2 or self.first or self.last

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> float:
        """Scale every stage's gradients by max_norm / (global norm + 1e-6) when that is below 1
        (torch's clip_grad_norm_ over the whole model); return the global norm."""
        params = [p for p in self.parameters() if p.grad is not None]
        if self.tied is not None and not self.first:  # the tied matrix counts once, on stage 0
            params = [p for p in params if p is not self.tied]
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        sq = sum((p.grad.double().square().sum() for p in params), zero)
        dist.all_reduce(sq, group=self.group)
        norm = math.sqrt(float(sq))
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for p in self.parameters():
                if p.grad is not None:
                    p.grad.mul_(coef)
        return norm


def _summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    flat = logits.reshape(-1, logits.size(-1))
    return nn.functional.cross_entropy(flat, y.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")


def _pair_group(group: Any, pp: int) -> Any:
    """The process group of the first and the last pipeline rank (every rank must create it)."""
    ranks = dist.get_process_group_ranks(group)
    return dist.new_group([ranks[0], ranks[pp - 1]])
