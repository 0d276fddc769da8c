"""The weight layout for decoding on a CPU, for a model that only decodes from now on.

A decode step multiplies a few activation rows (one per running request) by every weight matrix: the
whole model is read from memory once per step, and the matmul's speed is how fast it streams the
weights. torch's default CPU matmul on a row-major [out, in] weight streams it slowly at these shapes.
`decode_layout` makes every fp32 Linear a `PackedLinear`: its weight held in oneDNN's blocked layout
(`torch.ops.mkldnn._reorder_linear_weight`, packed for a batch of 8) and multiplied by oneDNN's linear.
`benchmarks/decode_layout.py` times both on SmolLM2-135M's shapes (BENCHMARKS.md): on 2 AMD EPYC
cores (AVX2), 2 threads, the packed block Linears are 1.5x / 1.6x / 1.3x faster at batch 1 / 8 / 32
and 0.9x at a 512-row prefill; the packed LM head 2.1x / 2.8x / 1.8x at batch 1 / 8 / 32.

A PackedLinear holds its weight once (`weight` is made from the packed one on each access, its
state_dict holds the plain [out, in] weight, and loading a state_dict packs again; writing into `weight`
changes nothing), except a head tied to the embedding: the embedding's gathers still read the plain
table, so the head's packed copy is memory beside it (vocab x dim x 4 bytes, 113 MB for SmolLM2).
Linears inside an adapter wrapper (LoRA merges into its base's weight) and those whose weight needs a
gradient are left as they are.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

BATCH_HINT = 8  # oneDNN packs for a batch size; hints 8 to 64 timed alike at batches 1 to 32, 1 slower
_onednn: bool | None = None


def onednn_available() -> bool:
    """Whether torch here packs and multiplies oneDNN linear weights (found once, by a tiny product)."""
    global _onednn
    if _onednn is None:
        try:
            w, x = torch.randn(16, 8), torch.randn(3, 8)
            y = _onednn_linear(x, torch.ops.mkldnn._reorder_linear_weight(w, BATCH_HINT), None)
            _onednn = bool(torch.allclose(y, x @ w.T, atol=1e-5))
        except (AttributeError, RuntimeError):
            _onednn = False
    return _onednn


def _onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinear(nn.Module):
    """A frozen fp32 Linear on the CPU whose weight is held once, packed for oneDNN's linear."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), BATCH_HINT)
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        """The plain [out, in] weight (a new tensor on each access)."""
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.dtype != torch.float32
            or x.device.type != "cpu"
            or (torch.is_grad_enabled() and x.requires_grad)
        ):
            bias = self.bias.to(x.device, x.dtype) if self.bias is not None else None
            return F.linear(x, self.weight.to(x.device, x.dtype), bias)
        shape = x.shape
        flat = x if x.dim() == 2 else x.reshape(-1, shape[-1])
        y = _onednn_linear(flat, self.packed, self.bias)
        return y if x.dim() == 2 else y.view(*shape[:-1], self.out_features)

    def __deepcopy__(self, memo: dict[int, Any]) -> PackedLinear:
        # oneDNN's packed tensor has no storage to copy: pack the plain weight again
        new = PackedLinear.__new__(PackedLinear)
        nn.Module.__init__(new)
        new.in_features, new.out_features = self.in_features, self.out_features
        new.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, BATCH_HINT)
        new.bias = copy.deepcopy(self.bias, memo)
        new.train(self.training)
        return new

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.weight
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        weight = state_dict.pop(prefix + "weight", None)
        if weight is not None:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.float().contiguous(), BATCH_HINT)
        super()._load_from_state_dict(state_dict, prefix, *args)
        if weight is not None:
            state_dict[prefix + "weight"] = weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=onednn"


def decode_layout(model: nn.Module) -> int:
    """Make model's CPU fp32 Linears PackedLinears (as above); how many. Idempotent."""
    if not onednn_available():
        return 0
    done = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or getattr(parent, "base", None) is child:
                continue
            w = child.weight
            if w.device.type == "cpu" and w.dtype == torch.float32 and not w.requires_grad:
                setattr(parent, name, PackedLinear(child))
                done += 1
    return done
