"""LoRA and DoRA against PEFT on the HF export of a tiny danlu model (issue 21, parts 2 and 4).

Pinned: an adapter starts as the identity; merged logits equal unmerged (1e-5) and unmerging restores
the base weights; danlu's adapter exported to PEFT's format and loaded by `peft` onto the HF export of
the base gives danlu's logits (1e-4); a PEFT-made adapter imported into danlu gives PEFT's logits and,
from the same weights, the same gradients of every adapter tensor; an unmerged finetune dir loads
with `load_model` and exports merged to HF; an adapter for another base model is refused.
"""

from __future__ import annotations

import json

import peft
import pytest
import torch
import transformers

from danlu.errors import CheckpointError
from danlu.finetune.lora import (
    AdapterSpec,
    adapter_state,
    adapters_disabled,
    apply_lora,
    lora_layers,
    merge_adapters,
    set_adapter,
    spec_to_json,
    unmerge_adapters,
    unwrap,
)
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model
from danlu.model_dir import load_model, save_model_dir

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def base(tmp_path_factory, word_lines):
    """(danlu base model dir, its HF export dir)."""
    from danlu.interop.hf_llama import export_hf
    from danlu.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("lora")
    tok = Tokenizer.train(word_lines(200, seed=1), 300)
    tok.save(root / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=32, vocab_size=tok.vocab_size)
    save_model_dir(root / "base", build_model(cfg), cfg, root / "tokenizer")
    export_hf(root / "base", root / "hf")
    return root / "base", root / "hf"


def _randomize_b(model, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "magnitude" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(3))


def _hf(hf_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()


@pytest.mark.parametrize("dora", [False, True])
def test_merge_equals_unmerged_and_unmerge_restores_the_base(base, dora):
    model, _, cfg = load_model(base[0])
    x = _ids(cfg.vocab_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = model(x)
    apply_lora(
        model, AdapterSpec(r=4, alpha=8, targets=("q_proj", "v_proj", "up_proj", "down_proj"), dora=dora)
    )
    assert torch.equal(model(x), ref)  # B = 0 (and m = ||W||): the adapter starts as the identity
    _randomize_b(model)
    out = model(x)
    assert (out - ref).abs().max() > 1e-3
    merge_adapters(model)
    assert torch.allclose(model(x), out, atol=1e-5)
    unmerge_adapters(model)
    assert torch.allclose(model(x), out, atol=1e-5)
    with adapters_disabled(model):
        assert torch.allclose(model(x), ref, atol=1e-6)
    plain = unwrap(model, merge=False)
    for k, v in plain.state_dict().items():
        assert torch.allclose(v, before[k], atol=1e-6), k


def test_named_adapters_switch_at_run_time(base):
    model, _, cfg = load_model(base[0])
    x = _ids(cfg.vocab_size)
    apply_lora(model, AdapterSpec(r=2, targets=("q_proj",)), "a", seed=1)
    apply_lora(model, AdapterSpec(r=4, targets=("q_proj", "down_proj")), "b", seed=2)
    _randomize_b(model)
    set_adapter(model, "a")
    out_a = model(x)
    set_adapter(model, "b")
    out_b = model(x)
    assert (out_a - out_b).abs().max() > 1e-3
    set_adapter(model, "a")
    assert torch.equal(model(x), out_a)
    with pytest.raises(KeyError):
        set_adapter(model, "c")


def _save_unmerged(base_dir, out, spec: AdapterSpec):
    model, _, cfg = load_model(base_dir)
    apply_lora(model, spec, "default", seed=5)
    _randomize_b(model)
    x = _ids(cfg.vocab_size)
    with torch.no_grad():
        logits = model(x)
    state = adapter_state(model, "default")
    save_model_dir(
        out,
        unwrap(model, merge=False),
        cfg,
        base_dir / "tokenizer",
        {},
        ("default", spec_to_json(spec), state),
    )
    return logits, x


@pytest.mark.parametrize("dora", [False, True])
def test_exported_adapter_loaded_by_peft_gives_danlu_logits(base, tmp_path, dora):
    from danlu.interop.peft import export_peft

    spec = AdapterSpec(r=4, alpha=16, targets=TARGETS, dora=dora)
    logits, x = _save_unmerged(base[0], tmp_path / "ft", spec)
    loaded, _, _ = load_model(tmp_path / "ft")  # base + adapters/default/, applied on load
    with torch.no_grad():
        assert torch.allclose(loaded(x), logits, atol=1e-6)
    export_peft(tmp_path / "ft", tmp_path / "peft")
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (
        cfg["peft_type"] == "LORA"
        and cfg["use_dora"] is dora
        and sorted(cfg["target_modules"]) == sorted(TARGETS)
    )
    hf = peft.PeftModel.from_pretrained(_hf(base[1]), tmp_path / "peft").eval()
    with torch.no_grad():
        theirs = hf(input_ids=x).logits
    assert (theirs - logits).abs().max() < 1e-4


def test_merged_finetune_exports_to_hf_with_the_same_logits(base, tmp_path):
    from danlu.interop.hf_llama import export_hf

    logits, x = _save_unmerged(base[0], tmp_path / "ft", AdapterSpec(r=4, targets=TARGETS))
    export_hf(tmp_path / "ft", tmp_path / "hf")
    with torch.no_grad():
        assert (_hf(tmp_path / "hf")(input_ids=x).logits - logits).abs().max() < 1e-4


def _peft_adapter(hf_dir, out, dora: bool, rslora: bool = False):
    torch.manual_seed(7)
    cfg = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"],
        init_lora_weights=False, use_dora=dora, use_rslora=rslora,
    )  # fmt: skip
    model = peft.get_peft_model(_hf(hf_dir), cfg)
    model.save_pretrained(out)
    return model


@pytest.mark.parametrize(("dora", "rslora"), [(False, False), (False, True), (True, False)])
def test_peft_adapter_imports_with_the_same_logits_and_gradients(base, tmp_path, dora, rslora):
    from danlu.interop.peft import import_peft, peft_key

    theirs = _peft_adapter(base[1], tmp_path / "peft", dora, rslora)
    import_peft(tmp_path / "peft", base[0], tmp_path / "ours")
    ours, _, cfg = load_model(tmp_path / "ours")
    x = _ids(cfg.vocab_size)
    theirs.train()
    ours.train()  # dropout 0: train mode computes the same; the gradients are the training ones
    ref = theirs(input_ids=x).logits
    out = ours(x)
    assert (out - ref).abs().max() < 1e-4
    y = torch.roll(x, -1, 1)
    torch.nn.functional.cross_entropy(ref.flatten(0, 1), y.flatten()).backward()
    torch.nn.functional.cross_entropy(out.flatten(0, 1), y.flatten()).backward()
    their_grads = {
        n.replace(".default", "").replace("vector.weight", "vector"): p.grad
        for n, p in theirs.named_parameters()
        if p.requires_grad
    }
    n_checked = 0
    for name, layer in lora_layers(ours):
        for key, p in layer.adapters["default"].named_parameters():
            want = their_grads[peft_key(f"{name}.{key}")]
            assert torch.allclose(p.grad, want, atol=1e-6, rtol=1e-4), (name, key)
            n_checked += 1
    assert n_checked == 2 * 6 * (3 if dora else 2)  # layers x modules x (A, B[, magnitude])


def test_an_adapter_for_another_base_is_refused(base, tmp_path, word_lines):
    from danlu.interop.peft import import_peft
    from danlu.tokenizer import Tokenizer

    _peft_adapter(base[1], tmp_path / "peft", dora=False)
    tok = Tokenizer.train(word_lines(200, seed=1), 300)
    tok.save(tmp_path / "tokenizer")
    other = ModelConfig(n_layer=2, n_embd=32, n_head=4, max_seq_len=32, vocab_size=tok.vocab_size)
    save_model_dir(tmp_path / "other", build_model(other), other, tmp_path / "tokenizer")
    with pytest.raises(CheckpointError, match="another base model"):
        import_peft(tmp_path / "peft", tmp_path / "other", tmp_path / "out")
    assert not (tmp_path / "out").exists()
