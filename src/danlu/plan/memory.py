"""Memory per device for training and inference, counted from what danlu's model keeps.

Training state per parameter (bytes): weights, gradients, optimizer state and fp32 master weights.
`precision` names three layouts:
  fp32     weights 4, gradients 4 (danlu on CPU)
  bf16     danlu's bf16 autocast: fp32 weights and gradients (4 + 4) and, while a step runs, the bf16
           copy of every weight that autocast makes for its matmuls (2)
  mixed    the ZeRO paper's mixed-precision layout: bf16 weights and gradients (2 + 2) and an fp32
           master copy (4) kept with the optimizer state
Optimizer state (fp32 unless said): adamw 8 (two moments), adamw8bit 2 (+ one fp32 absmax per
2048-value block and moment), lion 4 (one momentum), adafactor (beta1 off) rows + columns of every
matrix and a full second moment of vectors, muon 4 for the hidden matrices (momentum) and AdamW's 8
for the rest. Under ZeRO over `dp` ranks: stage 1 shards optimizer state and master weights, stage 2
also gradients, stage 3 also weights (Rajbhandari et al. 2020, Figure 1); offload moves the optimizer
state and master weights to host memory. Tensor parallelism divides weights and activations by tp
(with sequence parallelism); pipeline parallelism divides the layers by pp, and 1F1B keeps up to pp
micro-batches of activations on the first stage, so activations per device do not fall with pp.

Activations are the tensors autograd saves, per token and block of danlu's transformer (pre-norm,
fused qkv, RoPE, SDPA, fused gated MLP): the two norm inputs and their two outputs (4 d), the qkv
output ((h + 2 kv) hd: v is a view into it), the rotated q and k ((h + kv) hd), the attention output
and its reshaped copy (2 h hd), and the MLP's gate/up output, its activation and the product (4 f;
2 f for a plain MLP). A checkpointed block keeps only its input (d) and recomputes the rest, one block
at a time, in backward. The loss keeps fp32 logits: at the start of backward the log-softmax output,
its gradient and the logits' gradient (3 x 4 bytes per vocabulary entry and token) are alive at once.
Gradients are allocated during backward as activations are freed, so the peak is the largest of the
moments of a walk through backward: its start (every stored activation, the logits' three tensors and
the gradients of the embedding / LM head and final norm), each block from the last to the first (the
activations of the blocks before it, its own full activations, stored or recomputed, and the MLP
backward's working tensors, beside the gradients of the blocks after it), and its end (every gradient). Without checkpointing the start
is usually the peak; with it, the first block's recomputation beside nearly all gradients. Under
gradient accumulation, data parallelism (gradients kept for the all-reduce) or LoRA every moment holds
all gradients.
These counts model the Llama default exactly; LayerNorm, plain MLPs and MoE are approximated
(an MoE token's activations count its top_k experts).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from danlu.errors import ConfigError

if TYPE_CHECKING:  # the model (and torch) load only when a shape is built
    from danlu.plan.flops import ModelShape

PRECISIONS = ("fp32", "bf16", "mixed")
OPTIMIZERS = ("adamw", "adamw8bit", "lion", "adafactor", "muon", "sgd")
# bytes per weight of a quantized model; int8/int4 carry an fp16 scale per row or per group of 128,
# NF4 an 8-bit absmax per 64 values and an fp32 scale per 256 absmaxes (QLoRA's double quantization)
WEIGHT_BYTES = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "int8": 1.0,
    "int4": 0.5 + 2 / 128,
    "nf4": 0.5 + 1 / 64 + 4 / (64 * 256),
}
GiB = 2**30


@dataclass(frozen=True)
class TrainSetup:
    micro_batch: int = 1
    seq_len: int = 2048
    precision: str = "bf16"
    optimizer: str = "adamw"
    # recompute every k-th block in backward (1: all); 0 stores every activation
    checkpointing: int = 0
    grad_accum: int = 1
    zero: int = 0
    dp: int = 1
    tp: int = 1
    pp: int = 1
    offload: bool = False
    # LoRA rank on every Linear of the blocks (0: full training); qlora stores the frozen base in NF4
    lora_rank: int = 0
    qlora: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.zero not in (0, 1, 2, 3):
            raise ConfigError(f"ZeRO stage must be 0, 1, 2 or 3, got {self.zero}")
        for key in ("micro_batch", "seq_len", "grad_accum", "dp", "tp", "pp"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.checkpointing < 0 or self.lora_rank < 0:
            raise ConfigError("checkpointing and lora_rank must be >= 0")
        if self.qlora and self.lora_rank == 0:
            raise ConfigError("qlora trains LoRA adapters: give a lora rank (e.g. --lora-rank 16)")


@dataclass(frozen=True)
class TrainMemory:
    """Bytes per device; `peak` is what one device needs at the busiest moment of a step."""

    weights: float
    gradients: float
    optimizer: float
    master: float
    activations: float
    logits: float
    autocast_copies: float
    peak: float
    host: float  # offloaded to CPU memory
    trainable_params: float

    def as_gib(self) -> dict[str, float]:
        return {k: v / GiB if k != "trainable_params" else v for k, v in asdict(self).items()}


def check_divides(shape: ModelShape, tp: int, pp: int) -> None:
    """The head, kv-head and layer counts a TP / PP degree must divide, with the fix in the message."""
    if shape.n_head % tp or shape.n_kv_head % tp:
        raise ConfigError(
            f"tensor parallel degree {tp} does not divide the {shape.n_head} attention heads and "
            f"{shape.n_kv_head} key/value heads of {shape.name}; pick a tp that divides both"
        )
    if pp > shape.n_layer:
        raise ConfigError(f"pipeline degree {pp} exceeds the {shape.n_layer} layers of {shape.name}")


def lora_params(shape: ModelShape, rank: int) -> int:
    """Adapter parameters of rank r on every Linear of every block: r * (in + out) each."""
    d, hd, f = shape.n_embd, shape.head_dim, shape.ffn_hidden
    qkv = d + (shape.n_head + 2 * shape.n_kv_head) * hd
    proj = shape.n_head * hd + d
    mlp = (d + 2 * f if shape.gated_mlp else d + f) + (f + d)
    return rank * (qkv + proj + mlp) * shape.n_layer


def optimizer_bytes(shape: ModelShape, optimizer: str, trainable: float, lora: bool) -> float:
    """Optimizer state of the trainable parameters (bytes, unsharded)."""
    if optimizer == "adamw":
        return 8.0 * trainable
    if optimizer == "adamw8bit":
        return (2.0 + 8 / 2048) * trainable
    if optimizer == "lion":
        return 4.0 * trainable
    if optimizer == "sgd":
        return 0.0
    d, f, hd = shape.n_embd, shape.ffn_hidden, shape.head_dim
    matrices = [
        (d, (shape.n_head + 2 * shape.n_kv_head) * hd),
        (shape.n_head * hd, d),
        (d, 2 * f if shape.gated_mlp else f),
        (f, d),
    ]
    block_matrix = sum(a * b for a, b in matrices) * shape.n_layer
    if optimizer == "muon":
        if lora:
            return 8.0 * trainable
        rest = trainable - block_matrix  # embeddings, head, norms: AdamW
        return 4.0 * block_matrix + 8.0 * rest
    # adafactor: factored second moments of the matrices, full ones of the vectors
    factored = sum(a + b for a, b in matrices) * shape.n_layer + shape.vocab_size + d
    if lora:
        return 4.0 * trainable  # small matrices: count full second moments
    vectors = trainable - block_matrix - shape.n_embedding
    return 4.0 * (factored + max(vectors, 0))


def activation_elements(shape: ModelShape) -> tuple[float, float]:
    """(elements per token saved by one block, of which residual-stream / norm-input elements)."""
    d, hd, h, kv, f = shape.n_embd, shape.head_dim, shape.n_head, shape.n_kv_head, shape.ffn_hidden
    experts = shape.moe_top_k if shape.n_experts else 1
    mlp = (4 * f if shape.gated_mlp else 2 * f) * experts
    attn = (h + 2 * kv) * hd + (h + kv) * hd + 2 * h * hd
    return 4 * d + attn + mlp, 2 * d


def model_states(
    trainable: float,
    optimizer_bytes_per_param: float = 8.0,
    precision: str = "mixed",
    zero: int = 0,
    dp: int = 1,
    frozen: float = 0.0,
    qlora: bool = False,
) -> dict[str, float]:
    """Bytes per device of weights, gradients, master weights and optimizer state (no model
    parallelism): the ZeRO paper's accounting, 2 + 2 + K bytes per parameter for mixed precision with
    K = 12 for Adam (master 4, two moments 8), sharded over dp by the ZeRO stage. Frozen parameters
    (LoRA's base) have weights only: NF4 under QLoRA."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if zero not in (0, 1, 2, 3) or dp < 1:
        raise ConfigError(f"ZeRO stage must be 0-3 and dp >= 1, got stage {zero}, dp {dp}")
    w_bytes = 2.0 if precision == "mixed" else 4.0
    frozen_bytes = WEIGHT_BYTES["nf4"] if qlora else w_bytes
    out = {
        "weights": trainable * w_bytes + frozen * frozen_bytes,
        "gradients": trainable * w_bytes,
        "master": trainable * 4.0 if precision == "mixed" else 0.0,
        "optimizer": trainable * optimizer_bytes_per_param,
    }
    for stage, keys in ((1, ("optimizer", "master")), (2, ("gradients",)), (3, ("weights",))):
        if zero >= stage:
            for k in keys:
                out[k] /= dp
    return out


def training_memory(shape: ModelShape, setup: TrainSetup) -> TrainMemory:
    """Per-device memory of one training step under `setup` (see the module docstring)."""
    s = setup
    check_divides(shape, s.tp, s.pp)
    model_split = s.tp * s.pp
    lora = s.lora_rank > 0
    trainable = float(lora_params(shape, s.lora_rank) if lora else shape.n_params)
    frozen = float(shape.n_params if lora else 0)
    optim = optimizer_bytes(shape, s.optimizer, trainable, lora)
    state = model_states(trainable, optim / trainable, s.precision, s.zero, s.dp, frozen, s.qlora)
    weights, grads, master, optim = (
        state[k] / model_split for k in ("weights", "gradients", "master", "optimizer")
    )
    host = 0.0
    if s.offload:
        host, optim, master = optim + master, 0.0, 0.0
    act_bytes = 4.0 if s.precision == "fp32" else 2.0
    per_token, residual = activation_elements(shape)
    block = (per_token - residual) * act_bytes + residual * 4.0  # the residual stream stays fp32
    tokens = s.micro_batch * s.seq_len
    layers = shape.n_layer / s.pp
    in_flight = s.pp  # 1F1B: the first stage holds pp micro-batches
    n_ckpt = math.ceil(layers / s.checkpointing) if s.checkpointing else 0
    stored = ((layers - n_ckpt) * block + n_ckpt * shape.n_embd * 4.0) * tokens * in_flight / s.tp
    recompute = block * tokens / s.tp if n_ckpt else 0.0
    head_inputs = 2 * shape.n_embd * 4.0 * tokens / s.tp
    logits = 3 * 4.0 * shape.vocab_size * tokens / s.tp
    autocast = shape.n_params * 2.0 / model_split if s.precision == "bf16" and not s.qlora else 0.0
    if s.zero >= 3:
        autocast /= s.dp
    activations = stored + head_inputs
    persistent = s.grad_accum > 1 or s.dp > 1 or lora
    per_block = tokens * in_flight / s.tp
    busiest = _backward_peak(
        shape,
        s,
        block * per_block,
        shape.n_embd * 4.0 * per_block,
        tokens / s.tp,
        act_bytes,
        grads,
        persistent,
        head_inputs,
        logits,
    )
    peak = weights + master + optim + autocast + busiest
    return TrainMemory(
        weights=weights,
        gradients=grads,
        optimizer=optim,
        master=master,
        activations=activations + recompute,
        logits=logits,
        autocast_copies=autocast,
        peak=peak,
        host=host,
        trainable_params=trainable,
    )


def _block_params(shape: ModelShape) -> float:
    """Weights of one transformer block: its Linears and two norm weights."""
    d, hd, f = shape.n_embd, shape.head_dim, shape.ffn_hidden
    mlp = (d * 2 * f if shape.gated_mlp else d * f) + f * d
    experts = shape.n_experts or 1
    return d * (shape.n_head + 2 * shape.n_kv_head) * hd + shape.n_head * hd * d + mlp * experts + 2 * d


def _backward_peak(
    shape: ModelShape,
    s: TrainSetup,
    block_full: float,
    block_input: float,
    tokens: float,
    act_bytes: float,
    grads: float,
    persistent: bool,
    head_inputs: float,
    logits: float,
) -> float:
    """The most activation and gradient bytes alive at once during one backward pass (the walk the
    module docstring describes). Per device: `block_full` is one block's saved activations,
    `block_input` what a checkpointed block keeps (its input)."""
    layers = max(1, round(shape.n_layer / s.pp))
    block_frac = 1.0 if s.lora_rank else min(1.0, _block_params(shape) * shape.n_layer / shape.n_params)
    grad_block = grads * block_frac / layers
    grad_other = grads - grad_block * layers  # embedding / LM head and final norm: first in backward
    every = s.checkpointing
    kept = [block_input if every and j % every == 0 else block_full for j in range(layers)]

    def grads_by(i: int) -> float:  # gradients allocated once block i's backward is done
        return grads if persistent else grad_other + grad_block * (layers - i)

    # inside a block's backward the MLP's moment is the largest: the product's saved copy (f) is freed
    # and its incoming gradient (f), the gradient of gate/up (2 f) and one f-sized temporary are
    # alive, 3 f more than the block's activations (a plain MLP: the incoming gradient and its
    # input's, less the freed copy, f more); of the block's own gradients only `down`'s exists yet
    f = shape.ffn_hidden * (shape.moe_top_k if shape.n_experts else 1)
    mlp_work = (3 if shape.gated_mlp else 1) * f * act_bytes * tokens
    own = grad_block * shape.ffn_hidden * shape.n_embd / max(_block_params(shape), 1.0)
    moments = [sum(kept) + head_inputs + logits + (grads if persistent else grad_other)]
    moments += [
        sum(kept[:i]) + block_full + mlp_work + grads_by(i + 1) + (0.0 if persistent else own)
        for i in range(layers - 1, -1, -1)
    ]
    moments.append(grads)
    return max(moments)


@dataclass(frozen=True)
class InferenceMemory:
    weights: float
    kv_cache: float
    logits: float
    peak: float


def inference_memory(
    shape: ModelShape,
    batch: int = 1,
    context: int | None = None,
    weights: str = "bf16",
    kv_dtype: str = "bf16",
    tp: int = 1,
) -> InferenceMemory:
    """Weights (quantized as named), the KV cache of `batch` sequences of `context` tokens
    (2 * n_layer * n_kv_head * head_dim values per token), and one step's fp32 logits, per device."""
    if weights not in WEIGHT_BYTES:
        raise ConfigError(f"weight format must be one of {', '.join(WEIGHT_BYTES)}, got {weights!r}")
    if kv_dtype not in ("fp32", "bf16", "fp16", "int8"):
        raise ConfigError(f"KV cache dtype must be fp32, bf16, fp16 or int8, got {kv_dtype!r}")
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    context = context or shape.max_seq_len
    if context < 1:
        raise ConfigError(f"context must be >= 1, got {context}")
    check_divides(shape, tp, 1)
    # norms and embeddings usually stay in 16 bits when the Linears are quantized
    emb_bytes = WEIGHT_BYTES[weights] if weights in ("fp32", "bf16", "fp16") else 2.0
    w = (shape.n_params - shape.n_embedding) * WEIGHT_BYTES[weights] + shape.n_embedding * emb_bytes
    kv = 2 * shape.n_layer * shape.n_kv_head * shape.head_dim * context * batch * WEIGHT_BYTES[kv_dtype]
    logits = 4.0 * shape.vocab_size * batch
    return InferenceMemory(w / tp, kv / tp, logits, (w + kv) / tp + logits)
