"""Sharded checkpoints (parallel.checkpoint=dcp, torch.distributed.checkpoint): every rank writes its own
shard file, a checksum covers each, another sharded layout resumes them (resharding) and the loss curve
continues as in one process; a damaged shard is caught; a one-process model dir is exported from one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from danlu.parallel.dcp import export_dcp_model_dir
from parallel_support import TOL, assert_matches, losses, run_single, spawn, tiny_recipe, weights

STEP6 = Path("checkpoints", "step-000006")


@pytest.fixture(scope="module")
def single(tiny_packed, tmp_path_factory) -> Path:
    return run_single(tiny_packed, tmp_path_factory)


def _shards(step_dir: Path) -> list[str]:
    return sorted(p.name for p in (step_dir / "dcp").glob("*.distcp"))


def test_fsdp2_dcp_checkpoint_resumes_under_tp2(tiny_packed, single, tmp_path):
    """Save under FSDP 2 (steps 3 and 6), damage step 6's shard of rank 1: TP 2 moves it aside,
    resumes from step 3 and continues the one-process curve to step 9."""
    tokens, tok = tiny_packed
    spawn(2, tiny_recipe(steps=6, dp_shard=2, checkpoint="dcp"), tokens, tok, tmp_path)
    step6 = tmp_path / STEP6
    assert _shards(step6) == ["__0_0.distcp", "__1_0.distcp"]  # one file per rank
    assert not (step6 / "model.safetensors").exists()
    sums = json.loads((step6 / "checksums.json").read_text())
    assert {"dcp/__0_0.distcp", "dcp/__1_0.distcp", "dcp/.metadata", "trainer_state.json"} <= sums.keys()
    # a one-process model dir from the sharded checkpoint holds the one-process run's weights
    exported = export_dcp_model_dir(step6, tmp_path / "exported")
    ref = weights(single / STEP6)
    got = weights(exported)
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-4)

    shard = step6 / "dcp" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    spawn(2, tiny_recipe(steps=9, tp=2, checkpoint="dcp"), tokens, tok, tmp_path)
    assert (tmp_path / "checkpoints" / "corrupt-step-000006").is_dir()
    assert_matches(tmp_path, single, range(1, 10))


@pytest.mark.slow
def test_fsdp4_dcp_checkpoint_resumes_under_fsdp2_x_tp2(tiny_packed, single, tmp_path):
    """Save under FSDP 4, resume under FSDP 2 x TP 2 (TP 2 x DP 2) with sequence parallelism."""
    tokens, tok = tiny_packed
    spawn(4, tiny_recipe(steps=6, dp_shard=4, checkpoint="dcp"), tokens, tok, tmp_path)
    assert len(_shards(tmp_path / STEP6)) == 4
    layout = {"dp_replicate": 1, "dp_shard": 2, "tp": 2, "sequence_parallel": True, "checkpoint": "dcp"}
    spawn(4, tiny_recipe(steps=12, **layout), tokens, tok, tmp_path)
    assert_matches(tmp_path, single, range(1, 13))


@pytest.mark.slow
def test_tp2_dcp_checkpoint_resumes_under_hsdp(tiny_packed, single, tmp_path):
    """Save under TP 2 (fused rows in TP order on the ranks, the model's order in the files), resume
    under HSDP 2 x 2."""
    tokens, tok = tiny_packed
    spawn(2, tiny_recipe(steps=6, tp=2, checkpoint="dcp"), tokens, tok, tmp_path)
    spawn(4, tiny_recipe(steps=12, dp_replicate=2, dp_shard=2, checkpoint="dcp"), tokens, tok, tmp_path)
    got, want = losses(tmp_path), losses(single)
    for s in range(1, 13):
        assert abs(got[s] - want[s]) < TOL, (s, got[s], want[s])
