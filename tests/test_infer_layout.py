"""The decode layout: oneDNN-packed Linears change how weights are held, never what the model computes,
saves or loads; adapters' bases and trainable weights are left alone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from danlu.finetune.lora import AdapterSpec, LoRALinear, apply_lora
from danlu.infer.engine import Engine
from danlu.infer.layout import PackedLinear, decode_layout, onednn_available
from danlu.infer.params import SamplingParams
from danlu.model import build_model
from danlu.model.config import ModelConfig
from danlu.model_dir import save_model_dir
from danlu.tokenizer.bpe import Tokenizer

pytestmark = pytest.mark.skipif(not onednn_available(), reason="torch here has no oneDNN linear")


def _model(tie: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        n_layer=2, n_embd=64, n_head=4, n_kv_head=2, vocab_size=300, max_seq_len=64, tie_embeddings=tie
    )
    return build_model(cfg, "cpu").eval().requires_grad_(False)


@pytest.mark.parametrize("tie", [True, False])
def test_logits_state_dict_and_loading_are_unchanged(tie):
    plain = _model(tie)
    fast = copy.deepcopy(plain)
    assert decode_layout(fast) == 9 and decode_layout(fast) == 0  # 8 block Linears and the head; idempotent
    assert isinstance(fast.blocks[0].attn.qkv, PackedLinear) and isinstance(fast.lm_head, PackedLinear)
    assert isinstance(fast.embed.weight, nn.Parameter)  # the gathers read the plain table
    ids = torch.randint(0, 300, (3, 17))
    with torch.no_grad():
        assert torch.allclose(fast(ids), plain(ids), atol=1e-4, rtol=1e-4)
    want, got = plain.state_dict(), fast.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    twin = copy.deepcopy(fast)  # packed again from the plain weights
    with torch.no_grad():
        assert torch.equal(twin(ids), fast(ids))
    # loading other weights packs them again
    other = _model(tie, seed=1)
    fast.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert torch.allclose(fast(ids), other(ids), atol=1e-4, rtol=1e-4)


def test_greedy_decoding_in_the_engine_gives_the_same_tokens():
    tok = Tokenizer.train(
        ["the cat sat on the mat and the dog ran far away. " * 4] * 20, 300, min_frequency=1
    )
    plain = _model()
    fast = copy.deepcopy(plain)
    decode_layout(fast)
    prompts = [[5, 17, 42, 8], [99, 3, 250, 61, 7, 7, 13], [11]]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    got = [c.token_ids for c in Engine(fast, tok, max_batch=2).generate(prompts, params)]
    assert got == [c.token_ids for c in Engine(plain, tok, max_batch=2).generate(prompts, params)]


def test_engine_from_dir_puts_its_own_model_in_the_layout(tmp_path):
    tok = Tokenizer.train(
        ["the cat sat on the mat and the dog ran far away. " * 4] * 20, 300, min_frequency=1
    )
    tok.save(tmp_path / "tok")
    model = _model()
    save_model_dir(tmp_path / "m", model, model.cfg, tmp_path / "tok")
    engine = Engine.from_dir(tmp_path / "m", max_batch=1)
    assert isinstance(engine.model.blocks[1].mlp.down, PackedLinear)
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    want = Engine(model, tok, max_batch=1).generate([[5, 6, 7]], params)[0].token_ids
    assert engine.generate([[5, 6, 7]], params)[0].token_ids == want


def test_adapter_bases_and_trainable_weights_are_left_alone():
    model = _model()
    apply_lora(model, AdapterSpec(r=4, targets=("q_proj", "v_proj")))
    model.blocks[1].mlp.down.weight.requires_grad_(True)
    decode_layout(model)
    qkv = model.blocks[0].attn.qkv
    assert isinstance(qkv, LoRALinear) and type(qkv.base) is nn.Linear  # LoRA merges into base.weight
    assert type(model.blocks[1].mlp.down) is nn.Linear  # still training
    assert isinstance(model.blocks[0].mlp.down, PackedLinear)


def test_under_autograd_a_packed_linear_passes_the_gradient_to_its_input():
    lin = nn.Linear(16, 8).requires_grad_(False)
    packed = PackedLinear(lin)
    x = torch.randn(4, 16, requires_grad=True)
    packed(x).sum().backward()
    assert torch.allclose(x.grad, lin.weight.sum(0).expand(4, 16), atol=1e-6)


def test_a_bf16_input_takes_the_plain_product_in_its_own_dtype():
    lin = nn.Linear(16, 8).requires_grad_(False)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        got = PackedLinear(lin)(x)
        want = F.linear(x, lin.weight.bfloat16(), lin.bias.bfloat16())
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
