"""Device and precision: which device a run uses, which dtype it computes in, and the autocast for it."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from danlu.errors import ConfigError


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
