"""The model's inference fast paths: RMSNorm, RoPE and SwiGLU skip their autograd Functions when
nothing needs a gradient. They compute what the Functions compute, and training still goes through
the Functions (their hand-written backwards), with the gradients of plain autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from danlu.model import transformer as tf
from danlu.model.config import ModelConfig
from danlu.model.transformer import RMSNorm, apply_rope, build_model


def _counting(monkeypatch, fn: type) -> list[int]:
    calls = [0]
    original = fn.apply

    def apply(*args):
        calls[0] += 1
        return original(*args)

    monkeypatch.setattr(fn, "apply", apply)
    return calls


def test_fast_rmsnorm_equals_the_function_and_training_keeps_it(monkeypatch):
    torch.manual_seed(0)
    norm = RMSNorm(96, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 7, 96) * 4
    calls = _counting(monkeypatch, tf._RMSNormFn)
    with torch.no_grad():
        fast = norm(x)
    assert calls[0] == 0
    function = tf._RMSNormFn.apply(x, norm.weight.detach(), norm.eps)
    assert (fast - function).abs().max() <= 1e-6
    with torch.inference_mode():
        assert (norm(x.bfloat16()).float() - function).abs().max() <= 0.05  # bf16 rounding only
    # training: the Function runs and its gradients are plain autograd's of the same expression
    xg = x.clone().requires_grad_()
    norm(xg).pow(2).sum().backward()
    assert calls[0] == 2  # the direct call above and this one
    ref_x, ref_w = x.clone().requires_grad_(), norm.weight.detach().clone().requires_grad_()
    ref = ref_x * torch.rsqrt(ref_x.pow(2).mean(-1, keepdim=True) + norm.eps) * ref_w
    ref.pow(2).sum().backward()
    assert torch.allclose(xg.grad, ref_x.grad, atol=1e-5)
    assert torch.allclose(norm.weight.grad, ref_w.grad, atol=1e-4)


def test_fast_rope_and_swiglu_equal_their_functions(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 16)
    angles = torch.randn(5, 1, 8)
    cos, sin = angles.cos(), angles.sin()
    rope_calls = _counting(monkeypatch, tf._Rope)
    with torch.no_grad():
        fast = apply_rope(x, cos, sin)
    assert rope_calls[0] == 0
    assert (fast - tf._Rope.apply(x, cos, sin)).abs().max() <= 1e-6
    half = torch.cat([-x[..., 8:], x[..., :8]], dim=-1)  # HF's rotate_half convention
    assert torch.allclose(fast, x * torch.cat([cos, cos], -1) + half * torch.cat([sin, sin], -1), atol=1e-6)

    mlp = tf.MLP(ModelConfig(vocab_size=50, n_layer=1, n_embd=32, n_head=2, ffn_hidden=48, mlp="swiglu"))
    h = torch.randn(4, 32)
    glu_calls = _counting(monkeypatch, tf._SwiGLU)
    with torch.no_grad():
        fast = mlp(h)
        gate_up = mlp.gate_up(h)
        function = mlp.down(tf._SwiGLU.apply(gate_up))
    assert glu_calls[0] == 1 and (fast - function).abs().max() <= 1e-6
    mlp(h).sum().backward()  # parameters need gradients: the Function's backward runs
    assert glu_calls[0] == 2 and mlp.gate_up.weight.grad is not None


@pytest.mark.parametrize("qk_norm", [False, True])
def test_model_logits_and_gradients_do_not_depend_on_the_path(monkeypatch, qk_norm):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=64, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=32, qk_norm=qk_norm
    )
    model = build_model(cfg).eval()
    ids = torch.randint(0, 64, (2, 12))
    norm_calls = _counting(monkeypatch, tf._RMSNormFn)
    with torch.no_grad():
        fast = model(ids)
    assert norm_calls[0] == 0
    slow = model(ids)  # parameters require gradients: every Function runs
    assert norm_calls[0] > 0
    assert (fast - slow.detach()).abs().max() <= 1e-5
    # the gradients through the Functions equal those through torch's own modules
    F.cross_entropy(slow.flatten(0, 1), ids.flatten()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for mod in model.modules():
        if isinstance(mod, RMSNorm):
            monkeypatch.setattr(mod, "forward", lambda x, m=mod: nn.RMSNorm.forward(m, x))

    def hf_rope(x, cos, sin):
        half = x.size(-1) // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * torch.cat([cos, cos], -1) + rotated * torch.cat([sin, sin], -1)

    monkeypatch.setattr(tf, "apply_rope", hf_rope)
    F.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-5), n
