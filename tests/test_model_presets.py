"""Presets, the depth dial, precedence, vocab filling, validation and the suggested LR."""

from __future__ import annotations

import dataclasses

import pytest

from danlu.errors import ConfigError
from danlu.model.config import ModelConfig
from danlu.model.presets import PRESETS, from_depth, resolve_model_config, suggested_lr


def _shape(cfg: ModelConfig) -> tuple:
    return cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.ffn_hidden


def test_named_presets():
    assert _shape(resolve_model_config(ModelConfig(preset="tiny"), 4096)) == (4, 256, 4, 4, 688)
    assert _shape(resolve_model_config(ModelConfig(preset="small"), 4096)) == (8, 512, 8, 8, 1376)
    d12 = resolve_model_config(ModelConfig(preset="d12"), 4096)
    assert _shape(d12) == (12, 768, 12, 12, 2048) and d12.max_seq_len == 1024
    smol = resolve_model_config(ModelConfig(preset="smollm2-135m"), 49152)
    assert _shape(smol) == (30, 576, 9, 3, 1536)
    assert (smol.rope_theta, smol.vocab_size, smol.tie_embeddings) == (1e5, 49152, True)
    for name in PRESETS:  # every preset resolves to a valid shape
        vocab = PRESETS[name].get("vocab_size", 1000)
        assert resolve_model_config(ModelConfig(preset=name), vocab).preset == name


def test_depth_rule():
    assert from_depth(4) == {"n_layer": 4, "n_embd": 256, "n_head": 4, "n_kv_head": None, "ffn_hidden": None}
    assert _shape(resolve_model_config(ModelConfig(depth=12), 100)) == (12, 768, 12, 12, 2048)
    assert _shape(resolve_model_config(ModelConfig(depth=20), 100)) == (20, 1280, 10, 10, 3424)
    assert _shape(resolve_model_config(ModelConfig(depth=1), 100))[:3] == (1, 64, 1)


def test_precedence_preset_then_depth_then_explicit():
    # depth beats the preset's shape (and its GQA setting), explicit fields beat both
    cfg = resolve_model_config(ModelConfig(preset="smollm2-135m", depth=6), 49152)
    assert _shape(cfg) == (6, 384, 6, 6, 1024) and cfg.rope_theta == 1e5
    cfg = resolve_model_config(ModelConfig(preset="small", depth=6, n_head=3, max_seq_len=64), 100)
    assert _shape(cfg) == (6, 384, 3, 3, 1024) and cfg.max_seq_len == 64
    cfg = resolve_model_config(ModelConfig(preset="tiny", n_kv_head=2, ffn_hidden=500), 100)
    assert _shape(cfg) == (4, 256, 4, 2, 500)
    # explicit fields alone (no preset, no depth)
    cfg = resolve_model_config(ModelConfig(n_layer=3, n_embd=96, n_head=3), 100)
    assert _shape(cfg) == (3, 96, 3, 3, 256)


def test_resolving_is_idempotent():
    for cfg in (
        ModelConfig(preset="smollm2-135m"),
        ModelConfig(preset="tiny", depth=3, n_kv_head=1),
        ModelConfig(depth=5, tie_embeddings=False),
    ):
        vocab = 49152 if cfg.preset == "smollm2-135m" else 300
        once = resolve_model_config(cfg, vocab)
        assert resolve_model_config(once, vocab) == once


def test_vocab_is_filled_or_checked():
    assert resolve_model_config(ModelConfig(), 4096).vocab_size == 4096
    assert resolve_model_config(ModelConfig(vocab_size=512), 512).vocab_size == 512
    with pytest.raises(ConfigError, match=r"model.vocab_size=512 but the tokenizer has 4096"):
        resolve_model_config(ModelConfig(vocab_size=512), 4096)
    with pytest.raises(ConfigError, match="49152"):
        resolve_model_config(ModelConfig(preset="smollm2-135m"), 4096)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"preset": "huge"}, "unknown preset 'huge'; choose one of tiny, small"),
        ({"n_embd": 100, "n_head": 3}, "not divisible by model.n_head=3"),
        ({"n_head": 4, "n_kv_head": 3}, "not divisible by model.n_kv_head=3"),
        ({"n_embd": 36, "n_head": 4}, "head size n_embd / n_head = 9 is odd"),
        ({"rope_theta": 0.0}, "rope_theta"),
    ],
)
def test_invalid_shapes_are_named(fields, message):
    with pytest.raises(ConfigError, match=message):
        resolve_model_config(ModelConfig(**fields), 100)


def test_suggested_lr_scales_with_inverse_sqrt_width():
    base = resolve_model_config(ModelConfig(), 100)
    assert suggested_lr(base) == pytest.approx(1e-3)
    wide = dataclasses.replace(base, n_embd=1024, n_head=16)
    assert suggested_lr(wide) == pytest.approx(1e-3 / 2)
