"""End to end on a tiny config: a run killed with SIGKILL and rerun gives the uninterrupted loss curve."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from danlu.errors import CheckpointError
from danlu.model.config import ModelConfig
from danlu.recipe import RecipeConfig
from danlu.train.config import TrainConfig
from danlu.train.pretrain import run_pretrain


def _recipe(n_embd: int = 32) -> RecipeConfig:
    return RecipeConfig(
        model=ModelConfig(n_layer=2, n_embd=n_embd, n_head=2, max_seq_len=32),
        train=TrainConfig(
            seq_len=32, batch_size=4, max_steps=12, lr=3e-3, warmup_steps=2, eval_every=4, eval_batches=2,
            ckpt_every=4, keep_last=2, log_every=1, device="cpu", seed=7,
        ),
    )  # fmt: skip


def _curve(run_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["loss"]) for r in recs if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
    return train, val


# The child process trains and SIGKILLs itself at a chosen point: mid-step after a checkpoint, or in the
# middle of writing a checkpoint (after the weights, before the optimizer state).
_CHILD = r"""
import os, pickle, signal, sys, torch
from danlu.train import pretrain, trainer
cfg, tokens, tok, out, where = pickle.loads(bytes.fromhex(sys.argv[1]))
if where == "mid-step":
    orig = trainer.Trainer.forward_backward
    def forward_backward(self, batches, *a, **k):
        loss = orig(self, batches, *a, **k)
        if loop_state["calls"] == 6:
            os.kill(os.getpid(), signal.SIGKILL)
        loop_state["calls"] += 1
        return loss
    loop_state = {"calls": 0}
    trainer.Trainer.forward_backward = forward_backward
else:
    orig_save = torch.save
    def save(obj, path, *a, **k):
        if "step-000008" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)
        return orig_save(obj, path, *a, **k)
    torch.save = save
pretrain.run_pretrain(cfg, tokens, tok, out)
"""


@pytest.mark.parametrize("where", ["mid-step", "mid-checkpoint"])
def test_sigkill_then_rerun_matches_uninterrupted_run(tiny_packed, tmp_path, where):
    import pickle

    tokens, tok = tiny_packed
    cfg = _recipe()
    full = run_pretrain(cfg, tokens, tok, tmp_path / "full")

    killed = tmp_path / "killed"
    arg = pickle.dumps((cfg, tokens, tok, killed, where)).hex()
    proc = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    steps_on_disk = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert "step-000004" in steps_on_disk and "step-000012" not in steps_on_disk
    assert not (killed / "model").exists()

    resumed = run_pretrain(cfg, tokens, tok, killed)
    assert _curve(killed) == _curve(tmp_path / "full")  # same losses at the same steps, bit for bit
    assert [s for s, _ in _curve(killed)[0]] == list(range(1, 13))
    assert resumed["val_loss"] == full["val_loss"] and resumed["val_bpb"] == full["val_bpb"]
    assert not [p for p in (killed / "checkpoints").iterdir() if p.name.startswith(".")]


def test_resuming_with_another_model_config_is_refused(tiny_packed, tmp_path):
    tokens, tok = tiny_packed
    run_dir = tmp_path / "run"
    run_pretrain(_recipe(), tokens, tok, run_dir)
    with pytest.raises(CheckpointError, match="n_embd"):
        run_pretrain(_recipe(n_embd=64), tokens, tok, run_dir)
