"""Tensor parallelism over 2 gloo ranks on model variants: one forward and backward gives the logits and
every parameter's gradient (gathered, fused rows back in the model's order) of the one-process model."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch

from danlu.model.config import ModelConfig

VARIANTS = {
    # grouped-query attention, untied head, sequence parallel
    "gqa-untied-sp": ({"n_head": 4, "n_kv_head": 2, "tie_embeddings": False}, True),
    # biases, LayerNorm, a plain GELU MLP
    "bias-layernorm-gelu": ({"bias": True, "norm": "layernorm", "mlp": "gelu"}, False),
    # QK-norm (per-head norms sharded on the head dimension), logit soft-capping
    "qk-norm-softcap": ({"qk_norm": True, "logit_softcap": 30.0}, True),
}


def _check(variant: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from danlu.model.transformer import build_model
    from danlu.parallel.tensor import apply_tp

    options, sp = VARIANTS[variant]
    cfg = ModelConfig(
        **{"n_layer": 2, "n_embd": 64, "n_head": 4, "max_seq_len": 16, "vocab_size": 96} | options
    )
    torch.manual_seed(3)
    model = build_model(cfg)
    ref = build_model(cfg)
    ref.load_state_dict(model.state_dict())
    x = torch.randint(0, 96, (2, 16))
    want = ref(x)
    torch.nn.functional.cross_entropy(want.flatten(0, 1), x.flatten()).backward()
    order = apply_tp(model, init_device_mesh("cpu", (2,), mesh_dim_names=("tp",)), sp)
    got = model(x)
    torch.nn.functional.cross_entropy(got.flatten(0, 1), x.flatten()).backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    grads = {
        n: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
        for n, p in model.named_parameters()
    }
    grads = order.to_stored(grads)
    ref_grads = dict(ref.named_parameters())
    assert grads.keys() == ref_grads.keys()
    for n, g in grads.items():
        torch.testing.assert_close(g, ref_grads[n].grad, atol=1e-6, rtol=1e-4, msg=n)
    dist.barrier()


def _worker(rank: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", rank=rank, world_size=2)
        for variant in VARIANTS:
            _check(variant)
        dist.destroy_process_group()
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


@pytest.mark.slow
def test_tp_forward_backward_equals_one_process_on_model_variants(tmp_path):
    ctx = mp.get_context("spawn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_worker, args=(r, port, tmp_path)) for r in range(2)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(240)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    errors = "".join(f.read_text() for f in sorted(tmp_path.glob("rank*.err")))
    assert all(p.exitcode == 0 for p in procs), errors[-3000:] or [p.exitcode for p in procs]
