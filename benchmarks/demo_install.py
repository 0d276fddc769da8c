"""`make demo` of two revisions, each in a fresh clone, one after the other: venv size, install time,
time to the samples, and whether the training losses, evaluations and weights are identical.

    python benchmarks/demo_install.py OLD_REV [NEW_REV]      (NEW_REV defaults to HEAD)

Install time runs from the start of `make demo` to the data stage's first log line. Both sides use the
same pip wheel cache and danlu data cache, so the comparison is of the code, not of the network.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import torch
from safetensors.torch import load_file

from _machine import machine_markdown

REPO = Path(__file__).resolve().parents[1]


def _du(path: Path) -> str:
    return subprocess.run(["du", "-sh", str(path)], capture_output=True, text=True).stdout.split()[0]


def run_demo(rev: str, where: Path) -> dict:
    shutil.rmtree(where, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(where)], check=True)
    subprocess.run(["git", "checkout", "-q", rev], cwd=where, check=True)
    start = time.time()
    out = subprocess.run(["make", "demo"], cwd=where, capture_output=True, text=True)
    total = time.time() - start
    if out.returncode != 0:
        raise SystemExit(f"make demo at {rev} failed:\n{out.stderr[-2000:]}")
    log = out.stdout + out.stderr
    first = re.search(r"(\d\d:\d\d:\d\d) I danlu\.run: stage data", log)
    assert first, "no stage log line in make demo's output"
    day = datetime.fromtimestamp(start)
    first_t = datetime.combine(day.date(), datetime.strptime(first.group(1), "%H:%M:%S").time())
    run = where / "runs" / "tiny-cpu"
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "venv": _du(where / ".venv"),
        "install_s": (first_t - day.replace(microsecond=0)).total_seconds(),
        "total_s": total,
        "stages": dict(re.findall(r"stage (\w+)\s+done in ([\d.]+)s", log)),
        "losses": [(r["step"], r["loss"]) for r in recs if "loss" in r and "event" not in r],
        "evals": [(r["step"], r["val_loss"], r["val_bpb"]) for r in recs if "val_loss" in r],
        # tensors, not bytes: safetensors writes its header's metadata keys in no fixed order
        "weights": load_file(run / "model" / "model.safetensors"),
    }


def _same(x: dict, y: dict) -> bool:
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _stages(side: dict) -> str:
    return " / ".join(side["stages"].get(k, "?") for k in ("data", "tokenizer", "pack", "pretrain"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new", nargs="?", default="HEAD")
    ap.add_argument("--workdir", default="/tmp/danlu-demo-compare")
    args = ap.parse_args()
    sides = {
        rev: run_demo(rev, Path(args.workdir) / name) for name, rev in (("old", args.old), ("new", args.new))
    }
    a, b = sides[args.old], sides[args.new]
    first = ", ".join(repr(loss) for _, loss in a["losses"][:5])
    print(f"| measure | {args.old} | {args.new} |\n|---|---|---|")
    print(f"| `.venv` size | {a['venv']} | {b['venv']} |")
    print(f"| install (to the first stage) | {a['install_s']:.0f} s | {b['install_s']:.0f} s |")
    print(f"| whole `make demo`, to the samples | {a['total_s']:.0f} s | {b['total_s']:.0f} s |")
    print(f"| stage seconds: data / tokenizer / pack / pretrain | {_stages(a)} | {_stages(b)} |")
    print(
        f"| first 5 logged losses | {first} | {'identical' if a['losses'][:5] == b['losses'][:5] else 'DIFFERENT'} |"
    )
    print(f"| evaluations (step, val loss, val bpb) | {a['evals']} | {b['evals']} |")
    print(
        f"\nall {len(a['losses'])} logged losses identical: {a['losses'] == b['losses']}; "
        f"evaluations identical: {a['evals'] == b['evals']}; weights identical: {_same(a['weights'], b['weights'])}"
    )
    print(machine_markdown())


if __name__ == "__main__":
    main()
