"""Checkpoint I/O, RNG round trips, config checks, pruning, and the metrics file."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from danlu.errors import CheckpointCorrupt, CheckpointError
from danlu.model.config import ModelConfig
from danlu.model_dir import load_weights
from danlu.recipe import RecipeConfig
from danlu.train.checkpoint import (
    best_checkpoint_step,
    check_compatible,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    mark_best,
    prune_checkpoints,
    remove_stale_temps,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from danlu.train.config import TrainConfig
from danlu.train.losses import cross_entropy
from danlu.train.metrics import MetricsLogger, plot_metrics, read_metrics
from danlu.train.optim import build_optimizer
from test_train_parts import Toy

CFG = ModelConfig(n_layer=1, n_embd=8, n_head=2, vocab_size=11, max_seq_len=16)
FP = "tok-fingerprint"


def _train(model: Toy, opt: torch.optim.Optimizer, steps: int, seed: int) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, 11, (3, 7), generator=g)
        loss = cross_entropy(model(idx[:, :-1]), idx[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def _save(tmp_path, step: int, model: Toy, opt, cfg: ModelConfig = CFG, fp: str = FP):
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir(exist_ok=True)
    (tok_dir / "tokenizer.json").write_text("{}")
    state = {"loader": {"pos": np.int64(5), "perm": np.arange(3)}, "tokens": 42, "tokenizer_fingerprint": fp}
    return save_checkpoint(tmp_path / "run", step, model, opt, cfg, RecipeConfig(), state, tok_dir)


def test_checkpoint_round_trip_continues_identically(tmp_path):
    torch.manual_seed(0)
    model = Toy()
    opt = build_optimizer(model, TrainConfig(lr=1e-2))
    _train(model, opt, 3, seed=1)
    path = _save(tmp_path, 3, model, opt)
    assert sorted(p.name for p in path.iterdir()) == [
        "checksums.json",
        "config.json",
        "model.safetensors",
        "optimizer.pt",
        "tokenizer",
        "trainer_state.json",
    ]
    config = json.loads((path / "config.json").read_text())
    assert config["n_embd"] == 8 and config["recipe"]["name"] == "tiny-cpu"
    expected = _train(model, opt, 4, seed=2)

    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    fresh = Toy()
    fresh_opt = build_optimizer(fresh, TrainConfig(lr=1e-2))
    state = load_checkpoint(path, fresh, fresh_opt, CFG, FP)
    assert state["step"] == 3 and state["tokens"] == 42 and state["loader"] == {"pos": 5, "perm": [0, 1, 2]}
    assert fresh.lm_head.weight is fresh.embed.weight  # loading keeps the tie
    assert _train(fresh, fresh_opt, 4, seed=2) == expected  # bitwise


def test_rng_states_round_trip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = json.loads(json.dumps(rng_state()))  # must survive JSON
    a = (random.random(), np.random.rand(), torch.rand(2).tolist())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(2).tolist()) == a


def test_mismatched_model_config_or_tokenizer_is_refused(tmp_path):
    model = Toy()
    path = _save(tmp_path, 1, model, build_optimizer(model, TrainConfig(lr=1e-3)))
    other = ModelConfig(n_layer=2, n_embd=8, n_head=2, vocab_size=11, max_seq_len=32)
    with pytest.raises(CheckpointError) as e:
        check_compatible(path, other, FP)
    msg = str(e.value)
    assert "model.n_layer: checkpoint 1, config 2" in msg and "model.max_seq_len" in msg
    assert "n_embd" not in msg and "new run_dir" in msg
    with pytest.raises(CheckpointError, match="tokenizer fingerprint"):
        check_compatible(path, CFG, "another")


def test_truncated_or_missing_files_raise_checkpoint_error(tmp_path):
    model = Toy()
    opt = build_optimizer(model, TrainConfig(lr=1e-3))
    path = _save(tmp_path, 1, model, opt)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointCorrupt, match=r"fails its checksums \(model\.safetensors"):
        load_checkpoint(path, Toy(), build_optimizer(Toy(), TrainConfig(lr=1e-3)), CFG, FP)
    weights.write_bytes(data)
    (path / "optimizer.pt").write_bytes((path / "optimizer.pt").read_bytes()[:100])
    with pytest.raises(CheckpointCorrupt, match=r"optimizer\.pt changed or truncated"):
        load_checkpoint(path, Toy(), build_optimizer(Toy(), TrainConfig(lr=1e-3)), CFG, FP)
    # behind the checksums, the readers still refuse damaged files on their own
    weights.write_bytes(b"garbage")
    with pytest.raises(CheckpointCorrupt, match=r"model\.safetensors is corrupt, truncated"):
        load_weights(Toy(), path)
    (path / "trainer_state.json").unlink()
    with pytest.raises(CheckpointCorrupt, match=r"missing trainer_state\.json"):
        load_checkpoint(path, Toy(), build_optimizer(Toy(), TrainConfig(lr=1e-3)), CFG, FP)
    with pytest.raises(CheckpointError, match="does not fit"):  # wrong shapes
        path2 = _save(tmp_path, 2, model, opt)
        load_checkpoint(path2, Toy(d=4), build_optimizer(Toy(d=4), TrainConfig(lr=1e-3)), CFG, FP)


def test_pruning_keeps_the_best_checkpoint(tmp_path):
    model = Toy()
    opt = build_optimizer(model, TrainConfig(lr=1e-3))
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, model, opt)
    mark_best(tmp_path / "run", 2, 1.5)
    prune_checkpoints(tmp_path / "run", keep_last=1)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2, 4]
    assert best_checkpoint_step(tmp_path / "run") == 2


def test_failed_save_leaves_nothing_and_pruning_keeps_newest(tmp_path):
    model = Toy()
    opt = build_optimizer(model, TrainConfig(lr=1e-3))
    with pytest.raises(FileNotFoundError):  # tokenizer dir missing: the write fails part way
        save_checkpoint(tmp_path / "run", 7, model, opt, CFG, RecipeConfig(), {}, tmp_path / "nope")
    assert list_checkpoints(tmp_path / "run") == []
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []
    for step in (5, 10, 15, 20):
        _save(tmp_path, step, model, opt)
    prune_checkpoints(tmp_path / "run", keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [15, 20]
    assert latest_checkpoint(tmp_path / "run") == checkpoint_dir(tmp_path / "run", 20)
    stale = tmp_path / "run" / "checkpoints" / ".step-000025.abc.tmp"
    stale.mkdir()
    remove_stale_temps(tmp_path / "run")
    assert not stale.exists() and latest_checkpoint(tmp_path / "run").name == "step-000020"


def test_metrics_logger_drops_records_after_resume_step_and_cut_lines(tmp_path):
    with MetricsLogger(tmp_path) as m:
        for step in range(1, 6):
            m.log({"step": step, "loss": 1.0 / step})
        m.log({"step": 4, "val_loss": 0.3, "val_bpb": 1.1})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # a line cut short by a kill
    with MetricsLogger(tmp_path, resume_step=4) as m:
        m.log({"step": 5, "loss": 0.5})
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], "loss" in r) for r in recs] == [
        (1, True),
        (2, True),
        (3, True),
        (4, True),
        (4, False),
        (5, True),
    ]
    assert recs[-1]["loss"] == 0.5
    with MetricsLogger(tmp_path, resume_step=0):
        pass
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_plot_metrics_writes_png(tmp_path):
    with MetricsLogger(tmp_path) as m:
        for step in range(1, 20):
            m.log({"step": step, "loss": 5.0 / step})
            if step % 5 == 0:
                m.log({"step": step, "val_loss": 6.0 / step, "val_bpb": 2.0})
    plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "metrics.jsonl"]
