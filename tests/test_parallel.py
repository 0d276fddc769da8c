"""Distributed layouts on CPU with gloo: each matches the single-process loss curve (fp32, tolerance
below), a checkpoint saved under one layout resumes under another, the layout is checked against the
world size, and each data-parallel rank reads its own rows of the same global batches."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from danlu.data.loader import TokenDataset, TrainLoader
from danlu.errors import ConfigError, DataError
from danlu.model.config import ModelConfig
from danlu.parallel.config import ParallelConfig
from danlu.parallel.launch import check_layout, without_nproc
from danlu.parallel.mesh import LayoutError, ParallelDims
from danlu.train.pretrain import run_pretrain
from parallel_support import (
    TOL,
    assert_matches,
    assert_same_optimizer_state,
    losses,
    run_single,
    spawn,
    spawn_expect_error,
    tiny_recipe,
    weights,
)

SLOW = pytest.mark.slow


@pytest.fixture(scope="module")
def single(tiny_packed, tmp_path_factory) -> Path:
    return run_single(tiny_packed, tmp_path_factory)


@pytest.mark.parametrize(
    ("world", "steps", "layout"),
    [
        (2, 6, {}),  # DDP 2
        (2, 6, {"dp_shard": 2}),  # FSDP 2, ZeRO-3 behaviour
        (2, 6, {"dp_shard": 2, "reshard_after_forward": False}),  # FSDP 2, ZeRO-2 behaviour
        # the acceptance matrix: 20 steps of each data-parallel layout in each ZeRO mode
        pytest.param(2, 20, {}, marks=SLOW),
        pytest.param(2, 20, {"zero": 1}, marks=SLOW),  # ZeRO-1: DDP, optimizer state sharded
        pytest.param(2, 20, {"dp_shard": 2, "zero": 2}, marks=SLOW),
        pytest.param(2, 20, {"dp_shard": 2, "zero": 3}, marks=SLOW),
        pytest.param(4, 20, {"zero": 1}, marks=SLOW),
        pytest.param(4, 20, {"dp_shard": 4}, marks=SLOW),  # FSDP 4, ZeRO-3 (the default)
        pytest.param(4, 20, {"dp_shard": 4, "reshard_after_forward": False}, marks=SLOW),  # ZeRO-2
        pytest.param(4, 20, {"dp_replicate": 2, "dp_shard": 2}, marks=SLOW),  # HSDP 2 x 2
        (2, 6, {"tp": 2, "sequence_parallel": True}),  # tensor + sequence parallel 2
        pytest.param(2, 20, {"tp": 2}, marks=SLOW),  # tensor parallel 2
        pytest.param(2, 20, {"tp": 2, "sequence_parallel": True}, marks=SLOW),
        pytest.param(4, 20, {"dp_shard": 2, "tp": 2}, marks=SLOW),  # FSDP 2 x TP 2 on a 2-D mesh
        (2, 6, {"zero": 1}),  # DDP 2 with the optimizer state sharded (ZeRO-1)
        (2, 6, {"pp": 2}),  # pipeline 2, 1F1B, driven by the Trainer
        pytest.param(2, 20, {"pp": 2}, marks=SLOW),
        pytest.param(2, 20, {"pp": 2, "pp_schedule": "gpipe", "pp_microbatches": 4}, marks=SLOW),
        pytest.param(4, 20, {"pp": 2}, marks=SLOW),  # PP 2 x DP 2
    ],
    ids=[
        "ddp2",
        "fsdp2-zero3",
        "fsdp2-zero2",
        "ddp2-20",
        "ddp2-zero1-20",
        "fsdp2-zero2-20",
        "fsdp2-zero3-20",
        "ddp4-zero1-20",
        "fsdp4",
        "fsdp4-zero2",
        "hsdp2x2",
        "tp2-sp-6",
        "tp2",
        "tp2-sp",
        "fsdp2xtp2",
        "ddp2-zero1",
        "pp2-1f1b-6",
        "pp2-1f1b",
        "pp2-gpipe",
        "pp2xdp2",
    ],
)
def test_layout_matches_single_process(tiny_packed, single, tmp_path, world, steps, layout):
    tokens, tok = tiny_packed
    spawn(world, tiny_recipe(steps=steps, **layout), tokens, tok, tmp_path)
    assert_matches(tmp_path, single, range(1, steps + 1))
    # the model dir exported by rank 0 holds full (unsharded) weights in the single-process format
    ref = weights(single / "checkpoints" / f"step-{steps:06d}")
    got = weights(tmp_path / "model")
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-4)
    # every rank's peak memory and own tokens/s (each over its own clock, so they need not add up)
    for rec in (json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()):
        if "loss" in rec:
            assert len(rec["mem_gib_by_rank"]) == world and min(rec["mem_gib_by_rank"]) > 0
            assert len(rec["tokens_per_s_by_rank"]) == world and min(rec["tokens_per_s_by_rank"]) > 0
    if layout.get("pp", 1) > 1 or layout.get("zero") == 1:  # merged/consolidated: one-process form
        assert_same_optimizer_state(tmp_path, single, steps)


def test_fsdp_checkpoint_resumes_under_ddp_and_one_process(tiny_packed, single, tmp_path):
    """Save under FSDP 2 at step 6; resume to 12 under DDP 2, and again from 6 in one process."""
    tokens, tok = tiny_packed
    spawn(2, tiny_recipe(steps=6, dp_shard=2), tokens, tok, tmp_path / "a")
    step6 = Path("checkpoints", "step-000006")
    shutil.copytree(tmp_path / "a" / step6, tmp_path / "b" / step6)
    spawn(2, tiny_recipe(steps=12), tokens, tok, tmp_path / "a")
    assert_matches(tmp_path / "a", single, range(1, 13))
    run_pretrain(tiny_recipe(steps=12), tokens, tok, tmp_path / "b")
    got, want = losses(tmp_path / "b"), losses(single)
    for s in range(7, 13):
        assert abs(got[s] - want[s]) < TOL, (s, got[s], want[s])


@pytest.mark.slow
def test_interleaved_pipeline_matches_single_process(tiny_packed, tmp_path):
    """Interleaved 1F1B: 4 blocks in 4 stages, 2 per rank, against one process with the same model."""
    tokens, tok = tiny_packed
    deep = dataclasses.replace(
        tiny_recipe(steps=20), model=ModelConfig(n_layer=4, n_embd=32, n_head=2, max_seq_len=32)
    )
    torch.set_num_threads(1)
    run_pretrain(deep, tokens, tok, tmp_path / "one")
    layout = ParallelConfig(pp=2, pp_schedule="interleaved_1f1b", pp_virtual=2, pp_microbatches=4)
    spawn(2, dataclasses.replace(deep, parallel=layout), tokens, tok, tmp_path / "pp")
    assert_matches(tmp_path / "pp", tmp_path / "one", range(1, 21))
    assert_same_optimizer_state(tmp_path / "pp", tmp_path / "one", 20)


@pytest.mark.slow
def test_pipeline_checkpoint_resumes_in_one_process_and_under_fsdp(tiny_packed, single, tmp_path):
    """Save under PP 2 at step 6 (the stages merged); resume in one process to 9, then under FSDP 2."""
    tokens, tok = tiny_packed
    spawn(2, tiny_recipe(steps=6, pp=2), tokens, tok, tmp_path)
    run_pretrain(tiny_recipe(steps=9), tokens, tok, tmp_path)
    spawn(2, tiny_recipe(steps=12, dp_shard=2), tokens, tok, tmp_path)
    assert_matches(tmp_path, single, range(1, 13))


@pytest.mark.slow
def test_tp_checkpoint_resumes_in_one_process(tiny_packed, single, tmp_path):
    """Save under TP 2 + SP at step 6 (fused rows back in the model's order); one process resumes."""
    tokens, tok = tiny_packed
    spawn(2, tiny_recipe(steps=6, tp=2, sequence_parallel=True), tokens, tok, tmp_path)
    run_pretrain(tiny_recipe(steps=12), tokens, tok, tmp_path)
    assert_matches(tmp_path, single, range(1, 13))


@pytest.mark.slow
def test_fsdp4_checkpoint_resumes_under_fsdp2_x_tp2(tiny_packed, single, tmp_path):
    tokens, tok = tiny_packed
    spawn(4, tiny_recipe(steps=6, dp_shard=4), tokens, tok, tmp_path)
    spawn(4, tiny_recipe(steps=12, dp_replicate=1, dp_shard=2, tp=2), tokens, tok, tmp_path)
    assert_matches(tmp_path, single, range(1, 13))


def test_layout_checked_against_world_size():
    assert ParallelDims.resolve(ParallelConfig(), 4) == ParallelDims(4, 1, 4)
    assert ParallelDims.resolve(ParallelConfig(dp_replicate=2, dp_shard=-1), 4) == ParallelDims(2, 2, 4)
    assert ParallelDims.resolve(ParallelConfig(dp_shard=2), 4).kind == "hsdp"
    with pytest.raises(LayoutError, match=r"= 3 processes, but 4 were launched"):
        ParallelDims.resolve(ParallelConfig(dp_replicate=1, dp_shard=3), 4)
    with pytest.raises(LayoutError, match="does not divide 4"):
        check_layout(ParallelConfig(dp_shard=3), 4)
    with pytest.raises(ConfigError, match="only one dimension may be -1"):
        ParallelConfig(dp_shard=-1)
    with pytest.raises(ConfigError, match=r"parallel.pp: pp=2 combines with dp_replicate only"):
        ParallelConfig(pp=2, dp_shard=2)
    assert ParallelDims.resolve(ParallelConfig(pp=2), 4) == ParallelDims(2, 1, 4, 1, 2)
    assert ParallelDims.resolve(ParallelConfig(pp=2), 4).kind == "pp+ddp"
    with pytest.raises(ConfigError, match=r"parallel.pp_virtual: 1f1b runs one stage per rank"):
        ParallelConfig(pp=2, pp_virtual=2)
    with pytest.raises(ConfigError, match=r"parallel.zero: zero=1 shards the optimizer state"):
        ParallelConfig(zero=1, dp_shard=2)
    with pytest.raises(ConfigError, match=r"parallel.zero: zero=3 shards with FSDP: set parallel.dp_shard"):
        ParallelConfig(zero=3)
    assert not ParallelConfig(zero=2, dp_shard=2).reshard_after_forward
    assert ParallelDims.resolve(ParallelConfig(dp_replicate=1, dp_shard=-1, tp=2), 4) == ParallelDims(
        1, 2, 4, 2
    )
    with pytest.raises(LayoutError, match="does not divide 4"):
        ParallelDims.resolve(ParallelConfig(tp=3), 4)
    assert without_nproc(["pretrain", "--nproc", "2", "r.yaml", "--nproc=4", "--x=1"]) == [
        "pretrain",
        "r.yaml",
        "--x=1",
    ]


def test_tensor_parallel_checks_the_model():
    from danlu.model.transformer import build_model
    from danlu.parallel.tensor import check_linears, check_tp, tp_order

    cfg = ModelConfig(n_layer=2, n_embd=48, n_head=3, max_seq_len=32, vocab_size=320)
    with pytest.raises(ConfigError, match=r"parallel.tp=2: n_head=3 and n_kv_head=3 must divide by tp=2"):
        check_tp(cfg, 2)
    with pytest.raises(ConfigError, match="MoE layers are not tensor-parallel"):
        check_tp(dataclasses.replace(cfg, n_head=4, n_experts=4), 2)
    model = build_model(dataclasses.replace(cfg, n_head=4))
    check_linears(model)
    model.blocks[1].mlp.down = torch.nn.Sequential(model.blocks[1].mlp.down)
    with pytest.raises(ConfigError, match=r"blocks.1.mlp.down is a Sequential, not a Linear"):
        check_linears(model)
    # q (4 rows), k and v (2 rows each) in TP order: rank 0's slice of each part, then rank 1's
    assert tp_order([4, 2, 2], 2).tolist() == [0, 1, 4, 6, 2, 3, 5, 7]


def test_cpu_offload_on_cpu_is_a_clear_error(tiny_packed, tmp_path):
    # FSDP2's CPU offload pins host memory for an accelerator; not measured here (no GPU lent)
    tokens, tok = tiny_packed
    spawn_expect_error(
        2,
        tiny_recipe(dp_shard=2, cpu_offload=True),
        tokens,
        tok,
        tmp_path,
        "needs parallel.dp_shard > 1 on GPUs",
    )


def test_single_process_refuses_a_sharded_layout(tiny_packed, tmp_path):
    tokens, tok = tiny_packed
    with pytest.raises(LayoutError, match="launch 2"):
        run_pretrain(tiny_recipe(dp_replicate=1, dp_shard=2), tokens, tok, tmp_path)


def test_ranks_read_their_rows_of_the_same_global_batches(tiny_packed):
    tokens, _ = tiny_packed
    ds = TokenDataset(tokens, "train")
    one = TrainLoader(ds, 4, 32, seed=3)
    ranks = [TrainLoader(ds, 4, 32, seed=3, rank=r, world=2) for r in range(2)]
    n = 3 * one.n_windows // 4 + 5  # crosses an epoch boundary
    for _ in range(n):
        x, y = one.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
    assert all(loader.state_dict() == one.state_dict() for loader in ranks)
    resumed = TrainLoader(ds, 4, 32, seed=3, rank=1, world=2)
    resumed.load_state_dict(one.state_dict())  # a one-process position resumes on rank 1 of 2
    assert torch.equal(resumed.next_batch()[0], one.next_batch()[0][2:])
    with pytest.raises(DataError, match="must divide evenly over 3"):
        TrainLoader(ds, 4, 32, seed=3, rank=0, world=3)


def test_recipe_parallel_section_loads():
    from danlu.recipe import load_recipe

    cfg = load_recipe(None, ["--parallel.dp_shard=2", "--parallel.reshard_after_forward=false"])
    assert dataclasses.asdict(cfg.parallel)["dp_shard"] == 2 and not cfg.parallel.reshard_after_forward
