"""Pipeline parallelism on CPU with gloo: 20 steps of the tiny model through 2 pipeline stages (GPipe,
1F1B, interleaved 1F1B) give the single-process loss curve within 1e-4 (fp32), with tied embeddings,
gradient clipping over all stages and AdamW."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch

from danlu.data.loader import TokenDataset, TrainLoader
from danlu.errors import ConfigError
from danlu.model.config import ModelConfig
from danlu.model.transformer import build_model
from danlu.train.losses import IGNORE_INDEX, summed_lm_loss

TOL = 1e-4
TIMEOUT_S = 240
BATCH = 8


def _model(n_layer: int) -> torch.nn.Module:
    torch.manual_seed(11)
    return build_model(ModelConfig(n_layer=n_layer, n_embd=32, n_head=2, max_seq_len=32, vocab_size=320))


def _batches(tokens: Path, steps: int):
    loader = TrainLoader(TokenDataset(tokens, "train"), BATCH, 32, seed=5)
    return [loader.next_batch() for _ in range(steps)]


def _optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=3e-3, weight_decay=0.1)


def _single(tokens: Path, n_layer: int, steps: int) -> list[float]:
    model = _model(n_layer)
    opt = _optimizer(model.parameters())
    out = []
    for x, y in _batches(tokens, steps):
        loss = summed_lm_loss(model(x), y) / int((y != IGNORE_INDEX).sum())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(float(loss.detach()))
    return out


def _worker(rank: int, world: int, port: int, tokens: Path, out: Path, kw: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from danlu.parallel.pipeline import PipelineRunner

    try:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        steps, dp = kw.pop("steps"), kw.pop("dp", 1)
        mesh = init_device_mesh("cpu", (dp, world // dp), mesh_dim_names=("dp", "pp"))
        dp_group = mesh["dp"].get_group() if dp > 1 else None
        runner = PipelineRunner(_model(kw.pop("n_layer")), mesh["pp"].get_group(), dp_group=dp_group, **kw)
        opt = _optimizer(runner.parameters())
        losses = []
        rows = slice(None) if dp == 1 else _rows(mesh["dp"].get_local_rank(), dp)
        for x, y in _batches(tokens, steps):
            losses.append(runner.step(x[rows], y[rows]))
            runner.clip_grad_norm_(1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        (out / f"rank{rank}.json").write_text(json.dumps(losses))
        dist.destroy_process_group()
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def _rows(dp_rank: int, dp: int) -> slice:
    per = BATCH // dp
    return slice(dp_rank * per, (dp_rank + 1) * per)


def _spawn(world: int, tokens: Path, out: Path, **kw) -> list[list[float]]:
    ctx = mp.get_context("spawn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_worker, args=(r, world, port, tokens, out, dict(kw))) for r in range(world)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(TIMEOUT_S)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    errors = "".join(f.read_text() for f in sorted(out.glob("rank*.err")))
    assert all(p.exitcode == 0 for p in procs), errors[-3000:] or [p.exitcode for p in procs]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("schedule", "virtual", "n_layer", "steps"),
    [
        ("1f1b", 1, 2, 6),
        pytest.param("1f1b", 1, 2, 20, marks=SLOW),
        pytest.param("gpipe", 1, 2, 20, marks=SLOW),
        pytest.param("interleaved_1f1b", 2, 4, 20, marks=SLOW),
    ],
)
def test_pipeline_matches_single_process(tiny_packed, tmp_path, schedule, virtual, n_layer, steps):
    tokens, _ = tiny_packed
    torch.set_num_threads(1)
    want = _single(tokens, n_layer, steps)
    kw = {"n_layer": n_layer, "n_microbatches": 4, "schedule": schedule, "virtual": virtual, "steps": steps}
    got = _spawn(2, tokens, tmp_path, **kw)
    assert got[0] == got[1]  # every rank reports the batch loss
    for step, (g, w) in enumerate(zip(got[0], want, strict=True), 1):
        assert abs(g - w) < TOL, (step, g, w)
    assert want[-1] < want[0] - 0.2  # it trained


@pytest.mark.slow
def test_pipeline_2_x_data_parallel_2_matches_single_process(tiny_packed, tmp_path):
    """PP 2 x DP 2: each pipeline replica trains its half of every batch (2 micro-batches of 2 rows)."""
    tokens, _ = tiny_packed
    torch.set_num_threads(1)
    want = _single(tokens, 2, 20)
    kw = {"n_layer": 2, "n_microbatches": 2, "schedule": "1f1b", "steps": 20, "dp": 2}
    got = _spawn(4, tokens, tmp_path, **kw)
    assert all(g == got[0] for g in got)
    for step, (g, w) in enumerate(zip(got[0], want, strict=True), 1):
        assert abs(g - w) < TOL, (step, g, w)


def test_pipeline_checks_the_model():
    from danlu.parallel.pipeline import check_pp, stage_bounds

    cfg = ModelConfig(n_layer=3, n_embd=32, n_head=2, max_seq_len=32, vocab_size=320)
    with pytest.raises(ConfigError, match=r"parallel.pp=2: n_layer=3 must divide into 2 stages"):
        check_pp(cfg, 2, 1)
    assert [stage_bounds(4, 2, s) for s in range(2)] == [(0, 2), (2, 4)]


@pytest.mark.parametrize(("pp", "virtual", "tie"), [(2, 1, True), (3, 1, True), (2, 2, False)])
def test_each_pipeline_rank_allocates_only_its_stages(pp, virtual, tie):
    """build_stages: a rank's stages hold exactly the whole model's initial values, the rest of the
    model stays on meta (no memory), and the tied matrix is one parameter at both names."""
    from danlu.parallel.pipeline import build_stages, stage_bounds, stage_ids

    cfg = ModelConfig(
        n_layer=pp * virtual * 2, n_embd=32, n_head=2, max_seq_len=32, vocab_size=320, tie_embeddings=tie
    )
    torch.manual_seed(3)
    ref = build_model(cfg)
    whole = ref.state_dict()
    next_draw = torch.randn(4)  # the random stream after building the whole model
    held = 0
    for rank in range(pp):
        torch.manual_seed(3)
        model = build_stages(cfg, pp, rank, virtual, torch.device("cpu"))
        assert torch.equal(torch.randn(4), next_draw)  # the stream advanced as for the whole model
        ids = stage_ids(pp, rank, virtual)
        blocks = {i for s in ids for i in range(*stage_bounds(cfg.n_layer, pp * virtual, s))}
        first, last = 0 in ids, pp * virtual - 1 in ids
        mine = {"embed": first or (tie and last), "lm_head": last or (tie and first), "norm": last}
        for name, p in model.named_parameters(remove_duplicate=False):
            top = name.split(".")[0]
            allocated = int(name.split(".")[1]) in blocks if top == "blocks" else mine[top]
            assert p.is_meta != allocated, (rank, name)
            if allocated:
                assert torch.equal(p, whole[name]), (rank, name)
        assert (model.embed.weight is model.lm_head.weight) == tie
        assert torch.equal(model.rope_cos, ref.rope_cos)  # the position tables are every rank's
        held += sum(p.numel() for p in model.parameters() if not p.is_meta)
    total = sum(p.numel() for p in ref.parameters())  # the tied matrix once
    assert held == total + (cfg.vocab_size * cfg.n_embd if tie else 0)  # both ends hold the tied one
