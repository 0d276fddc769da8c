"""Memory savers applied to a plain model from outside: the model file knows nothing of them."""

from __future__ import annotations

from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper


def _recompute_in_backward(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Checkpoint a block's forward while training; run it as is without gradients or with a KV
    cache (evaluation and generation store nothing for backward anyway)."""
    cache = args[4] if len(args) > 4 else kwargs.get("cache")
    if cache is None and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, **kwargs)
    return fn(*args, **kwargs)


def _blocks(model: nn.Module) -> nn.ModuleList:
    for m in model.modules():  # the model itself, or the transformer inside a wrapper
        blocks = getattr(m, "blocks", None)
        if isinstance(blocks, nn.ModuleList):
            return blocks
    raise ValueError(f"{type(model).__name__} has no `blocks` to checkpoint")


def apply_activation_checkpointing(model: nn.Module, every: int = 1) -> int:
    """Recompute the activations of every `every`-th block in backward instead of storing them
    (every=1: all blocks), by wrapping those blocks in place. Returns how many blocks are wrapped;
    gradients are unchanged, and so are the state-dict keys (the wrapper strips its own prefix)."""
    if every < 1:
        return 0
    blocks = _blocks(model)
    n = 0
    for i in range(0, len(blocks), every):
        blocks[i] = checkpoint_wrapper(blocks[i], checkpoint_fn=_recompute_in_backward)
        n += 1
    return n
