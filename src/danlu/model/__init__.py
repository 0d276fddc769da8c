"""The transformer, its KV cache, presets and parameter/FLOP counting."""

from danlu.model.presets import PRESETS, from_depth, resolve_model_config, suggested_lr
from danlu.model.transformer import KVCache, Transformer, build_model

__all__ = [
    "PRESETS",
    "KVCache",
    "Transformer",
    "build_model",
    "from_depth",
    "resolve_model_config",
    "suggested_lr",
]
