"""The user's path: `danlu pretrain --nproc 2` (torchrun, gloo) gives the one-process loss curve, and a
layout that does not fit the processes is a one-line error (exit 2) before anything starts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

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
