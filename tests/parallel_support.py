"""What the distributed-layout tests share: the tiny recipe, run_pretrain in N gloo processes, the
one-process reference run and the comparisons."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch

from danlu.model.config import ModelConfig
from danlu.parallel.config import ParallelConfig
from danlu.recipe import RecipeConfig
from danlu.train.config import TrainConfig
from danlu.train.pretrain import run_pretrain

TOL = 1e-4  # per-step train loss, fp32 on CPU (observed differences are about 1e-6)
TIMEOUT_S = 240


def tiny_recipe(steps: int = 6, **parallel) -> RecipeConfig:
    return RecipeConfig(
        model=ModelConfig(n_layer=2, n_embd=32, n_head=2, max_seq_len=32),
        train=TrainConfig(
            seq_len=32, batch_size=4, max_steps=steps, lr=3e-3, warmup_steps=2, schedule="constant",
            eval_every=3, eval_batches=2, ckpt_every=3, keep_last=10, log_every=1, device="cpu", seed=7,
        ),
        parallel=ParallelConfig(**parallel),
    )  # fmt: skip


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    try:
        run_pretrain(*args)
    except BaseException:
        Path(args[3], f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def spawn(world: int, cfg: RecipeConfig, tokens: Path, tok: Path, out: Path) -> None:
    """run_pretrain in `world` gloo processes; every process is ended and joined, whatever happens."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    port = _port()
    procs = [
        ctx.Process(target=_worker, args=(r, world, port, (cfg, tokens, tok, out))) for r in range(world)
    ]
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


def spawn_expect_error(world: int, cfg: RecipeConfig, tokens: Path, tok: Path, out: Path, text: str) -> None:
    with pytest.raises(AssertionError) as e:
        spawn(world, cfg, tokens, tok, out)
    assert "ConfigError" in str(e.value) and text in str(e.value)


def losses(run_dir: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def run_single(tiny_packed, tmp_path_factory) -> Path:
    """The one-process reference run: 20 steps of tiny_recipe."""
    tokens, tok = tiny_packed
    out = tmp_path_factory.mktemp("single")
    torch.set_num_threads(1)
    run_pretrain(tiny_recipe(steps=20), tokens, tok, out)
    return out


def assert_matches(run: Path, ref: Path, steps: range, tol: float = TOL) -> None:
    got, want = losses(run), losses(ref)
    assert sorted(got) == list(steps)
    for s in steps:
        assert abs(got[s] - want[s]) < tol, (s, got[s], want[s])


def assert_same_optimizer_state(run: Path, ref: Path, step: int) -> None:
    name = Path("checkpoints", f"step-{step:06d}", "optimizer.pt")
    got, want = (torch.load(d / name, weights_only=True) for d in (run, ref))
    assert got["state"].keys() == want["state"].keys()
    for i, st in want["state"].items():
        for k, v in st.items():
            torch.testing.assert_close(got["state"][i][k], v, atol=1e-6, rtol=1e-3)
