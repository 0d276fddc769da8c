"""A recipe's qat: and quantize: sections under `danlu run`: the quantize stage after the last training
stage, its gate, and a failed gate that stops the run and writes nothing."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from danlu.cli import main
from danlu.run import RunLayout, read_stamp
from run_support import tiny_recipe


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, word_lines):
    quantize = {"method": "rtn", "bits": 4, "group_size": 32, "gate_chars": 500, "calib_samples": 4}
    return tiny_recipe(tmp_path_factory.mktemp("quant_recipe"), word_lines, "q", every=6, max_new_tokens=4,
                       qat={"bits": 4, "group_size": 32}, quantize=quantize)  # fmt: skip


def test_run_trains_through_qat_then_quantizes_behind_the_gate(recipe, capsys):
    from danlu.model_dir import load_model
    from danlu.quant.linear import Int4Linear
    from danlu.quant.qat import FakeQuantLinear

    assert main(["run", str(recipe / "r.yaml")]) == 0
    out = capsys.readouterr().out
    layout = RunLayout(recipe / "out")
    assert "quantized model: " in out and "gate passed: perplexity" in out
    stamp = read_stamp(layout, "quantize")
    gate = stamp["result"]["gate"]
    assert gate["passed"] and abs(gate["ppl_increase"]) < 1e-3  # the model was trained on this grid
    assert (layout.root / "quant_calib" / "gate.txt").stat().st_size > 0  # gated on the val documents

    base, _, _ = load_model(layout.model)  # the pretrained dir loads with its fake quantization
    assert json.loads((layout.model / "config.json").read_text())["qat"]["bits"] == 4
    assert any(isinstance(m, FakeQuantLinear) for m in base.modules())
    quantized, _, _ = load_model(layout.path("quantize"))
    assert sum(isinstance(m, Int4Linear) for m in quantized.modules()) == stamp["result"]["layers"] > 0
    meta = json.loads((layout.path("quantize") / "config.json").read_text())
    assert "qat" not in meta and meta["quant"]["qat_matched"] is True

    assert main(["run", str(recipe / "r.yaml")]) == 0  # up to date: skipped
    assert read_stamp(layout, "quantize") == stamp
    from danlu.cli import build_parser

    args = build_parser().parse_args(["quantize", "MODEL", "OUT", "--method", "bitnet", "--bits", "2"])
    assert (args.model, args.out, args.method) == ("MODEL", "OUT", "bitnet")  # the verb keeps its form


def test_a_failed_gate_stops_the_run_loudly_and_writes_nothing(recipe, capsys):
    src, run = RunLayout(recipe / "out"), RunLayout(recipe / "gate-fails")
    for stage in ("data", "tokenizer", "pack"):  # the same documents and tokens, already made
        shutil.copytree(src.path(stage), run.path(stage))
        run.stamps.mkdir(parents=True, exist_ok=True)
        shutil.copy(src.stamps / f"{stage}.json", run.stamps / f"{stage}.json")
    cfg = yaml.safe_load((recipe / "r.yaml").read_text())
    del cfg["qat"]  # plain training, then 2-bit RTN that may lose nothing: it fails
    cfg["train"] |= {"max_steps": 30, "lr": 0.01, "eval_every": 30, "ckpt_every": 30}  # a model 2 bits hurt
    cfg["quantize"] |= {"bits": 2, "symmetric": True, "max_ppl_increase": 0.0}
    (recipe / "fails.yaml").write_text(yaml.safe_dump(cfg | {"run_dir": str(run.root)}))
    assert main(["run", str(recipe / "fails.yaml")]) == 2
    err = capsys.readouterr().err
    assert "danlu: error: rtn 2-bit fails the accuracy gate" in err and "nothing written" in err
    assert "Traceback" not in err
    assert read_stamp(run, "pretrain") is not None  # training finished; quantizing did not
    assert read_stamp(run, "quantize") is None and not run.path("quantize").exists()
