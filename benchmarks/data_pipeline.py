"""Data pipeline throughput and memory: the default pipeline and a full one, on synthetic corpora.

The corpus is the Shakespeare plays (cut into ~3 KB passages) and the chitchat conversations, repeated
with seeded perturbations (word swaps, dropped lines, shuffled passages) until it reaches the asked
size, written as jsonl files. Each run is a fresh subprocess, so its peak RSS (the driver, and the
largest worker) is its own. Documents stream through the shards, so peak RSS should stay about flat
as the input grows from --small-mb to --mb; the table shows both.

  python benchmarks/data_pipeline.py [--mb 200] [--small-mb 20] [--workers 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT = None  # data.pipeline unset: clean, min_chars, exact_dedup
FULL = [
    {"block": "normalize"},
    {"block": "language"},
    {"block": "gopher_quality"},
    {"block": "c4_quality"},
    {"block": "gopher_repetition"},
    {"block": "pii"},
    {"block": "minhash_dedup", "threshold": 0.8},
]


def _passages() -> list[str]:
    from danlu.data.sources import read_source

    out = []
    for doc in read_source("shakespeare"):
        paras = doc["text"].split("\n\n")
        chunk: list[str] = []
        for p in paras:
            chunk.append(p)
            if sum(map(len, chunk)) > 3000:
                out.append("\n\n".join(chunk))
                chunk = []
    out += [d["text"] for d in read_source("chitchat")]
    return out


def _perturb(text: str, rng: random.Random, vocab: list[str]) -> str:
    lines = text.split("\n")
    if len(lines) > 3:
        del lines[rng.randrange(len(lines))]
    words = "\n".join(lines).split(" ")
    for _ in range(max(1, len(words) // 20)):
        words[rng.randrange(len(words))] = rng.choice(vocab)
    return " ".join(words)


def synthesize(root: Path, mb: float, seed: int = 0) -> tuple[int, int]:
    """jsonl files of about `mb` MB of text; returns (documents, bytes of text)."""
    rng = random.Random(seed)
    base = _passages()
    vocab = sorted({w for t in base[:200] for w in t.split() if w.isalpha()})
    root.mkdir(parents=True, exist_ok=True)
    n = size = 0
    lines: list[str] = []
    while size < mb * 1e6:
        order = list(range(len(base)))
        rng.shuffle(order)
        for i in order:
            # one copy in ten verbatim (exact duplicates), the rest perturbed (near-duplicates)
            text = base[i] if rng.random() < 0.1 else _perturb(base[i], rng, vocab)
            lines.append(json.dumps({"id": f"d{n}", "text": text}) + "\n")
            n += 1
            size += len(text.encode())
            if len(lines) == 5000 or size >= mb * 1e6:
                with open(root / f"part{n // 5000:04d}.jsonl", "w") as f:
                    f.writelines(lines)
                lines = []
            if size >= mb * 1e6:
                break
    return n, size


def _vm_hwm_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child would report the
    # peak of the benchmark process that launched it
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(corpus: str, out: str, pipeline: str, workers: int) -> None:
    """One pipeline run; prints wall time, counts and peak RSS as JSON."""
    from danlu.data.config import DataConfig
    from danlu.data.documents import run_data

    cfg = DataConfig(sources=[corpus], pipeline=json.loads(pipeline), workers=workers, shard_docs=1000)
    t = time.perf_counter()
    m = run_data(cfg, out)
    wall = time.perf_counter() - t
    print(
        json.dumps(
            {
                "wall": wall,
                "docs_in": m["sources"][corpus]["documents_in"],
                "docs_out": sum(s["documents"] for s in m["splits"].values()),
                "rss_driver_mb": _vm_hwm_mb(),
                "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )


def measure(corpus: Path, pipeline: list | None, workers: int, tmp: Path) -> dict:
    out = tmp / "out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", str(corpus), str(out), json.dumps(pipeline), str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"pipeline run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=200.0)
    ap.add_argument("--small-mb", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--only", choices=["default", "full"], help="run one of the two pipelines")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        c, o, p, w = args.child
        child(c, o, p, int(w))
        return
    # imported here: _machine imports torch, which the measured runs must not carry in their RSS
    from _machine import machine_markdown, markdown_table

    rows = []
    with tempfile.TemporaryDirectory(prefix="danlu-bench-") as tmp_s:
        tmp = Path(tmp_s)
        for mb in (args.small_mb, args.mb):
            corpus = tmp / f"corpus{mb:g}"
            n_docs, n_bytes = synthesize(corpus, mb)
            for name, pipeline in (("default", DEFAULT), ("full", FULL)):
                if args.only and name != args.only:
                    continue
                runs = [measure(corpus, pipeline, args.workers, tmp) for _ in range(args.repeats)]
                wall = statistics.median(r["wall"] for r in runs)
                rows.append(
                    [
                        name,
                        f"{n_bytes / 1e6:.0f}",
                        f"{n_docs}",
                        f"{runs[0]['docs_out']}",
                        f"{wall:.1f}",
                        f"{n_docs / wall:,.0f}",
                        f"{n_bytes / 1e6 / wall:.2f}",
                        f"{max(r['rss_driver_mb'] for r in runs):.0f}",
                        f"{max(r['rss_worker_mb'] for r in runs):.0f}",
                    ]
                )
            shutil.rmtree(corpus)
    header = ["pipeline", "input MB", "docs in", "docs out", "wall s", "docs/s", "MB/s"]
    print(markdown_table([*header, "peak RSS driver MB", "peak RSS worker MB"], rows))
    print(
        f"\nworkers={args.workers}, repeats={args.repeats} (median wall); full = "
        + " -> ".join(b["block"] for b in FULL)
    )
    print(machine_markdown())


if __name__ == "__main__":
    main()
