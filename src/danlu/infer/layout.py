"""Weight layouts for decoding on a CPU, for a model that only decodes from now on.

A decode step multiplies a few activation rows (one per running request) by every weight matrix: the
whole model is read from memory once per step, and the matmul's speed is how fast it streams the
weights. torch's default CPU matmul on a row-major [out, in] weight streams it slowly at these shapes.
`decode_layout` changes how the weights are held, not their values:

- an untied Linear becomes a `PackedLinear`: its weight held once, in oneDNN's blocked layout
  (`torch.ops.mkldnn._reorder_linear_weight`, packed for a batch of 8), multiplied by oneDNN's
  linear. Over SmolLM2-135M's block shapes on 2 AMD EPYC cores this took 18.7 ms per step against
  27.9 for `F.linear` at batch 1, 29.1 against 44.9 at 8, 66 against 105 at 32, and the same at a
  512-token prefill (numbers of a probe; benchmarks/generate.py measures whole decodes);
- a weight shared with the embedding (a tied LM head) stays a plain tensor, in transposed storage (the
  `.t()` view of a contiguous [in, out] tensor), which `F.linear` streams about 1.6x faster at batch 1;
  the embedding's gathers read the same values.

A PackedLinear's `weight` is made from the packed one on each access, its state_dict holds the plain
[out, in] weight, and loading a state_dict packs again; writing into `weight` changes nothing. Linears
inside an adapter wrapper (LoRA merges into its base's weight) and those whose weight needs a gradient
are left as they are.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

BATCH_HINT = 8  # oneDNN packs for a batch size; 8 was fastest over batches 1 to 512 in the probe above
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
            return F.linear(x, self.weight, self.bias)
        shape = x.shape
        flat = x if x.dim() == 2 else x.reshape(-1, shape[-1])
        y = _onednn_linear(flat, self.packed, self.bias)
        return y if x.dim() == 2 else y.view(*shape[:-1], self.out_features)

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


def _shared_weights(model: nn.Module) -> set[int]:
    count: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        count[id(p)] = count.get(id(p), 0) + 1
    return {i for i, n in count.items() if n > 1}


def decode_layout(model: nn.Module) -> dict[str, int]:
    """Put model's CPU fp32 Linears in the decode layouts above; how many became `packed` and how many
    tied weights were `transposed`. Idempotent."""
    shared, done = _shared_weights(model), {"packed": 0, "transposed": 0}
    pack = onednn_available()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or getattr(parent, "base", None) is child:
                continue
            w = child.weight
            if w.device.type != "cpu" or w.dtype != torch.float32 or w.requires_grad:
                continue
            if id(w) in shared:
                if w.is_contiguous() and w.shape[0] > 1 and w.shape[1] > 1:
                    w.data = w.data.t().contiguous().t()
                    done["transposed"] += 1
            elif pack:
                setattr(parent, name, PackedLinear(child))
                done["packed"] += 1
    return done
