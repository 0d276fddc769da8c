"""Pruning: masks of the stated sparsity, 2:4 in every group of 4, global vs per-layer thresholds,
the sparsity report, recovery that keeps pruned weights at zero, and the prune verb."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from danlu.cli import main
from danlu.compress.masks import (
    MaskKeeper,
    apply_masks,
    compute_masks,
    holds_nm,
    magnitude_masks,
    nm_mask,
    sparsity_report,
)
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model
from danlu.model_dir import load_model, read_metadata, save_model_dir


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(32, 64, generator=g), "b": torch.randn(48, 16, generator=g) * 0.1}


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_per_layer_masks_drop_the_smallest_fraction(sparsity):
    weights = _weights()
    masks = magnitude_masks(weights, sparsity, "layer")
    for name, w in weights.items():
        mask = masks[name]
        assert mask.shape == w.shape
        assert int((~mask).sum()) == round(sparsity * w.numel())
        if sparsity > 0:
            assert w.abs()[~mask].max() <= w.abs()[mask].min()


def test_a_global_threshold_prunes_small_layers_more():
    weights = _weights()
    masks = magnitude_masks(weights, 0.5, "global")
    total = sum(w.numel() for w in weights.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.5 * total)
    pruned = torch.cat([w.abs()[~masks[n]] for n, w in weights.items()])
    kept = torch.cat([w.abs()[masks[n]] for n, w in weights.items()])
    assert pruned.max() <= kept.min()  # one threshold across layers
    assert (~masks["b"]).float().mean() > 0.9 > (~masks["a"]).float().mean()  # "b" is 10x smaller


def test_two_four_keeps_the_two_largest_of_every_group_of_four():
    w = torch.randn(24, 32, generator=torch.Generator().manual_seed(2))
    mask = nm_mask(w)
    groups, mgroups = w.abs().reshape(-1, 4), mask.reshape(-1, 4)
    assert bool((mgroups.sum(-1) == 2).all())
    for g, m in zip(groups, mgroups, strict=True):
        assert set(torch.nonzero(m).flatten().tolist()) == set(g.topk(2).indices.tolist())
    pruned = w * mask
    assert holds_nm(pruned) and not holds_nm(w)
    with pytest.raises(ValueError, match="groups of 4"):
        nm_mask(torch.randn(4, 6))


def _tiny(vocab=64):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=vocab, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, max_seq_len=64, ffn_hidden=64
    )
    return build_model(cfg).eval(), cfg


def test_masks_on_a_model_and_the_report():
    model, _ = _tiny()
    masks = compute_masks(model, "magnitude", 0.6, "layer")
    assert not any(n.startswith(("embed", "lm_head")) for n in masks)
    assert set(masks) == {
        f"blocks.{i}.{p}" for i in range(2) for p in ("attn.qkv", "attn.proj", "mlp.gate_up", "mlp.down")
    }
    apply_masks(model, masks)
    report = sparsity_report(model, masks)
    assert report["sparsity"] == pytest.approx(0.6, abs=1e-3)
    for name, layer in report["layers"].items():
        assert layer["sparsity"] == pytest.approx(0.6, abs=2 / layer["params"])
        assert layer["zeros"] == int((~masks[name]).sum())
    assert 0 < report["model_sparsity"] < report["sparsity"]  # embeddings and norms are not pruned
    model24, _ = _tiny()
    masks24 = compute_masks(model24, "2:4")
    apply_masks(model24, masks24)
    modules = dict(model24.named_modules())
    assert all(holds_nm(modules[n].weight) for n in masks24)
    assert sparsity_report(model24, masks24)["sparsity"] == pytest.approx(0.5)


def test_mask_keeper_holds_zeros_through_momentum_and_weight_decay():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    model = nn.Sequential(lin)
    masks = {"0": nm_mask(lin.weight)}
    apply_masks(model, masks)
    optimizers = (
        lambda p: torch.optim.AdamW(p, lr=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    )
    for make in optimizers:
        opt = make(model.parameters())
        keeper = MaskKeeper(model, masks)
        keeper.attach(opt)
        start = lin.weight.detach().clone()
        for _ in range(5):
            loss = model(torch.randn(4, 16)).pow(2).sum()
            loss.backward()
            assert bool((lin.weight.grad[~masks["0"]] == 0).all())
            opt.step()
            opt.zero_grad()
        assert bool((lin.weight[~masks["0"]] == 0).all())
        assert not torch.equal(lin.weight[masks["0"]], start[masks["0"]])  # the kept weights trained
        keeper.remove()


@pytest.fixture(scope="module")
def base_and_text(tmp_path_factory, tiny_packed, word_lines):
    from danlu.tokenizer import Tokenizer

    _, tok_dir = tiny_packed
    root = tmp_path_factory.mktemp("prune")
    model, cfg = _tiny(Tokenizer.load(tok_dir).vocab_size)
    base = save_model_dir(root / "base", model, cfg, tok_dir)
    text = root / "text.txt"
    text.write_text("\n".join(word_lines(600, seed=4)), encoding="utf-8")
    return base, text


@pytest.mark.parametrize("method", ["magnitude", "2:4"])
def test_recovery_keeps_pruned_weights_at_zero(base_and_text, tmp_path, method):
    base, text = base_and_text
    out = tmp_path / "pruned"
    rc = main(["prune", str(base), str(out), "--method", method, "--sparsity", "0.5", "--recover-steps", "4",
               "--data", str(text), "--seq-len", "32", "--batch-size", "2", "--eval-batches", "2", "--device", "cpu"])  # fmt: skip
    assert rc == 0
    pruned, _, _ = load_model(out)
    orig, _, _ = load_model(base)
    report = json.loads((out / "sparsity.json").read_text())
    masks = compute_masks(orig, method, 0.5)  # the masks the stage computed, from the same weights
    modules, orig_modules = dict(pruned.named_modules()), dict(orig.named_modules())
    changed = 0
    for name, mask in masks.items():
        w, w0 = modules[name].weight, orig_modules[name].weight
        assert bool((w[~mask] == 0).all())  # every pruned weight is still zero after the recovery
        assert report["layers"][name]["sparsity"] >= 0.5 - 2 / w.numel()
        if method == "2:4":
            assert holds_nm(w)
        changed += int((w[mask] != w0[mask]).sum())
    assert changed > 0.9 * sum(int(m.sum()) for m in masks.values())  # the kept weights trained
    losses = read_metadata(out)["prune"]["val_loss"]
    assert set(losses) == {"before", "pruned", "recovered"}
    assert losses["recovered"] < losses["pruned"]


def test_bad_prune_input_gets_one_line(base_and_text, tmp_path, capsys):
    base, _ = base_and_text
    assert main(["prune", str(base), str(tmp_path / "x"), "--sparsity", "1.5"]) == 2
    assert main(["prune", str(base), str(tmp_path / "y"), "--recover-steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "prune.sparsity" in err and "--data" in err and "Traceback" not in err
