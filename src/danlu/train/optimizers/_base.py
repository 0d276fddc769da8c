"""What every danlu optimizer shares: state dtypes that survive a state_dict round trip.

torch's Optimizer.load_state_dict casts every floating or integer state tensor to the parameter's
dtype. That would turn 8-bit codes into fp32 (4x the memory) and round fp32 moments of a bf16
parameter to bf16 (an inexact resume). We reload, then put back each saved tensor as it was saved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch


def run_closure(closure: Callable[[], float] | None) -> float | None:
    """The loss of an optional closure, evaluated with gradients on (torch's step() protocol)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class StatefulOptimizer(torch.optim.Optimizer):
    """An Optimizer whose load_state_dict keeps the saved dtype of every state tensor."""

    def params_with_grad(self, group: dict[str, Any]) -> Iterator[torch.Tensor]:
        """The group's parameters that received a (dense) gradient this step."""
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            yield p

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_state = state_dict["state"]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        by_id = dict(zip(saved_ids, params, strict=True))
        for pid, entries in saved_state.items():
            p = by_id[pid]
            for key, value in entries.items():
                if torch.is_tensor(value):
                    self.state[p][key] = value.to(device=p.device, copy=True)


def check_lr(lr: float | None, name: str = "lr") -> None:
    if lr is not None and not lr >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {lr}")


def check_beta(beta: float, name: str) -> None:
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {beta}")


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors."""
    total = 0
    for entries in optimizer.state.values():
        for value in entries.values():
            if torch.is_tensor(value):
                total += value.numel() * value.element_size()
    return total
