"""danlu quantize: a quantized model dir that the other verbs load, the gate, refused outputs."""

from __future__ import annotations

import json

import pytest
import torch

from danlu.cli import main
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model
from danlu.quant.apply import quantize_model
from danlu.quant.config import QuantConfig
from danlu.quant.stage import gate_verdict


@pytest.fixture(scope="module")
def base_and_calib(tmp_path_factory, tiny_packed, word_lines):
    from danlu.model_dir import save_model_dir
    from danlu.tokenizer import Tokenizer

    _, tok_dir = tiny_packed
    root = tmp_path_factory.mktemp("quant_stage")
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=Tokenizer.load(tok_dir).vocab_size,
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_kv_head=2,
        max_seq_len=64,
        ffn_hidden=128,
    )
    base = save_model_dir(root / "base", build_model(cfg).eval(), cfg, tok_dir)
    calib = root / "calib.txt"
    calib.write_text("\n".join(word_lines(1500, seed=3)), encoding="utf-8")
    return base, calib


def _quantize(base, calib, out, *flags):
    return main(
        [
            "quantize",
            str(base),
            str(out),
            "--calib",
            str(calib),
            "--calib-samples",
            "4",
            "--gate-chars",
            "3000",
            *flags,
        ]
    )


def test_quantize_writes_a_model_dir_that_generate_and_eval_load(tmp_path, base_and_calib, capsys):
    from danlu.model_dir import load_model
    from danlu.quant.linear import Int4Linear

    base, calib = base_and_calib
    out = tmp_path / "q4"
    assert (
        _quantize(base, calib, out, "--method", "gptq", "--group-size", "32", "--max-ppl-increase", "1") == 0
    )
    printed = capsys.readouterr().out
    assert "gate passed: perplexity" in printed and f"wrote {out} (8 quantized layers)" in printed
    meta = json.loads((out / "config.json").read_text())
    assert meta["quant"] == {"method": "gptq", "bits": 4, "group_size": 32}
    report = json.loads((out / "quant" / "report.json").read_text())
    assert report["gate"]["passed"] and len(report["layers"]) == 8
    model, _, _ = load_model(out)
    assert isinstance(model.blocks[1].attn.qkv, Int4Linear) and isinstance(
        model.blocks[0].mlp.down, Int4Linear
    )
    assert sum(isinstance(m, Int4Linear) for m in model.modules()) == 8
    assert main(["generate", str(out), "--prompt", "the", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    ppl = tmp_path / "ppl.txt"
    ppl.write_text(calib.read_text()[:2000])
    assert main(["eval", str(out), "--ppl", str(ppl)]) == 0


def test_outputs_that_are_not_ours_are_refused(tmp_path, base_and_calib, capsys):
    base, calib = base_and_calib
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert _quantize(base, calib, other, "--method", "rtn", "--bits", "8", "--no-gate") == 2
    assert "not empty and not a model dir" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "mine" and len(list(other.iterdir())) == 1
    out = tmp_path / "q8"
    assert _quantize(base, calib, out, "--method", "rtn", "--bits", "8", "--no-gate") == 0
    assert _quantize(base, calib, out, "--method", "rtn", "--bits", "8", "--no-gate") == 2
    assert "already holds a model" in capsys.readouterr().err
    assert _quantize(out, calib, tmp_path / "again", "--method", "rtn", "--bits", "8") == 2
    assert "already quantized" in capsys.readouterr().err
    assert _quantize(base, calib, tmp_path / "bad", "--method", "awq-ish") == 2
    assert "quantize.method" in capsys.readouterr().err


def _trained_copy(base, calib, dest, steps=40):
    """The base model after a few steps on the calibration text: a model that has learned something,
    so that coarse quantization raises its perplexity (on a random model it may as well lower it)."""
    from danlu.model_dir import load_model, save_model_dir

    model, tok, _ = load_model(base)
    ids = torch.tensor(tok.encode(calib.read_text(encoding="utf-8"))[: 64 * 33])
    windows = ids[: len(ids) // 33 * 33].view(-1, 33)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = windows[torch.arange(8) + 8 * step % max(1, len(windows) - 8)]
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_model_dir(dest, model.eval(), model.cfg, base / "tokenizer")


def test_a_failed_gate_writes_nothing(tmp_path, base_and_calib, capsys):
    base, calib = base_and_calib
    base = _trained_copy(base, calib, tmp_path / "trained")
    out = tmp_path / "q2"
    # 2-bit per-tensor-sized groups on a trained model: its perplexity rises, and no rise is allowed
    rc = _quantize(
        base, calib, out, "--method", "rtn", "--bits", "2", "--group-size", "64", "--max-ppl-increase", "0"
    )
    err = capsys.readouterr().err
    assert rc == 2 and "fails the accuracy gate: perplexity +" in err and "nothing written" in err
    assert not out.exists()


def test_gate_verdict_thresholds():
    cfg = QuantConfig(method="rtn", bits=8)
    before = {"perplexity": 10.0, "tasks": {"arc_easy": 0.5}}
    ok = gate_verdict(before, {"perplexity": 10.19, "tasks": {"arc_easy": 0.495}}, cfg)
    assert ok["passed"] and ok["ppl_increase"] == pytest.approx(0.019)
    bad = gate_verdict(before, {"perplexity": 10.3, "tasks": {"arc_easy": 0.45}}, cfg)
    assert not bad["passed"] and len(bad["failures"]) == 2
    assert gate_verdict(before, {"perplexity": 10.4, "tasks": {"arc_easy": 0.5}}, QuantConfig(bits=4))[
        "passed"
    ]


@pytest.mark.parametrize("method", ["nf4", "smoothquant"])
def test_nf4_and_w8a8_model_dirs_load_with_the_same_outputs(tmp_path, base_and_calib, method):
    from danlu.finetune.nf4 import NF4Linear
    from danlu.model_dir import load_model
    from danlu.quant.linear import W8A8Linear
    from danlu.quant.stage import calibration_ids

    base, calib = base_and_calib
    out = tmp_path / method
    bits = "8" if method == "smoothquant" else "4"
    assert _quantize(base, calib, out, "--method", method, "--bits", bits, "--no-gate") == 0
    loaded, tok, _ = load_model(out)
    kind = NF4Linear if method == "nf4" else W8A8Linear
    assert sum(isinstance(m, kind) for m in loaded.modules()) == 8
    direct, _, _ = load_model(base)  # the same quantization in memory, on the same calibration windows
    cfg = QuantConfig(method=method, bits=int(bits), calib=str(calib), calib_samples=4, calib_seq_len=64)
    ids = calibration_ids(tok, calib.read_text()[:-3000], cfg)
    quantize_model(direct, cfg, ids)
    probe = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        assert torch.allclose(loaded(probe), direct(probe), atol=1e-5)
