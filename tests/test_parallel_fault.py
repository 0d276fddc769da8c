"""A rank of `danlu pretrain --nproc 2` killed with SIGKILL mid-run: the job exits (torchrun stops the
other rank; a rank left alone would fail its next collective after parallel.timeout_s) well within
the configured timeout, every checkpoint left behind verifies, and a rerun resumes from the last one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from danlu.cli import main
from danlu.train.checkpoint import list_checkpoints, verify_checksums

TIMEOUT_S = 60  # parallel.timeout_s of the run
ARGS = [
    "--model.n_layer=2", "--model.n_embd=32", "--model.n_head=2", "--model.max_seq_len=32",
    "--train.seq_len=32", "--train.batch_size=4", "--train.eval_every=100000", "--train.log_every=1",
    "--train.device=cpu", "--train.lr=3e-3", "--train.ckpt_every=2", "--train.keep_last=3",
]  # fmt: skip


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


def _rank_pid(root: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=rank under root."""
    for pid in _descendants(root):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
            return pid
    return None


@pytest.mark.slow
def test_sigkilled_rank_ends_the_job_and_the_rerun_resumes(tiny_packed, tmp_path):
    tokens, tok = tiny_packed
    run = tmp_path / "run"
    shutil.copytree(tokens, run / "tokens")
    shutil.copytree(tok, run / "tokenizer")
    cmd = [sys.executable, "-m", "danlu.cli", "pretrain", "--nproc", "2", f"--run_dir={run}"]
    cmd += [*ARGS, "--train.max_steps=100000", "--parallel.dp_shard=2", f"--parallel.timeout_s={TIMEOUT_S}"]
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while len(list_checkpoints(run)) < 2 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        victim = _rank_pid(job.pid, 0)  # rank 0 is the one that writes the checkpoints
        assert victim is not None and job.poll() is None, "the job ended before a rank could be killed"
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        _, err = job.communicate(timeout=TIMEOUT_S + 30)
        elapsed = time.monotonic() - killed
    finally:
        if job.poll() is None:
            for pid in _descendants(job.pid):
                os.kill(pid, signal.SIGKILL)
            job.kill()
            job.wait()
    assert job.returncode != 0, err[-2000:]
    assert elapsed < TIMEOUT_S, elapsed
    assert not _descendants(job.pid)
    saved = list_checkpoints(run)
    assert saved
    for _, path in saved:  # nothing half-written looks complete
        verify_checksums(path)
    last = saved[-1][0]
    # a rerun (here in one process, any layout resumes any other) continues from the last checkpoint
    assert main(["pretrain", f"--run_dir={run}", *ARGS, f"--train.max_steps={last + 2}"]) == 0
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if "loss" in r]
    assert steps == list(range(1, last + 3)), steps
    state = json.loads((run / "checkpoints" / f"step-{last + 2:06d}" / "trainer_state.json").read_text())
    assert state["step"] == last + 2
