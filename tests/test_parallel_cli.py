"""The user's path: `danlu pretrain --nproc 2` and `danlu run --nproc 2` (torchrun, gloo) give the
one-process loss curve, and a layout that does not fit the processes is a one-line error (exit 2)
before anything starts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from danlu.cli import main

ARGS = [
    "--model.n_layer=2", "--model.n_embd=32", "--model.n_head=2", "--model.max_seq_len=32",
    "--train.seq_len=32", "--train.batch_size=4", "--train.max_steps=4", "--train.eval_every=4",
    "--train.eval_batches=2", "--train.log_every=1", "--train.device=cpu", "--train.lr=3e-3",
]  # fmt: skip


def _run_dir(tiny_packed, path: Path) -> Path:
    tokens, tok = tiny_packed
    shutil.copytree(tokens, path / "tokens")
    shutil.copytree(tok, path / "tokenizer")
    return path


def _losses(run_dir: Path) -> list[float]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


def test_pretrain_nproc_2_matches_one_process(tiny_packed, tmp_path):
    one = _run_dir(tiny_packed, tmp_path / "one")
    assert main(["pretrain", f"--run_dir={one}", *ARGS]) == 0
    two = _run_dir(tiny_packed, tmp_path / "two")
    cmd = [
        sys.executable,
        "-m",
        "danlu.cli",
        "pretrain",
        "--nproc",
        "2",
        f"--run_dir={two}",
        "--parallel.dp_shard=2",
    ]
    proc = subprocess.run([*cmd, *ARGS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("val loss") == 1  # rank 0 prints the result, rank 1 nothing
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 4
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4
    assert (two / "model" / "model.safetensors").is_file()


def test_layout_that_does_not_fit_is_a_clear_error(tiny_packed, tmp_path, capsys):
    run = _run_dir(tiny_packed, tmp_path / "run")
    code = main(
        [
            "pretrain",
            "--nproc",
            "4",
            f"--run_dir={run}",
            "--parallel.dp_replicate=1",
            "--parallel.dp_shard=3",
            *ARGS,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "= 3 processes, but 4 were launched" in err and len(err.strip().splitlines()) == 1


def _recipe(root: Path, word_lines) -> Path:
    rows = [json.dumps({"id": i, "text": " ".join(word_lines(6, seed=i))}) for i in range(60)]
    (root / "corpus.jsonl").write_text("\n".join(rows) + "\n")
    cfg = {
        "name": "t",
        "run_dir": str(root / "out"),
        "data": {"sources": [str(root / "corpus.jsonl")], "val_fraction": 0.1},
        "tokenizer": {"vocab_size": 300},
        "model": {"n_layer": 2, "n_embd": 32, "n_head": 2, "max_seq_len": 32},
        "train": {"seq_len": 32, "batch_size": 4, "max_steps": 4, "eval_every": 4, "eval_batches": 2,
                  "ckpt_every": 2, "log_every": 1, "device": "cpu", "lr": 3e-3},
        "sample": {"prompts": ["the"], "max_new_tokens": 4},
    }  # fmt: skip
    (root / "r.yaml").write_text(yaml.safe_dump(cfg))
    return root / "r.yaml"


@pytest.mark.slow  # three torchrun launches and a one-process run: about 90 s on a loaded machine
def test_run_nproc_2_pretrains_in_two_processes(tmp_path, word_lines):
    """`danlu run --nproc 2`: the data stages in one process, pretraining under torchrun (FSDP 2),
    the one-process losses; a rerun skips everything, a longer schedule resumes in two processes."""
    recipe = _recipe(tmp_path, word_lines)
    assert main(["run", str(recipe), f"--run_dir={tmp_path / 'one'}"]) == 0
    cmd = [sys.executable, "-m", "danlu.cli", "run", str(recipe), "--nproc", "2", "--parallel.dp_shard=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "validation bits/byte:" in proc.stdout and "launching 2 processes" in proc.stderr
    two = tmp_path / "out"
    a, b = _losses(tmp_path / "one"), _losses(two)
    assert len(a) == len(b) == 4 and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4
    recs = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert all(len(r["mem_gib_by_rank"]) == 2 for r in recs if "loss" in r)  # two ranks trained
    stamp = json.loads((two / ".stages" / "pretrain.json").read_text())
    assert stamp["result"]["steps"] == 4
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "launching" not in again.stderr  # up to date: nothing relaunched
    longer = subprocess.run([*cmd, "--train.max_steps=6"], capture_output=True, text=True, timeout=300)
    assert longer.returncode == 0, longer.stderr[-3000:]
    recs = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r] == list(range(1, 7))  # resumed from step 4
    assert json.loads((two / ".stages" / "pretrain.json").read_text())["result"]["steps"] == 6


def test_run_nproc_that_does_not_fit_the_layout_is_a_clear_error(tmp_path, word_lines, capsys):
    recipe = _recipe(tmp_path, word_lines)
    code = main(["run", str(recipe), "--nproc", "4", "--parallel.dp_replicate=1", "--parallel.dp_shard=3"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "= 3 processes, but 4 were launched" in err
    assert not (tmp_path / "out").exists()  # refused before any stage ran
