"""The parallel-layout planner: DP x TP x PP (x ZeRO stage) for nodes x GPUs per node and a model.

Rules (torchtitan's and Megatron's practice): tensor parallelism stays within a node (its all-reduces
need NVLink), at most 8 wide, and must divide the attention and key/value heads; pipeline parallelism
spans nodes and is used only when no layout without it fits in memory; data parallelism takes the
rest, so DP x TP x PP = every device. Every candidate is costed in memory (danlu.plan.memory) and in
step time: compute = model FLOPs / (devices x peak x MFU), stretched by the 1F1B bubble
(pp - 1) / (micro-batches + pp - 1) and by recomputation (one more forward: x 4/3) when activations
are checkpointed; plus communication that is assumed not to overlap with compute (an upper bound):
ring all-reduce of the gradients over DP, 2 (dp - 1) / dp x gradient bytes (ZeRO-3 also gathers the
weights in forward and backward: 3 (dp - 1) / dp x weight bytes), and for TP four all-reduces of the
activations per block per micro-batch (two forward, two backward: Megatron-LM). Among the layouts that
fit, the fastest wins; ties keep the smaller ZeRO stage and the smaller TP.

The layout is emitted as the recipe's `parallel.*` keys (danlu.parallel's ParallelConfig): DDP (ZeRO 0)
replicates over DP (dp_replicate); ZeRO-2 and ZeRO-3 are FSDP over it (dp_shard), ZeRO-2 keeping the
weights gathered from forward to backward (reshard_after_forward false). danlu has no ZeRO-1 layout
(optimizer state sharded, gradients whole), so the planner does not offer one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from danlu.errors import ConfigError
from danlu.plan.flops import ModelShape
from danlu.plan.hardware import Hardware, default_mfu
from danlu.plan.memory import TrainMemory, TrainSetup, training_memory

# fraction of device memory a plan may use (allocator fragmentation, CUDA context, buffers)
MEMORY_HEADROOM = 0.9


@dataclass(frozen=True)
class Layout:
    dp: int
    tp: int
    pp: int
    zero: int
    checkpointing: int
    memory: TrainMemory
    compute_s: float
    comm_s: float
    bubble: float

    @property
    def step_s(self) -> float:
        return self.compute_s + self.comm_s

    def parallel_config(self) -> dict[str, int | bool]:
        shard = self.zero > 0
        out: dict[str, int | bool] = {
            "dp_replicate": 1 if shard else self.dp,
            "dp_shard": self.dp if shard else 1,
            "tp": self.tp,
            "pp": self.pp,
            "cp": 1,
        }
        if shard:
            out["reshard_after_forward"] = self.zero == 3
        return out


@dataclass(frozen=True)
class Plan:
    best: Layout
    candidates: list[Layout]
    rejected: list[str]
    explanation: list[str]
    devices: int
    tokens_per_step: int
    mfu: float
    mfu_source: str


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def plan_layout(
    shape: ModelShape,
    hw: Hardware,
    nodes: int,
    gpus_per_node: int,
    setup: TrainSetup,
    global_batch: int,
    mfu: float | None = None,
    dtype: str = "bf16",
) -> Plan:
    """Choose DP x TP x PP x ZeRO for `global_batch` sequences of setup.seq_len per step.

    setup gives the micro-batch, precision, optimizer and activation checkpointing (0 lets the
    planner turn it on when a layout fits only with it); its dp/tp/pp/zero fields are ignored."""
    if nodes < 1 or gpus_per_node < 1:
        raise ConfigError(f"nodes and GPUs per node must be >= 1, got {nodes} and {gpus_per_node}")
    if gpus_per_node > hw.max_per_node:
        raise ConfigError(f"a {hw.name} node holds at most {hw.max_per_node} devices, got {gpus_per_node}")
    devices = nodes * gpus_per_node
    source = "given"
    if mfu is None:
        mfu, source = default_mfu(hw)
    peak = hw.peak_flops(dtype)
    tp_options = [t for t in _divisors(gpus_per_node) if t <= 8]
    head_ok = [t for t in tp_options if shape.n_head % t == 0 and shape.n_kv_head % t == 0]
    rejected: list[str] = []
    for t in sorted(set(tp_options) - set(head_ok)):
        rejected.append(
            f"tp={t}: does not divide the {shape.n_head} heads / {shape.n_kv_head} key/value heads"
        )
    pp_options = [p for p in _divisors(nodes) if p <= shape.n_layer]
    ckpt_options = [setup.checkpointing] if setup.checkpointing else [0, 1]
    fitting: list[Layout] = []
    smallest: tuple[float, str] | None = None
    for pp in pp_options:
        for tp in head_ok:
            dp = devices // (tp * pp)
            if global_batch % dp:
                rejected.append(
                    f"dp={dp} (tp={tp}, pp={pp}): does not divide the global batch {global_batch}"
                )
                continue
            micro = min(setup.micro_batch, global_batch // dp)
            accum = global_batch // (dp * micro)
            for zero in (0, 2, 3) if dp > 1 else (0,):
                for ckpt in ckpt_options:
                    s = dataclasses.replace(
                        setup, dp=dp, tp=tp, pp=pp, zero=zero, checkpointing=ckpt, micro_batch=micro,
                        grad_accum=accum,
                    )  # fmt: skip
                    mem = training_memory(shape, s)
                    name = f"dp={dp} tp={tp} pp={pp} zero={zero} ckpt={ckpt}"
                    if smallest is None or mem.peak < smallest[0]:
                        smallest = (mem.peak, name)
                    if mem.peak > MEMORY_HEADROOM * hw.memory_bytes:
                        continue
                    fitting.append(_cost(shape, hw, s, mem, global_batch, peak, mfu))
        if fitting:  # pipeline stages only when no shallower pipeline fits
            break
    if not fitting:
        assert smallest is not None
        raise ConfigError(
            f"{shape.name} fits on no layout of {nodes} x {gpus_per_node} {hw.name}: the smallest needs "
            f"{smallest[0] / 2**30:.1f} GiB per device ({smallest[1]}) against "
            f"{MEMORY_HEADROOM * hw.memory_bytes / 2**30:.1f} GiB usable; add nodes, lower the micro-batch "
            "or sequence length, or offload the optimizer state"
        )
    fitting.sort(key=lambda lay: (round(lay.step_s, 6), lay.zero, lay.tp, lay.checkpointing))
    best = fitting[0]
    return Plan(
        best,
        fitting,
        rejected,
        _explain(best, fitting, shape, hw, nodes, gpus_per_node),
        devices,
        global_batch * setup.seq_len,
        mfu,
        source,
    )


def _cost(
    shape: ModelShape,
    hw: Hardware,
    s: TrainSetup,
    mem: TrainMemory,
    global_batch: int,
    peak: float,
    mfu: float,
) -> Layout:
    devices = s.dp * s.tp * s.pp
    tokens = global_batch * s.seq_len
    compute = shape.flops_per_token(s.seq_len) * tokens / (devices * peak * mfu)
    if s.checkpointing:
        compute *= 4 / 3
    bubble = (s.pp - 1) / (s.grad_accum + s.pp - 1)
    compute /= 1 - bubble
    # DP groups span nodes whenever dp x tp exceeds a node's devices
    dp_bw = hw.intra_node_bw if s.dp * s.tp <= hw.max_per_node and s.pp == 1 else hw.inter_node_bw
    grad_bytes = 2.0 if s.precision != "fp32" else 4.0
    params_here = shape.n_params / (s.tp * s.pp)
    comm = 0.0
    if s.dp > 1:
        ring = (s.dp - 1) / s.dp
        # all-reduce = reduce-scatter + all-gather of the gradients; ZeRO-3 gathers weights twice more
        volume = (3 if s.zero == 3 else 2) * ring * params_here * grad_bytes
        comm += volume / dp_bw if dp_bw > 0 else float("inf")
    if s.tp > 1:
        act = s.micro_batch * s.seq_len * shape.n_embd * grad_bytes
        per_micro = 4 * shape.n_layer / s.pp * 2 * (s.tp - 1) / s.tp * act
        comm += per_micro * s.grad_accum / hw.intra_node_bw
    return Layout(s.dp, s.tp, s.pp, s.zero, s.checkpointing, mem, compute, comm, bubble)


def _explain(
    best: Layout, fitting: list[Layout], shape: ModelShape, hw: Hardware, nodes: int, per_node: int
) -> list[str]:
    lines = [
        f"{len(fitting)} layouts of {nodes} x {per_node} {hw.name} fit in "
        f"{MEMORY_HEADROOM:.0%} of {hw.memory_bytes / 2**30:.0f} GiB per device",
        f"chosen: dp={best.dp} tp={best.tp} pp={best.pp} ZeRO-{best.zero}"
        + (f", activation checkpointing every {best.checkpointing} block(s)" if best.checkpointing else ""),
        f"memory per device {best.memory.peak / 2**30:.1f} GiB; step {best.step_s:.3g} s "
        f"(compute {best.compute_s:.3g} s, communication {best.comm_s:.3g} s, bubble {best.bubble:.1%})",
    ]
    if best.pp > 1:
        lines.append(f"pipeline parallel {best.pp}: no layout within one pipeline stage fits in memory")
    if best.tp > 1:
        lines.append(f"tensor parallel {best.tp} within a node: less DP traffic or memory than tp=1 layouts")
    if best.zero:
        lines.append(f"ZeRO-{best.zero}: lower stages do not fit, or are not faster")
    for lay in fitting[1:4]:
        lines.append(
            f"  next: dp={lay.dp} tp={lay.tp} pp={lay.pp} ZeRO-{lay.zero} ckpt={lay.checkpointing}: "
            f"{lay.memory.peak / 2**30:.1f} GiB, step {lay.step_s:.3g} s"
        )
    return lines
