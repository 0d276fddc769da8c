"""Architecture options of the transformer, each against an independent reference: transformers'
implementations where one exists (RoPE scaling, ALiBi, sliding window, GPT-2's LayerNorm/GELU/learned
positions/biases), the published formulas otherwise."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from danlu.errors import ConfigError
from danlu.interop.hf_llama import to_hf_config, to_hf_state_dict
from danlu.model import KVCache, build_model, resolve_model_config
from danlu.model.config import ModelConfig
from danlu.model.positions import alibi_slopes, rope_frequencies, sinusoidal_table

transformers = pytest.importorskip("transformers")
VOCAB = 97


def _cfg(**kw) -> ModelConfig:
    base = {"n_layer": 2, "n_embd": 64, "n_head": 4, "max_seq_len": 48}
    return resolve_model_config(ModelConfig(**(base | kw)), VOCAB)


def _model(seed: int = 0, **kw):
    m = build_model(_cfg(**kw), "cpu").eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # weights far from init, so a wrong mapping cannot hide
        for name, p in m.named_parameters():
            scale = 0.3 if "norm" in name else 0.15
            p.copy_(
                (1.0 if "norm" in name and name.endswith("weight") else 0.0)
                + scale * torch.randn(p.shape, generator=g)
            )
    return m


def _ids(T: int = 20, B: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


# ---- RoPE scaling against transformers' ROPE_INIT_FUNCTIONS ----


@pytest.mark.parametrize(
    ("kind", "factor", "original"), [("linear", 4.0, 0), ("yarn", 4.0, 64), ("yarn", 8.0, 0)]
)
def test_rope_scaling_equals_transformers(kind, factor, original):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = _cfg(
        n_embd=128,
        n_head=2,
        max_seq_len=512,
        rope_theta=10000.0,
        rope_scaling=kind,
        rope_factor=factor,
        rope_original_max_len=original,
    )
    hf_cfg = transformers.LlamaConfig(**to_hf_config(cfg))
    ref_inv, ref_scale = ROPE_INIT_FUNCTIONS[kind](hf_cfg, "cpu")
    inv, scale = rope_frequencies(cfg)
    torch.testing.assert_close(inv, ref_inv, atol=0, rtol=1e-6)
    assert scale == pytest.approx(ref_scale)
    if kind == "yarn":
        assert scale == pytest.approx(0.1 * math.log(factor) + 1)


def test_ntk_scaling_formula():
    cfg = _cfg(n_embd=128, n_head=2, rope_theta=10000.0, rope_scaling="ntk", rope_factor=4.0)
    inv, scale = rope_frequencies(cfg)
    d = 64
    base = 10000.0 * 4.0 ** (d / (d - 2))
    expected = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    torch.testing.assert_close(inv, expected, atol=0, rtol=1e-6)
    assert scale == 1.0
    plain, _ = rope_frequencies(_cfg(n_embd=128, n_head=2, rope_theta=10000.0))
    assert inv[0] == plain[0]  # the highest frequency (local order) is kept
    assert inv[-1].item() == pytest.approx(
        plain[-1].item() / 4.0, rel=0.05
    )  # the lowest is interpolated by the factor


@pytest.mark.parametrize("kind", ["linear", "yarn"])
def test_scaled_rope_model_matches_hf_llama_logits(kind):
    ours = _model(rope_scaling=kind, rope_factor=2.0, rope_original_max_len=24)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**to_hf_config(ours.cfg))).eval()
    hf.load_state_dict(to_hf_state_dict(ours), strict=False)
    idx = _ids(40)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=0)


def test_llama_export_refuses_other_architectures():
    for kw in (
        {"norm": "layernorm"},
        {"pos": "alibi"},
        {"qk_norm": True},
        {"rope_scaling": "ntk", "rope_factor": 2.0},
    ):
        with pytest.raises(ConfigError, match="cannot be exported as a Hugging Face Llama"):
            to_hf_config(_cfg(**kw))


# ---- ALiBi, sinusoidal ----


@pytest.mark.parametrize("n_head", [1, 2, 4, 6, 8, 12, 16])
def test_alibi_slopes_equal_bloom(n_head):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    # bloom's bias is slope * key position: position 1 gives the slopes
    ref = build_alibi_tensor(torch.ones(1, 2), n_head, torch.float32)[:, 0, 1]
    torch.testing.assert_close(alibi_slopes(n_head), ref, atol=0, rtol=1e-6)


def test_alibi_attention_bias_is_distance_penalty():
    m = _model(pos="alibi")
    bias, causal = m.attention_bias(0, 5, torch.device("cpu"), torch.float32, None)
    assert not causal and bias.shape == (4, 5, 5)
    slopes = alibi_slopes(4)
    for i in range(5):
        for j in range(5):
            if j > i:
                assert torch.isinf(bias[:, i, j]).all()
            else:
                torch.testing.assert_close(bias[:, i, j], -slopes * (i - j))
    assert not any("pos" in n or "rope" in n for n, _ in m.named_buffers() if n != "alibi")


def test_alibi_softmax_equals_bloom_bias():
    """Softmax is shift-invariant per row: -slope * (i - j) and bloom's slope * j give equal attention."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    T, H = 7, 4
    m = _model(pos="alibi")
    ours, _ = m.attention_bias(0, T, torch.device("cpu"), torch.float32, None)
    bloom = build_alibi_tensor(torch.ones(1, T), H, torch.float32).view(H, 1, T).expand(H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = torch.randn(H, T, T)
    ref = (scores + bloom).masked_fill(~causal, float("-inf")).softmax(-1)
    torch.testing.assert_close((scores + ours).softmax(-1), ref, atol=1e-6, rtol=0)


def test_sinusoidal_table_formula():
    table = sinusoidal_table(50, 16)
    for pos in (0, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


# ---- GPT-2 (LayerNorm, GELU, learned positions, biases) against transformers.GPT2LMHeadModel ----


def _gpt2_state_dict(m) -> dict[str, torch.Tensor]:
    """danlu -> HF GPT-2 weights (GPT-2's Conv1D stores Linear weights transposed)."""
    sd = m.state_dict()
    out = {
        "transformer.wte.weight": sd["embed.weight"],
        "transformer.wpe.weight": sd["pos_embed.weight"],
        "lm_head.weight": sd["embed.weight"],
    }
    for i in range(m.cfg.n_layer):
        s, d = f"blocks.{i}.", f"transformer.h.{i}."
        pairs = {"attn_norm": "ln_1", "mlp_norm": "ln_2"}
        for ours, theirs in pairs.items():
            out[d + theirs + ".weight"] = sd[s + ours + ".weight"]
            out[d + theirs + ".bias"] = sd[s + ours + ".bias"]
        for ours, theirs in {
            "attn.qkv": "attn.c_attn",
            "attn.proj": "attn.c_proj",
            "mlp.up": "mlp.c_fc",
            "mlp.down": "mlp.c_proj",
        }.items():
            out[d + theirs + ".weight"] = sd[s + ours + ".weight"].t().contiguous()
            out[d + theirs + ".bias"] = sd[s + ours + ".bias"]
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["norm.weight"], sd["norm.bias"]
    return out


def test_gpt2_options_match_hf_gpt2_logits():
    ours = _model(norm="layernorm", mlp="gelu", pos="learned", bias=True, ffn_hidden=256, norm_eps=1e-5)
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=VOCAB,
            n_positions=48,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_inner=256,
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
        )
    ).eval()
    missing, unexpected = hf.load_state_dict(_gpt2_state_dict(ours), strict=False)
    assert unexpected == [] and all("attn.bias" in k or "masked_bias" in k for k in missing)
    idx = _ids(30)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=0)


# ---- sliding window against transformers' Mistral (Llama weights, windowed attention) ----


def test_sliding_window_matches_hf_mistral():
    ours = _model(sliding_window=8, n_kv_head=2)
    hf_kw = to_hf_config(_cfg(n_kv_head=2)) | {"sliding_window": 8}
    hf_kw.pop("architectures"), hf_kw.pop("attention_bias"), hf_kw.pop("mlp_bias")
    hf = transformers.MistralForCausalLM(
        transformers.MistralConfig(**hf_kw, attn_implementation="eager")
    ).eval()
    ours.cfg.sliding_window = 0  # the Llama export only checks the fields; weights are the same
    sd = to_hf_state_dict(ours)
    ours.cfg.sliding_window = 8
    hf.load_state_dict(sd, strict=False)
    idx = _ids(40)
    with torch.no_grad():
        theirs = hf(idx).logits
        torch.testing.assert_close(ours(idx), theirs, atol=1e-4, rtol=0)
        ours.cfg.sliding_window = 0
        assert (ours(idx)[:, 8:] - theirs[:, 8:]).abs().max() > 1e-2  # the window matters
        ours.cfg.sliding_window = 8


# ---- the rest, against their formulas ----


def test_post_ln_block_formula():
    m = _model(norm_position="post", norm="layernorm", n_layer=1, mlp="relu")
    block, x = m.blocks[0], torch.randn(2, 6, 64)
    rope = (m.rope_cos[:6], m.rope_sin[:6])
    bias = m.attention_bias(0, 6, x.device, x.dtype, None)
    h = block.attn_norm(x + block.attn(x, 0, rope, bias, None))
    expected = block.mlp_norm(h + block.mlp.down(F.relu(block.mlp.up(h))))
    torch.testing.assert_close(block(x, 0, rope, bias, None)[0], expected)
    assert isinstance(m.norm, torch.nn.Identity)  # post-LN blocks end normalized


def test_geglu_formula():
    m = _model(mlp="geglu", n_layer=1)
    mlp, x = m.blocks[0].mlp, torch.randn(3, 64)
    gate, up = (x @ mlp.gate_up.weight.t()).chunk(2, dim=-1)
    torch.testing.assert_close(mlp(x), (F.gelu(gate, approximate="tanh") * up) @ mlp.down.weight.t())


def test_qk_norm_normalizes_each_head():
    m = _model(qk_norm=True, n_layer=1)
    attn = m.blocks[0].attn
    assert attn.q_norm is not None and attn.q_norm.weight.shape == (16,)
    calls = []
    attn.q_norm.register_forward_hook(lambda mod, inp, out: calls.append((inp[0], out)))
    m(_ids(5))
    q_in, q_out = calls[0]
    rms = q_in.pow(2).mean(-1, keepdim=True).add(m.cfg.norm_eps).rsqrt()
    torch.testing.assert_close(q_out, q_in * rms * attn.q_norm.weight)


def test_logit_softcap_bounds_and_formula():
    capped, plain = _model(logit_softcap=5.0), _model()
    idx = _ids()
    with torch.no_grad():
        a, b = capped(idx), plain(idx)
    assert a.abs().max() < 5.0 < b.abs().max()
    torch.testing.assert_close(a, 5.0 * torch.tanh(b / 5.0))


def test_layer_sharing_cycles_blocks_and_counts_params():
    shared = _model(n_layer=6, n_unique_layers=2)
    assert len(shared.blocks) == 2
    one_block = sum(p.numel() for p in shared.blocks[0].parameters())
    assert _model(n_layer=6).num_params() - shared.num_params() == 4 * one_block
    order = []
    for i, b in enumerate(shared.blocks):
        b.register_forward_hook(lambda *a, i=i: order.append(i))
    shared(_ids(4))
    assert order == [0, 1, 0, 1, 0, 1]


def test_biases_and_dropout():
    m = _model(bias=True, norm="layernorm", dropout=0.2)
    assert m.blocks[0].attn.qkv.bias is not None and m.blocks[0].attn_norm.bias is not None
    idx = _ids()
    with torch.no_grad():
        assert torch.equal(m(idx), m(idx))  # eval: no dropout
        m.train()
        assert not torch.equal(m(idx), m(idx))


def test_learned_positions_matter():
    m = _model(pos="learned")
    idx = torch.full((1, 6), 5)
    with torch.no_grad():
        logits = m(idx)
        assert (logits[0, 0] - logits[0, 3]).abs().max() > 1e-3
        m.pos_embed.weight.zero_()
        flat = m(torch.full((1, 1), 5))
    assert flat.shape == (1, 1, VOCAB)


def test_bidirectional_mask_sees_the_future():
    m = _model()
    idx = _ids(8)
    other = idx.clone()
    other[:, -1] = (other[:, -1] + 1) % VOCAB
    full = torch.ones(8, 8, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(m(idx)[:, 0], m(other)[:, 0])  # causal: position 0 cannot see the last token
        assert not torch.allclose(m(idx, attn_mask=full)[:, 0], m(other, attn_mask=full)[:, 0])


def test_invalid_options_are_refused():
    for kw, key in (
        (({"norm": "batchnorm"}), "model.norm"),
        ({"pos": "xpos"}, "model.pos"),
        ({"rope_factor": 0.5}, "model.rope_factor"),
        ({"n_unique_layers": 5}, "model.n_unique_layers"),
        ({"dropout": 1.0}, "model.dropout"),
    ):
        with pytest.raises(ConfigError, match=key):
            _cfg(**kw)


# ---- the KV cache for every attention kind ----

OPTION_SETS = [
    {},
    {"n_kv_head": 1},
    {"n_kv_head": 2, "sliding_window": 5},
    {"pos": "alibi"},
    {"pos": "alibi", "sliding_window": 6, "n_kv_head": 2},
    {"pos": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True},
    {"pos": "sinusoidal", "norm_position": "post", "mlp": "relu"},
    {"pos": "none", "qk_norm": True, "logit_softcap": 10.0},
    {"rope_scaling": "yarn", "rope_factor": 4.0, "n_unique_layers": 1, "mlp": "geglu"},
    {"rope_scaling": "ntk", "rope_factor": 2.0, "qk_norm": True},
    {"n_experts": 4, "moe_top_k": 2, "n_kv_head": 2},
]


@pytest.mark.parametrize(
    "options", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "llama"
)
def test_kv_cache_decoding_matches_full_forward(options):
    m = _model(**options)
    idx = _ids(24, B=3)
    with torch.no_grad():
        full = m(idx)
        cache = KVCache.for_model(m, batch=3)
        parts = [m(idx[:, :7], cache), m(idx[:, 7:12], cache)]
        parts += [m(idx[:, t : t + 1], cache) for t in range(12, 24)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


# ---- mixture of experts ----


def _moe(**kw):
    return _model(n_experts=4, moe_top_k=2, **kw)


def test_moe_output_is_the_weighted_sum_of_chosen_experts():
    for k in (1, 2):
        m = _model(n_experts=4, moe_top_k=k, n_layer=1)
        moe = m.blocks[0].mlp
        x = torch.randn(10, 64)
        probs = (x @ moe.router.weight.t()).softmax(-1)
        with torch.no_grad():
            out, _ = moe(x)
        for i in range(10):
            w, e = probs[i].topk(k)
            if k > 1:  # Mixtral renormalizes the k weights; Switch (k = 1) keeps the probability
                w = w / w.sum()
            expected = sum(w[j] * moe.experts[e[j]](x[i : i + 1])[0] for j in range(k))
            torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=1e-5)


def test_moe_losses_follow_switch_and_st_moe_formulas():
    m = _moe(n_layer=1)
    moe = m.blocks[0].mlp
    x = torch.randn(32, 64)
    _, (balance, z) = moe(x)
    logits = x @ moe.router.weight.t()
    probs = logits.softmax(-1)
    chosen = probs.topk(2).indices
    fraction = torch.stack([(chosen == e).float().sum() for e in range(4)]) / (32 * 2)
    torch.testing.assert_close(balance, 4 * (fraction * probs.mean(0)).sum())
    torch.testing.assert_close(z, torch.logsumexp(logits, -1).square().mean())
    with torch.no_grad():
        moe.router.weight.zero_()  # a uniform router: the balance loss is exactly 1
    assert moe(x)[1][0].item() == pytest.approx(1.0)
    with torch.no_grad():
        assert moe(x)[1] is None  # no gradients, no router losses


def test_moe_capacity_limits_tokens_per_expert_first_choices_first():
    m = _model(n_experts=4, moe_top_k=2, moe_capacity_factor=0.5, n_layer=1)
    moe = m.blocks[0].mlp
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 10.0  # every token's first choice is expert 0
    x = torch.zeros(16, 64)
    x[:, 0] = torch.linspace(1, 2, 16)
    chosen, _, kept, _ = moe.route(x)
    capacity = math.ceil(0.5 * 16 * 2 / 4)
    assert (chosen[:, 0] == 0).all()
    assert kept[:, 0].tolist() == [True] * capacity + [False] * (16 - capacity)  # earlier tokens first
    for e in range(4):
        assert int(((chosen == e) & kept).sum()) <= capacity
    moe.reset_load()
    moe(x)
    assert int(moe.load[0]) == capacity


def test_moe_model_adds_router_loss_and_counts_active_flops():
    m = _moe(moe_every=2, n_layer=4)
    assert [type(b.mlp).__name__ for b in m.blocks] == ["MLP", "MoE", "MLP", "MoE"]
    m.train()
    ids = _ids()
    _, aux = m(ids, return_aux=True)
    parts = []  # each MoE block's own losses, recomputed on its input
    x = m.embed(ids)
    rope = (m.rope_cos[: ids.size(1)], m.rope_sin[: ids.size(1)])
    for layer, block in enumerate(m.blocks):
        x, block_aux = block(x, layer, rope, (None, True), None)
        if block_aux is not None:
            parts.append(block_aux)
    assert len(parts) == 2
    expected = (
        0.01 * torch.stack([b for b, _ in parts]).mean() + 0.001 * torch.stack([z for _, z in parts]).mean()
    )
    torch.testing.assert_close(aux, expected)
    aux.backward()
    assert m.blocks[1].mlp.router.weight.grad.abs().sum() > 0
    # top-2 of 4 experts: a token pays for half of each MoE layer's experts, plus the router
    dense = _model(n_layer=4)
    experts = sum(p.numel() for p in m.blocks[1].mlp.experts.parameters())
    router = m.blocks[1].mlp.router.weight.numel()
    one_mlp = sum(p.numel() for p in dense.blocks[1].mlp.parameters())
    extra = 2 * (experts // 2 + router - one_mlp)
    assert m.flops_per_token(16) - dense.flops_per_token(16) == 6 * extra


@pytest.mark.parametrize(
    "options", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "llama"
)
def test_rows_at_different_lengths_decode_as_if_alone(options):
    """Continuous batching's premise: rows prefilled to different lengths and then decoded together,
    each at its own position, give every row the logits of its own full forward."""
    m = _model(**options)
    idx = _ids(20, B=3)
    lens = [3, 9, 6]
    with torch.no_grad():
        full = m(idx)
        cache = KVCache.for_model(m, batch=3)
        got = [[m(idx[r : r + 1, :n], cache, rows=slice(r, r + 1))[0]] for r, n in enumerate(lens)]
        assert cache.lengths.tolist() == lens
        for t in range(8):  # one token per row per step, all rows in one forward
            step = torch.stack([idx[r, n + t] for r, n in enumerate(lens)])[:, None]
            out = m(step, cache)
            for r in range(3):
                got[r].append(out[r])
    # decoding runs the one-query attention and the full forward SDPA: two kernels' fp32 rounding
    # (measured up to 1.4e-5 with experts), far below what a wrong position or cache row would give
    for r, n in enumerate(lens):
        torch.testing.assert_close(torch.cat(got[r]), full[r, : n + 8], atol=5e-5, rtol=0)


def test_cache_reorder_truncate_and_copy_prefix():
    m = _model()
    idx = _ids(12, B=2)
    with torch.no_grad():
        full = m(idx)
        cache = KVCache.for_model(m, batch=2)
        m(idx[:, :8], cache)
        cache.reorder(torch.tensor([1, 0]))  # the rows swap: row 0 now continues sequence 1
        torch.testing.assert_close(m(idx[[1, 0], 8:10], cache), full[[1, 0], 8:10], atol=1e-5, rtol=0)
        cache.truncate(5)  # roll both rows back to 5 positions; what was written after is ignored
        torch.testing.assert_close(m(idx[[1, 0], 5:7], cache), full[[1, 0], 5:7], atol=1e-5, rtol=0)
        cache.copy_prefix(src=0, dst=1, n=4)  # row 1 gets sequence 1's first 4 positions
        torch.testing.assert_close(
            m(idx[1:2, 4:6], cache, rows=slice(1, 2)), full[1:2, 4:6], atol=1e-5, rtol=0
        )
    assert cache.lengths.tolist() == [7, 6]


def test_cache_rows_past_the_context_and_wrong_batch_are_clear_errors():
    m = _model(max_seq_len=16)
    cache = KVCache.for_model(m, batch=2)
    with torch.no_grad():
        m(torch.zeros(1, 15, dtype=torch.long), cache, rows=slice(0, 1))
        with pytest.raises(ConfigError, match="exceed the model's context"):
            m(torch.zeros(2, 2, dtype=torch.long), cache)
        with pytest.raises(ConfigError, match="continues 2 cache rows"):
            m(torch.zeros(1, 1, dtype=torch.long), cache)
    assert cache.lengths.tolist() == [15, 0]  # failed forwards wrote nothing
