"""GPTQ (Frantar et al. 2023): quantize a Linear's weight one input column at a time, moving each
column's rounding error onto the columns not yet quantized, weighted by the layer's Hessian.

For a Linear y = W x with calibration inputs X, the layer's loss ||W X - W_hat X||^2 has Hessian
H = 2 X X^T / n (per row of W). Quantizing column q of every row and compensating the rest optimally
(Optimal Brain Quantization, eq. 3 of the paper) is

    err    = (w_q - quant(w_q)) / [H^-1]_qq
    w_F   -= err * [H^-1]_{q, F}                  (F: the columns after q)
    H^-1  <- H^-1 without row and column q         (one step of Gaussian elimination)

GPTQ computes every needed row of those shrinking inverses at once as the upper Cholesky factor of
H^-1 (the paper's step 3), applies the updates of `block_size` columns at a time inside the block and
once per block to the columns after it (lazy batch updates), adds `damp` * mean(diag H) to H's
diagonal (dampening), gives inputs that never fire (diag H = 0) a zero weight, and with `act_order`
visits columns in decreasing diag(H). With groups the grid of a group is computed when its first
column is reached (from the already updated weights), except with act_order, where each group's grid
comes from the original weights so that a column keeps its place in the stored layout (the
"static groups" variant).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from danlu.quant.quantizers import QTensor, QuantSpec, encode, grid


@contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny ops on one thread: the column loop's ops touch a few thousand values each, where a
    thread pool's start and barrier cost more than the work (24x on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Hessian:
    """Running H = 2 X X^T / n over calibration inputs of one Linear (inputs [..., in_features])."""

    def __init__(
        self, in_features: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ):
        self.H = torch.zeros(in_features, in_features, device=device, dtype=dtype)
        self.n = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.H.dtype)
        m = x.shape[0]
        self.H *= self.n / (self.n + m)
        self.n += m
        x = x * (2 / self.n) ** 0.5
        self.H.addmm_(x.T, x)


@torch.no_grad()
def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    spec: QuantSpec,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
) -> QTensor:
    """GPTQ codes and grid of W [rows, cols] for inputs with Hessian H [cols, cols]."""
    W = W.detach().clone().to(H.dtype)
    H = H.clone()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    width = spec.width(cols)
    static = act_order or spec.granularity != "group"
    scale, offset = grid(W, spec)  # [rows, groups]; recomputed per group below unless static
    scale, offset = scale.to(W.dtype), offset.to(W.dtype)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros(rows, cols, dtype=torch.uint8, device=W.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        with one_thread():  # per-column ops on a few thousand values
            for i in range(i2 - i1):
                col = int(perm[i1 + i])  # the column's place in the original layout
                g = col // width
                if not static and col % width == 0:
                    # the group's grid from its columns as updated so far (this block's part from W1)
                    cur = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, : min(width, cols - col)]
                    s, o = grid(cur, QuantSpec(spec.bits, spec.symmetric, "channel"))
                    scale[:, g], offset[:, g] = s[:, 0].to(W.dtype), o[:, 0].to(W.dtype)
                w = W1[:, i]
                q = encode(w, scale[:, g], offset[:, g], spec.bits)
                Q[:, i1 + i] = q
                err = (w - (q.to(W.dtype) * scale[:, g] + offset[:, g])) / Hinv1[i, i]
                W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
                Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    codes = torch.empty_like(Q)
    codes[:, perm] = Q
    return QTensor(codes, scale.float(), offset.float(), spec)
