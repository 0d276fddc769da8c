"""Named model shapes, the `depth` dial, and turning a `ModelConfig` into a concrete one.

Precedence, lowest to highest: the dataclass defaults < `preset` < `depth` < fields set explicitly.
A field counts as "set explicitly" when its value differs from the `ModelConfig` default, so a field
set to exactly its default value cannot undo a preset (set `preset: null` and spell the shape out).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from danlu.errors import ConfigError
from danlu.model.config import ModelConfig
from danlu.model.transformer import default_ffn_hidden

_GPT2: dict[str, Any] = {
    "norm": "layernorm",
    "mlp": "gelu",
    "pos": "learned",
    "bias": True,
    "vocab_size": 50257,
    "max_seq_len": 1024,
    "tie_embeddings": True,
}
_LLAMA2: dict[str, Any] = {"vocab_size": 32000, "max_seq_len": 4096, "tie_embeddings": False}

PRESETS: dict[str, dict[str, Any]] = {
    # CPU-sized shapes for the default recipe and tests
    "tiny": {"n_layer": 4, "n_embd": 256, "n_head": 4},
    "small": {"n_layer": 8, "n_embd": 512, "n_head": 8},
    # GPT-2 124M's shape as a Llama (about 85M non-embedding parameters)
    "d12": {"n_layer": 12, "n_embd": 768, "n_head": 12, "max_seq_len": 1024},
    # nanochat's speedrun shape (about 560M parameters with a 65k vocabulary)
    "d20": {"n_layer": 20, "n_embd": 1280, "n_head": 10, "max_seq_len": 2048},
    # OpenAI GPT-2: LayerNorm, GELU, learned positions, biases, tied 50257-token vocabulary
    "gpt2-124m": {**_GPT2, "n_layer": 12, "n_embd": 768, "n_head": 12, "ffn_hidden": 3072},
    "gpt2-355m": {**_GPT2, "n_layer": 24, "n_embd": 1024, "n_head": 16, "ffn_hidden": 4096},
    # Llama shapes: meta-llama/Llama-3.2-1B, Llama-2-7b and Llama-2-70b
    "llama-1b": {
        "n_layer": 16,
        "n_embd": 2048,
        "n_head": 32,
        "n_kv_head": 8,
        "ffn_hidden": 8192,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "max_seq_len": 8192,
        "tie_embeddings": True,
    },
    "llama-7b": {**_LLAMA2, "n_layer": 32, "n_embd": 4096, "n_head": 32, "ffn_hidden": 11008},
    "llama-70b": {
        **_LLAMA2,
        "n_layer": 80,
        "n_embd": 8192,
        "n_head": 64,
        "n_kv_head": 8,
        "ffn_hidden": 28672,
    },
    # HuggingFaceTB/SmolLM2-135M: its vocabulary is part of the shape, so its weights can be loaded
    "smollm2-135m": {
        "n_layer": 30,
        "n_embd": 576,
        "n_head": 9,
        "n_kv_head": 3,
        "ffn_hidden": 1536,
        "rope_theta": 100000.0,
        "vocab_size": 49152,
        "max_seq_len": 8192,
        "tie_embeddings": True,
    },
}

# the fields that `depth` sets; presets and explicit settings may name any ModelConfig field
_DEPTH_FIELDS = ("n_layer", "n_embd", "n_head", "n_kv_head", "ffn_hidden")


def from_depth(depth: int) -> dict[str, Any]:
    """Shape from one dial (nanochat's rule): n_layer = depth, n_embd = 64 * depth.

    Heads are 64 wide below n_embd 1024 (small models keep enough heads) and 128 wide from there on
    (fewer, larger heads use accelerators better), so depth 12 gives GPT-2's 12 x 64 heads and depth
    20 gives nanochat's 10 x 128. Attention is multi-head and the MLP width follows the 8/3 rule.
    """
    if depth < 1:
        raise ConfigError(f"model.depth: must be >= 1, got {depth}")
    n_embd = 64 * depth
    head_dim = 64 if n_embd < 1024 else 128
    return {
        "n_layer": depth,
        "n_embd": n_embd,
        "n_head": max(1, n_embd // head_dim),
        "n_kv_head": None,
        "ffn_hidden": None,
    }


def resolve_model_config(cfg: ModelConfig, vocab_size: int) -> ModelConfig:
    """A concrete config: preset, then depth, then explicit fields; vocab, kv heads and MLP width filled."""
    defaults = ModelConfig()
    values: dict[str, Any] = {}
    if cfg.preset is not None:
        if cfg.preset not in PRESETS:
            raise ConfigError(
                f"model.preset: unknown preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}"
            )
        values.update(PRESETS[cfg.preset])
    if cfg.depth is not None:
        values.update(from_depth(cfg.depth))
    for f in dataclasses.fields(ModelConfig):
        if f.name in ("preset", "depth"):
            continue
        value = getattr(cfg, f.name)
        if value != getattr(defaults, f.name) or f.name not in values:
            values[f.name] = value
    values["n_kv_head"] = values["n_kv_head"] or values["n_head"]
    values["ffn_hidden"] = values["ffn_hidden"] or default_ffn_hidden(values["n_embd"])
    if values["vocab_size"] == 0:
        values["vocab_size"] = vocab_size
    elif values["vocab_size"] != vocab_size:
        raise ConfigError(
            f"model.vocab_size={values['vocab_size']} but the tokenizer has {vocab_size} tokens; "
            "set model.vocab_size to 0 (take it from the tokenizer) or train a tokenizer of that size"
        )
    out = ModelConfig(preset=cfg.preset, depth=cfg.depth, **values)
    validate(out)
    return out


def validate(cfg: ModelConfig) -> None:
    """Check the shape constraints the model relies on, naming the fields to change."""
    n_kv = cfg.n_kv_head or cfg.n_head
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(
            f"model.n_embd={cfg.n_embd} is not divisible by model.n_head={cfg.n_head}; "
            "pick a head count that divides the width"
        )
    if cfg.n_head % n_kv:
        raise ConfigError(
            f"model.n_head={cfg.n_head} is not divisible by model.n_kv_head={n_kv}; "
            "each key/value head must serve the same number of query heads"
        )
    if cfg.pos == "rope" and (cfg.n_embd // cfg.n_head) % 2:
        raise ConfigError(
            f"head size n_embd / n_head = {cfg.n_embd // cfg.n_head} is odd; rotary embeddings need an "
            "even head size, so change model.n_embd or model.n_head"
        )
    if cfg.vocab_size < 1:
        raise ConfigError("model.vocab_size must be >= 1 after resolving; pass the tokenizer's vocab size")
    if cfg.rope_theta <= 0 or cfg.norm_eps <= 0 or cfg.init_std <= 0:
        raise ConfigError("model.rope_theta, model.norm_eps and model.init_std must be > 0")


def suggested_lr(cfg: ModelConfig) -> float:
    """AdamW peak LR for a width: 1e-3 at n_embd 256, scaled by (256 / n_embd) ** 0.5.

    The 1/sqrt(width) scaling is nanochat's rule for its AdamW parameters (lr * (d / 768) ** -0.5);
    1e-3 at width 256 is a known-good LR for models of a few million parameters.
    """
    return 1e-3 * math.sqrt(256 / cfg.n_embd)
