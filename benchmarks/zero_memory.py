"""Per-rank memory of parameters, gradients and optimizer state under DDP, ZeRO-1, ZeRO-2 and ZeRO-3,
measured on CPU with gloo (N processes), against the ZeRO paper's formula.

Each mode trains one step of a small danlu model with AdamW (fp32 weights, gradients and two fp32
moments) in N spawned processes, and every rank counts the bytes of the tensors it holds:

- params at rest: the local storage of the model's parameters (FSDP2: each rank's shard)
- params after forward: the parameter storage still allocated when the forward ends (FSDP2 with
  reshard_after_forward=False keeps every block's gathered weights until its backward: ZeRO-2;
  with True it frees them after each block's forward: ZeRO-3)
- grads: the local gradient storage after backward
- optimizer: the local optimizer-state tensors after the step (AdamW's exp_avg and exp_avg_sq)

Modes, each a danlu layout (danlu.parallel): DDP (parallel.dp_shard=1); ZeRO-1 (parallel.zero=1: DDP
with the optimizer wrapped by Distributed.wrap_optimizer, torch's ZeroRedundancyOptimizer); ZeRO-2
and ZeRO-3 (parallel.zero=2 / 3 with dp_shard=N: FSDP2, reshard_after_forward False / True).
Formula (Psi parameters, 4 bytes each, N ranks): params 4Psi (ZeRO-3: 4Psi/N), grads 4Psi (ZeRO-2/3:
4Psi/N), optimizer 8Psi (ZeRO-1/2/3: 8Psi/N). FSDP2 pads each parameter's first dimension to a
multiple of N, and its root module (embedding, final norm, head) stays gathered after forward.

Pipeline parallelism (parallel.pp=N, 1F1B) is measured the same way in a second table: each rank
allocates only its stages (danlu.parallel.pipeline.build_stages), so it holds their parameters,
gradients and optimizer state; the formula counts a stage's share from the shapes (L/N blocks, the
embedding on the first stage, the final norm and the tied head, a second copy of the embedding, on
the last). "gathered" is what a rank holds while an evaluation or checkpoint has the whole model
gathered (sync_model), and "after release" what it holds again at the next step.

Usage: python benchmarks/zero_memory.py [--nproc 2 4] [--n_layer 4 --n_embd 256 --vocab 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown, markdown_table

MODES = ("ddp", "zero1", "zero2", "zero3")
MiB = 2**20


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct allocated storages under the tensors (shared storages once; meta
    tensors have none)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t.is_meta:
            continue
        s = _local(t).untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def _param_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters as registered now, plus FSDP2's gathered (unsharded) copies still allocated."""
    out = list(model.parameters())
    for m in model.modules():
        state = getattr(m, "_get_fsdp_state", None)
        group = getattr(state(), "_fsdp_param_group", None) if state else None
        for fp in getattr(group, "fsdp_params", []):
            unsharded = getattr(fp, "_unsharded_param", None)
            if unsharded is not None and unsharded.untyped_storage().nbytes() > 0:
                out.append(unsharded)
    return out


def _moments(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    state = opt.optim.state if hasattr(opt, "optim") else opt.state  # ZeroRedundancyOptimizer wraps one
    return [t for s in state.values() for t in s.values() if isinstance(t, torch.Tensor) and t.dim() > 0]


def _pp_step(dist, cfg, world: int) -> dict:
    """One 1F1B step of the pipelined model; what this rank holds before, after, gathered, released."""
    model = dist.shard(dist.build_model(cfg, torch.device("cpu")))
    opt = torch.optim.AdamW(list(model.parameters()), lr=1e-3)
    rest = _storage_bytes(model.parameters())
    x = torch.randint(0, cfg.vocab_size, (2 * world, 64))
    dist.forward_backward([(x, x)], int(x.numel()))
    grads = _storage_bytes([p.grad for p in model.parameters() if p.grad is not None])
    opt.step()
    dist.sync_model(model)  # the whole model, as for an evaluation or a checkpoint
    gathered = _storage_bytes(model.parameters())
    dist.runner.release_others()
    return {
        "rest": rest, "grads": grads, "optimizer": _storage_bytes(_moments(opt)), "gathered": gathered,
        "released": _storage_bytes(model.parameters()), "stage": dist.mesh["pp"].get_local_rank(),
    }  # fmt: skip


def _worker(rank: int, world: int, port: int, mode: str, shape: dict, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from danlu.model.config import ModelConfig
    from danlu.model.transformer import build_model
    from danlu.parallel.config import ParallelConfig
    from danlu.parallel.runtime import init_parallel

    cfg = ModelConfig(max_seq_len=64, **shape)
    n_params = sum(p.numel() for p in build_model(cfg).parameters())  # distinct (tied head once)
    if mode == "pp":
        dist = init_parallel(ParallelConfig(pp=world), torch.device("cpu"))
        assert dist is not None
        record = {"psi": n_params, **_pp_step(dist, cfg, world)}
        Path(out, f"{mode}-{rank}.json").write_text(json.dumps(record))
        dist.close()
        return
    sharded = mode in ("zero2", "zero3")
    layout = ParallelConfig(dp_shard=world if sharded else 1, zero=0 if mode == "ddp" else int(mode[-1]))
    dist = init_parallel(layout, torch.device("cpu"))
    assert dist is not None
    model = dist.shard(build_model(cfg))
    forward = dist.wrap_forward(model)
    params = [p for p in model.parameters()]
    opt = dist.wrap_optimizer(torch.optim.AdamW(params, lr=1e-3))
    held: dict[str, int] = {}

    def after_forward(*_: object) -> None:
        held["after_forward"] = _storage_bytes(_param_tensors(model))

    model.register_forward_hook(after_forward)
    rest = _storage_bytes(model.parameters())
    x = torch.randint(0, cfg.vocab_size, (2, 64))
    logits = forward(x)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
    grads = _storage_bytes([p.grad for p in model.parameters() if p.grad is not None])
    opt.step()
    record = {
        "psi": n_params, "rest": rest, "after_forward": held["after_forward"], "grads": grads,
        "optimizer": _storage_bytes(_moments(opt)),
    }  # fmt: skip
    Path(out, f"{mode}-{rank}.json").write_text(json.dumps(record))
    dist.close()


def _formula(mode: str, psi: int, n: int) -> dict[str, float]:
    full, part = 4 * psi, 4 * psi / n
    return {
        "rest": part if mode in ("zero2", "zero3") else full,
        "after_forward": part if mode == "zero3" else full,
        "grads": part if mode in ("zero2", "zero3") else full,
        "optimizer": 2 * (part if mode != "ddp" else full),
    }


def _stage_params(shape: dict, psi: int, n: int, stage: int) -> int:
    """Parameters of pipeline stage `stage` of n, from the shapes: L/n blocks, the embedding on the
    first stage, the final norm and the tied head (another copy of the embedding) on the last."""
    embed, norm = shape["vocab_size"] * shape["n_embd"], shape["n_embd"]
    per_block = (psi - embed - norm) // shape["n_layer"]
    ends = (embed if stage == 0 else 0) + (embed + norm if stage == n - 1 else 0)
    return per_block * shape["n_layer"] // n + ends


def _pp_rows(n: int, shape: dict) -> list[list[str]]:
    rows = []
    for r in _run("pp", n, shape):
        psi, want = r["psi"], 4 * _stage_params(shape, r["psi"], n, r["stage"])
        cells = [f"{r[c] / MiB:.2f} / {w / MiB:.2f} ({r[c] / w:.2f}x)" for c, w in
                 (("rest", want), ("grads", want), ("optimizer", 2 * want))]  # fmt: skip
        total = r["rest"] + r["grads"] + r["optimizer"]
        rows.append([str(n), str(r["stage"]), *cells, f"{total / MiB:.2f} / {16 * psi / MiB:.2f}",
                     f"{r['gathered'] / MiB:.2f}", f"{r['released'] / MiB:.2f}"])  # fmt: skip
    return rows


def _run(mode: str, n: int, shape: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        mp.start_processes(_worker, args=(n, port, mode, shape, tmp), nprocs=n, start_method="spawn")
        return [json.loads(Path(tmp, f"{mode}-{r}.json").read_text()) for r in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--n_layer", type=int, default=4)
    ap.add_argument("--n_embd", type=int, default=256)
    ap.add_argument("--n_head", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--no-pp", action="store_true", help="skip the pipeline-parallel table")
    args = ap.parse_args()
    shape = {"n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": args.n_head, "vocab_size": args.vocab}
    cols = ["rest", "after_forward", "grads", "optimizer"]
    rows, psi = [], 0
    for n in args.nproc:
        for mode in MODES:
            recs = _run(mode, n, shape)
            psi = recs[0]["psi"]
            want = _formula(mode, psi, n)
            row = [mode, str(n)]
            for c in cols:
                got = max(r[c] for r in recs)  # the rank that holds the most
                row.append(f"{got / MiB:.2f} / {want[c] / MiB:.2f} ({got / want[c]:.2f}x)")
            total = sum(max(r[c] for r in recs) for c in ("rest", "grads", "optimizer"))
            row.append(f"{total / MiB:.2f}")
            rows.append(row)
    print(
        f"model: {args.n_layer}L, d{args.n_embd}, {args.n_head}h, vocab {args.vocab}, tied head; "
        f"Psi = {psi:,} parameters (fp32), AdamW; one training step per mode, gloo on CPU"
    )
    print("each cell: measured MiB on the rank holding the most / formula MiB (measured / formula)\n")
    header = ["mode", "ranks", "params at rest", "params after forward", "grads", "optimizer state"]
    print(markdown_table([*header, "params+grads+optimizer at rest (MiB)"], rows))
    if not args.no_pp:
        pp_rows = [row for n in args.nproc if args.n_layer % n == 0 for row in _pp_rows(n, shape)]
        print(
            "\npipeline parallel (parallel.pp = ranks, 1F1B), every rank; each cell: measured / stage formula MiB\n"
        )
        pp_header = ["ranks", "stage", "params", "grads", "optimizer state"]
        extra = ["params+grads+optimizer / whole model's (MiB)", "params gathered", "params after release"]
        print(markdown_table([*pp_header, *extra], pp_rows))
    print(machine_markdown())


if __name__ == "__main__":
    main()
