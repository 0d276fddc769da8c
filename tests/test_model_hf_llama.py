"""danlu <-> transformers.LlamaForCausalLM: same logits and gradients from mapped weights."""

from __future__ import annotations

import pytest
import torch

from danlu.errors import CheckpointError
from danlu.interop.hf_llama import from_hf_config, from_hf_state_dict, to_hf_config, to_hf_state_dict
from danlu.model import build_model, resolve_model_config
from danlu.model.config import ModelConfig

transformers = pytest.importorskip("transformers")

CASES = [(None, True), (None, False), (2, True), (1, False)]  # (n_kv_head, tie): MHA, GQA, MQA


def _pair(kv: int | None, tie: bool):
    cfg = resolve_model_config(
        ModelConfig(
            n_layer=2,
            n_embd=64,
            n_head=4,
            n_kv_head=kv,
            tie_embeddings=tie,
            max_seq_len=48,
            rope_theta=500.0,
            norm_eps=1e-6,
        ),
        101,
    )
    ours = build_model(cfg, "cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights far from init, so a wrong mapping cannot hide
        for name, p in ours.named_parameters():
            p.copy_(
                (1 + 0.3 * torch.randn(p.shape, generator=g))
                if "norm" in name
                else 0.15 * torch.randn(p.shape, generator=g)
            )
    hf_cfg = transformers.LlamaConfig(**to_hf_config(cfg), attn_implementation="sdpa")
    hf = transformers.LlamaForCausalLM(hf_cfg)
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(ours), strict=False)
    assert unexpected == [] and missing == ([] if not tie else ["lm_head.weight"])
    if tie:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    return cfg, ours, hf


@pytest.mark.parametrize(("kv", "tie"), CASES)
def test_logits_match_transformers(kv, tie):
    _, ours, hf = _pair(kv, tie)
    idx = torch.randint(0, 101, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(idx), hf(idx).logits
    assert a.abs().max() > 1.0  # a meaningful comparison, not two near-zero tensors
    assert (a - b).abs().max().item() <= 1e-4


@pytest.mark.parametrize(("kv", "tie"), [(None, True), (2, False)])
def test_gradients_match_transformers(kv, tie):
    cfg, ours, hf = _pair(kv, tie)
    tokens = torch.randint(0, 101, (2, 33), generator=torch.Generator().manual_seed(2))
    x, y = tokens[:, :-1], tokens[:, 1:].contiguous()
    loss = torch.nn.functional.cross_entropy(ours(x).flatten(0, 1), y.flatten())
    loss.backward()
    hf_loss = hf(input_ids=x, labels=y, shift_labels=y).loss
    hf_loss.backward()
    assert loss.item() == pytest.approx(hf_loss.item(), abs=1e-5)
    grads = build_model(cfg, "cpu")  # a model whose "weights" are our gradients, mapped like weights
    grads.load_state_dict({n: p.grad for n, p in ours.named_parameters()}, strict=False)
    hf_grads = {n: p.grad for n, p in hf.named_parameters()}
    for name, g in to_hf_state_dict(grads).items():
        torch.testing.assert_close(g, hf_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(("kv", "tie"), CASES)
def test_round_trip_from_hf(kv, tie):
    cfg, ours, hf = _pair(kv, tie)
    again = build_model(cfg, "cpu")
    again.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg))
    for (name, p), (_, q) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    assert (again.lm_head.weight is again.embed.weight) == tie


def test_config_mapping():
    cfg = resolve_model_config(ModelConfig(preset="smollm2-135m"), 49152)
    hf = transformers.LlamaConfig(**to_hf_config(cfg))
    assert (hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads) == (
        30,
        576,
        9,
        3,
    )
    rope_theta = hf.rope_parameters["rope_theta"]  # transformers 5 keeps it (and any scaling) there
    assert (hf.intermediate_size, hf.vocab_size, rope_theta, hf.tie_word_embeddings) == (
        1536,
        49152,
        1e5,
        True,
    )
    assert hf.head_dim == 64 and hf.hidden_act == "silu" and not hf.attention_bias
    # and reads back from the config.json that transformers 5 writes
    back = from_hf_config(hf.to_dict())
    assert (back.rope_theta, back.n_kv_head, back.tie_embeddings) == (1e5, 3, True)


def test_mismatched_weights_are_refused():
    cfg, _, hf = _pair(2, False)
    sd = hf.state_dict()
    with pytest.raises(CheckpointError, match="missing"):
        from_hf_state_dict({k: v for k, v in sd.items() if "layers.1.mlp.up_proj" not in k}, cfg)
    with pytest.raises(CheckpointError, match=r"k_proj\.weight has shape"):
        from_hf_state_dict(
            sd, resolve_model_config(ModelConfig(n_layer=2, n_embd=64, n_head=4, tie_embeddings=False), 101)
        )
    tied = resolve_model_config(ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2), 101)
    with pytest.raises(CheckpointError, match="tie_embeddings"):
        from_hf_state_dict(sd, tied)
