"""The data pipeline on a Ray cluster of two nodes (a head and a worker, each its own `ray start`
process), driven by `danlu data --data.ray_address`, writes the same bytes as the local executor.

Loopback addresses only: Ray rewrites 127.0.0.1 to the machine's outward address, so the head is
127.0.0.2 and the worker 127.0.0.3 (both on `lo`). A fresh random auth token guards the cluster; Ray's
session files go to a temp dir; teardown kills exactly the process groups this test started (never
`ray stop`, which would stop every Ray on the machine). Ray takes 20-60 s to start here: slow test.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

HEAD, WORKER = "127.0.0.2", "127.0.0.3"
WORDS = ["the", "king", "and", "queen", "of", "a", "river", "town", "went", "to", "see", "that", "lord"]
SPECS = [
    {"block": "normalize"},
    {"block": "min_chars", "min_chars": 20},
    {"block": "exact_dedup"},
    {"block": "minhash_dedup", "threshold": 0.8},
    {"block": "substring_dedup", "min_length": 100},
    {"block": "pii"},
]
NODES = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    nodes = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
    if len(nodes) == 2:
        break
    time.sleep(0.5)
print(json.dumps(nodes))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HEAD, 0))
        return s.getsockname()[1]


def _recipe(root: Path) -> Path:
    rows = []
    for i in range(80):
        text = " ".join(WORDS[(i * 7 + j * (i % 5 + 1)) % len(WORDS)] for j in range(80)) + "."
        rows.append({"text": "tiny" if i % 9 == 0 else text.upper() if i % 11 == 0 else text})
    (root / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"name": "ray2", "data": {"sources": [str(root / "c.jsonl")], "pipeline": SPECS, "shard_docs": 9}}
    (root / "r.yaml").write_text(yaml.safe_dump(cfg))
    return root / "r.yaml"


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    for p in reversed(procs):
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(45)
        with contextlib.suppress(ProcessLookupError):  # what is left of the group (workers, agents) goes too
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def test_two_node_ray_cluster_output_is_byte_identical_to_local(tmp_path):
    pytest.importorskip("ray")
    bindir = Path(sys.executable).parent
    recipe = _recipe(tmp_path)
    port = _free_port()
    # a short path: Ray's unix sockets live under it (108-character limit)
    ray_tmp = Path(tempfile.mkdtemp(prefix="dr-", dir="/tmp"))
    env = dict(
        os.environ,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
    )
    common = ["--block", "--num-cpus=1", "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> None:
        log = open(ray_tmp / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        procs.append(
            subprocess.Popen(
                [str(bindir / "ray"), "start", *args, *common],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: teardown kills exactly it
            )
        )

    try:
        head = ["--head", f"--node-ip-address={HEAD}", f"--port={port}", f"--temp-dir={ray_tmp}"]
        start("head", [*head, "--include-dashboard=false"])
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in (ray_tmp / "head.log").read_text():
            assert procs[0].poll() is None and time.monotonic() < deadline, (ray_tmp / "head.log").read_text()
            time.sleep(0.5)
        start("worker", [f"--address={HEAD}:{port}", f"--node-ip-address={WORKER}"])
        nodes = subprocess.run(
            [sys.executable, "-c", NODES, f"{HEAD}:{port}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert json.loads(nodes.stdout.strip().splitlines()[-1]) == [HEAD, WORKER], nodes.stderr[-2000:]

        danlu = str(bindir / "danlu")
        for name, over in [
            ("local", ["--data.executor=local", "--data.workers=2"]),
            ("ray", ["--data.executor=ray", f"--data.ray_address={HEAD}:{port}"]),
        ]:
            run = subprocess.run(
                [danlu, "data", str(recipe), f"--run_dir={tmp_path / name}", *over],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert run.returncode == 0, run.stderr[-3000:]
    finally:
        _stop(procs)
        shutil.rmtree(ray_tmp, ignore_errors=True)  # the session files this test's cluster wrote
    for split in ("train", "val"):
        local = (tmp_path / "local" / "data" / f"{split}.parquet").read_bytes()
        assert local == (tmp_path / "ray" / "data" / f"{split}.parquet").read_bytes()
    manifests = [json.loads((tmp_path / n / "data" / "manifest.json").read_text()) for n in ("local", "ray")]
    assert manifests[0]["blocks"] == manifests[1]["blocks"]
    assert manifests[0]["blocks"]["minhash_dedup"]["documents_out"] >= 5
