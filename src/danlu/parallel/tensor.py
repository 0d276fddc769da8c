"""Tensor parallelism on DTensor, applied to a plain model from outside (torchtitan's plan):

- attention: `qkv` column-parallel (each rank computes n_head/tp query heads and n_kv_head/tp
  key/value heads), `proj` row-parallel (an all-reduce of the partial outputs)
- MLP: `gate_up` (or `up`) column-parallel, `down` row-parallel
- vocab-parallel embedding (each rank holds vocab/tp rows; the lookups are all-reduced) and a
  vocab-parallel head (each rank computes vocab/tp logits, gathered for the loss)
- norms: replicated DTensors, or with sequence parallelism sharded along the sequence (each rank
  normalizes T/tp positions; the column-parallel layers all-gather them, the row-parallel ones
  reduce-scatter instead of all-reduce); QK-norms sharded along the heads

The model fuses q/k/v and gate/up into one Linear each (rows: all q heads, then k, then v). A plain
column split would give rank 0 the q heads and rank 1 the k/v heads, so the rows are first permuted
into the "TP order": rank 0's q, k, v heads, then rank 1's, and so on; each rank's contiguous shard
is then a small fused layer of its own heads. Checkpoints keep the model's own order: `to_stored` /
`to_tp_order` convert gathered full tensors (weights and their optimizer moments) both ways.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from danlu.errors import ConfigError
from danlu.parallel.apply import blocks_of

log = logging.getLogger(__name__)


def check_tp(model_cfg: Any, tp: int) -> None:
    """The options that tensor parallelism supports, checked before any process group work."""
    n_kv = model_cfg.n_kv_head or model_cfg.n_head
    problems = []
    if model_cfg.n_head % tp or n_kv % tp:
        problems.append(f"n_head={model_cfg.n_head} and n_kv_head={n_kv} must divide by tp={tp}")
    if model_cfg.vocab_size % tp:
        problems.append(f"vocab_size={model_cfg.vocab_size} must divide by tp={tp}")
    hidden = model_cfg.ffn_hidden or _default_hidden(model_cfg.n_embd)
    if hidden % tp:
        problems.append(f"the MLP width {hidden} must divide by tp={tp}")
    if model_cfg.n_experts > 0:
        problems.append("MoE layers are not tensor-parallel (use n_experts=0)")
    if model_cfg.pos not in ("rope", "none"):
        problems.append(f"pos={model_cfg.pos!r} is not tensor-parallel (use rope or none)")
    if problems:
        raise ConfigError(f"parallel.tp={tp}: " + "; ".join(problems))


def _default_hidden(n_embd: int) -> int:
    from danlu.model.transformer import default_ffn_hidden

    return default_ffn_hidden(n_embd)


def _fused_groups(model: nn.Module) -> dict[str, list[int]]:
    """{parameter name: row counts of its fused parts} for the fused Linears (weights and biases)."""
    out: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if name.endswith("attn"):
            hd = m.head_dim
            parts, fused = [m.n_head * hd, m.n_kv_head * hd, m.n_kv_head * hd], "qkv"
        elif name.endswith("mlp") and hasattr(m, "gate_up"):
            half = m.gate_up.out_features // 2
            parts, fused = [half, half], "gate_up"
        else:
            continue
        for pname, _ in getattr(m, fused).named_parameters(prefix=f"{name}.{fused}"):
            out[pname] = parts
    return out


def tp_order(parts: list[int], tp: int) -> torch.Tensor:
    """Row indices that turn the model's order (part after part) into the TP order (rank after rank,
    each rank's slice of every part)."""
    idx, offset = [], 0
    starts = []
    for n in parts:
        starts.append(offset)
        offset += n
    for r in range(tp):
        for start, n in zip(starts, parts, strict=True):
            size = n // tp
            idx.append(torch.arange(start + r * size, start + (r + 1) * size))
    return torch.cat(idx)


class FusedOrder:
    """The row permutations of the fused parameters under one TP degree (see the module docstring)."""

    def __init__(self, model: nn.Module, tp: int):
        self.tp = tp
        self.index = {name: tp_order(parts, tp) for name, parts in _fused_groups(model).items()}
        self.inverse = {name: torch.argsort(i) for name, i in self.index.items()}

    def _apply(self, state: dict[str, Any], perm: dict[str, torch.Tensor]) -> dict[str, Any]:
        out = {}
        for k, v in state.items():
            p = perm.get(k)
            if p is not None and isinstance(v, torch.Tensor) and v.dim() >= 1 and v.size(0) == p.numel():
                v = v.index_select(0, p.to(v.device))
            out[k] = v
        return out

    def to_stored(self, state: dict[str, Any]) -> dict[str, Any]:
        """Full tensors in TP order (a gathered state dict) back in the model's order."""
        return self._apply(state, self.inverse)

    def to_tp_order(self, state: dict[str, Any]) -> dict[str, Any]:
        return self._apply(state, self.index)

    def optimizer_to_stored(self, osd: dict[str, Any]) -> dict[str, Any]:
        return {**osd, "state": {k: self._moments(k, v, self.inverse) for k, v in osd["state"].items()}}

    def optimizer_to_tp_order(self, osd: dict[str, Any]) -> dict[str, Any]:
        return {**osd, "state": {k: self._moments(k, v, self.index) for k, v in osd["state"].items()}}

    def _moments(self, name: str, state: dict[str, Any], perm: dict[str, torch.Tensor]) -> dict[str, Any]:
        """One parameter's optimizer state (step, moments shaped like the parameter) permuted."""
        return {k: self._apply({name: v}, perm)[name] for k, v in state.items()}


class _Replicated:
    """A ParallelStyle for modules whose parameters every TP rank holds whole (norms without sequence
    parallelism): parameters become Replicate DTensors (so every parameter is a DTensor on the TP
    mesh, as clipping and FSDP need), inputs are wrapped and outputs unwrapped."""

    @staticmethod
    def make() -> Any:
        from torch.distributed.tensor import DTensor, Replicate, distribute_module
        from torch.distributed.tensor.parallel import ParallelStyle

        class Replicated(ParallelStyle):
            def _apply(self, module: nn.Module, mesh: Any) -> nn.Module:
                def inputs(_mod: nn.Module, args: tuple, _mesh: Any) -> tuple:
                    return tuple(
                        DTensor.from_local(a, _mesh, [Replicate()], run_check=False)
                        if isinstance(a, torch.Tensor) and not isinstance(a, DTensor)
                        else a
                        for a in args
                    )

                def outputs(_mod: nn.Module, out: Any, _mesh: Any) -> Any:
                    return out.to_local() if isinstance(out, DTensor) else out

                return distribute_module(module, mesh, input_fn=inputs, output_fn=outputs)

        return Replicated()


# the Linears that tensor parallelism splits, by the end of their names
_SPLIT = (".qkv", ".proj", ".gate_up", ".up", ".down")


def check_linears(model: nn.Module) -> None:
    """The layers to split must be plain Linears (not an adapter or a quantized layer around one)."""
    for name, m in model.named_modules():
        if name.endswith(_SPLIT) and not isinstance(m, nn.Linear):
            raise ConfigError(
                f"parallel.tp: {name} is a {type(m).__name__}, not a Linear (adapters and quantized "
                "layers are not tensor-parallel); use tp=1"
            )


def apply_tp(model: nn.Module, tp_mesh: Any, sequence_parallel: bool = False) -> FusedOrder:
    """Tensor-parallelize the model in place over tp_mesh; returns the fused-row permutation that its
    checkpoints need. The model must be materialized (every rank holds the same full weights)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    tp = tp_mesh.size()
    if not all(hasattr(model, k) for k in ("cfg", "embed", "lm_head", "norm")):
        raise ConfigError(f"parallel.tp: {type(model).__name__} is not a danlu Transformer; use tp=1")
    check_tp(model.cfg, tp)
    check_linears(model)
    order = FusedOrder(model, tp)
    with torch.no_grad():  # fused rows into TP order, before the weights are split
        for name, p in model.named_parameters():
            if name in order.index:
                p.copy_(p.index_select(0, order.index[name]))
    tied = model.embed.weight is model.lm_head.weight
    seq = Shard(1)
    if sequence_parallel:
        norm_style: Any = SequenceParallel()
        act = seq  # activations between the blocks' layers are sharded along the sequence
    else:
        norm_style, act = _Replicated.make(), Replicate()
    top = {
        "embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=act),
        "norm": norm_style,
        "lm_head": ColwiseParallel(input_layouts=act, output_layouts=Replicate()),
    }
    if isinstance(model.norm, nn.Identity):
        del top["norm"]
    parallelize_module(model, tp_mesh, top)
    for block in blocks_of(model):
        plan: dict[str, Any] = {
            "attn_norm": norm_style,
            "attn.qkv": ColwiseParallel(input_layouts=act),
            "attn.proj": RowwiseParallel(output_layouts=act),
            "mlp_norm": norm_style,
            "mlp.down": RowwiseParallel(output_layouts=act),
        }
        plan["mlp.gate_up" if hasattr(block.mlp, "gate_up") else "mlp.up"] = ColwiseParallel(
            input_layouts=act
        )
        if block.attn.q_norm is not None:  # per-head norms of each rank's heads: sharded on the head dim
            for norm in ("attn.q_norm", "attn.k_norm"):
                plan[norm] = SequenceParallel(sequence_dim=2, use_local_output=True)
        parallelize_module(block, tp_mesh, plan)
        block.attn.n_head //= tp  # each rank's heads, for the attention's reshapes
        block.attn.n_kv_head //= tp
    if tied:  # both were split along the vocabulary (Shard(0)); tie them again
        model.lm_head.weight = model.embed.weight
    log.info("tensor parallel over %d ranks (sequence parallel: %s)", tp, sequence_parallel)
    return order
