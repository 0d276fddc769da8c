"""The pretraining stage: `run_pretrain(cfg, tokens_dir, tokenizer_dir, out_dir)`, a short builder over
the Trainer: packed token shards in, a model directory out.

It resolves the model config (preset, depth, vocabulary), builds and initialises the model, and gives
the Trainer the loader over the token shards, the next-token loss (with z-loss, label smoothing and
the MoE router loss), the objective's per-step masking (MLM, prefix LM, FIM, span corruption), and
an evaluation of loss and bits per byte on the validation split.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from danlu.errors import ConfigError, DataError
from danlu.model_dir import save_model_dir
from danlu.recipe import RecipeConfig
from danlu.train.config import TrainConfig
from danlu.train.losses import (
    IGNORE_INDEX,
    bits_per_byte,
    nats_and_bytes,
    summed_lm_loss,
    token_cross_entropy,
)
from danlu.train.objectives import Objective
from danlu.train.optimizers import build_named_optimizer
from danlu.train.precision import autocast, resolve_device, resolve_dtype
from danlu.train.trainer import Hooks, LossOutput, RunInfo, Trainer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_tokens(tokens_dir: Path, tok: Any) -> None:
    """The token shards must come from this tokenizer: same vocab size and fingerprint."""
    index_path = Path(tokens_dir) / "index.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{index_path} not found; run the pack stage first (danlu pack)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{index_path} is unreadable ({e}); re-run the pack stage") from None
    fp = index.get("fingerprint")
    if index.get("vocab_size") != tok.vocab_size or (fp is not None and fp != tok.fingerprint()):
        raise DataError(
            f"token shards in {tokens_dir} were packed with another tokenizer (vocab "
            f"{index.get('vocab_size')}, fingerprint {fp}) than {tok.vocab_size}/{tok.fingerprint()}; "
            "re-run the pack stage with this tokenizer"
        )


def lm_loss(z_loss: float = 0.0, label_smoothing: float = 0.0) -> Any:
    """The next-token loss over a micro-batch (inputs, targets[, attn_mask]), with the model's MoE
    router loss as the aux loss."""

    def loss_fn(model: nn.Module, batch: Any) -> LossOutput:
        x, y, *rest = batch
        mask = rest[0] if rest else None
        logits, aux = model(x, return_aux=True) if mask is None else model(x, attn_mask=mask, return_aux=True)
        loss_sum = summed_lm_loss(logits, y, z_loss, label_smoothing)
        metrics = {} if aux is None else {"moe_loss": aux.detach()}
        return LossOutput(loss_sum, int((y != IGNORE_INDEX).sum()), aux, metrics)

    return loss_fn


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Any,
    tcfg: TrainConfig,
    token_bytes: torch.Tensor,
    device: torch.device,
    dtype: str,
    objective: Objective | None = None,
) -> dict[str, float]:
    """{val_loss: mean nats/token, val_bpb: bits per byte} over `tcfg.eval_batches` batches of
    `dataset`, under the training objective (its random choices fixed per batch, so every
    evaluation sees the same). The Trainer calls it with the model in eval mode."""
    from danlu.data.loader import eval_batches

    nats_all, n_tokens, nats_text, n_bytes = 0.0, 0, 0.0, 0
    batches = eval_batches(dataset, tcfg.batch_size, tcfg.seq_len, max_batches=tcfg.eval_batches)
    for i, (x, y) in enumerate(batches):
        mask = None
        if objective is not None:
            x, y, mask = dataclasses.astuple(objective(x, y, step=-1 - i))
        x, y = x.to(device), y.to(device)
        with autocast(device, dtype):
            logits = model(x) if mask is None else model(x, attn_mask=mask.to(device))
        losses = token_cross_entropy(logits, y)
        nats_all += float(losses.double().sum())
        n_tokens += int((y != IGNORE_INDEX).sum())
        nats, nb = nats_and_bytes(losses, y, token_bytes)
        nats_text += nats
        n_bytes += nb
    if n_tokens == 0:
        raise DataError("the validation split yields no batch; lower train.seq_len/batch_size or add data")
    return {"val_loss": nats_all / n_tokens, "val_bpb": bits_per_byte(nats_text, n_bytes)}


def moe_stats(model: Any) -> dict[str, Any]:
    """Each MoE layer's share of tokens per expert since the last call (then reset)."""
    loads = []
    for moe in getattr(model, "moe_layers", []):
        counts = moe.load.double()
        loads.append([round(v, 4) for v in (counts / counts.sum().clamp(min=1)).tolist()])
        moe.reset_load()
    return {"moe_load": loads} if loads else {}


def make_objective(tcfg: TrainConfig, tok: Any) -> Objective | None:
    if tcfg.objective == "causal":
        return None
    return Objective(
        tcfg.objective,
        tok,
        tcfg.seed,
        mlm_rate=tcfg.mlm_rate,
        fim_rate=tcfg.fim_rate,
        fim_spm_rate=tcfg.fim_spm_rate,
        span_noise=tcfg.span_noise,
        span_mean=tcfg.span_mean,
    )


def build_pretrainer(cfg: RecipeConfig, tokens_dir: Path, tokenizer_dir: Path, out_dir: Path) -> Trainer:
    from danlu.data.loader import TokenDataset, TrainLoader
    from danlu.model.presets import resolve_model_config, suggested_lr
    from danlu.model.transformer import build_model
    from danlu.parallel.runtime import init_parallel
    from danlu.tokenizer import Tokenizer

    device = resolve_device(cfg.train.device)
    dtype = resolve_dtype(cfg.train.dtype, device)
    parallel = init_parallel(cfg.parallel, device)  # None in one process
    if parallel is not None:
        device = parallel.device  # this rank's GPU under torchrun
        check_parallel_training(cfg, dtype, parallel)
        # a pipeline computes the loss from the last stage's logits
        parallel.logits_loss = functools.partial(
            summed_lm_loss, z_loss=cfg.train.z_loss, label_smoothing=cfg.train.label_smoothing
        )
    tok = Tokenizer.load(tokenizer_dir)
    check_tokens(tokens_dir, tok)
    model_cfg = resolve_model_config(cfg.model, tok.vocab_size)
    if cfg.train.seq_len > model_cfg.max_seq_len:
        raise ConfigError(
            f"train.seq_len={cfg.train.seq_len} exceeds model.max_seq_len={model_cfg.max_seq_len}; "
            "lower train.seq_len or raise model.max_seq_len"
        )
    lr = cfg.train.lr if cfg.train.lr is not None else suggested_lr(model_cfg)
    tcfg = dataclasses.replace(cfg.train, lr=lr)
    train_ds, val_ds = TokenDataset(tokens_dir, "train"), TokenDataset(tokens_dir, "val")
    token_bytes = torch.as_tensor(np.asarray(tok.token_bytes()), dtype=torch.long, device=device)
    objective = make_objective(tcfg, tok)

    # every rank builds the same initial weights from the seed, then shards or replicates them
    seed_everything(tcfg.seed)
    model = build_model(model_cfg, device) if parallel is None else parallel.build_model(model_cfg, device)
    options = {"muon_lr": tcfg.muon_lr} if tcfg.optimizer == "muon" else {}

    def prepare(batch: Any, step: int, micro: int) -> Any:
        assert objective is not None
        return dataclasses.astuple(objective(*batch, step, micro))

    hooks = Hooks(
        prepare=prepare if objective is not None else None,
        evaluate=lambda m: evaluate(m, val_ds, tcfg, token_bytes, device, dtype, objective),
        step_metrics=moe_stats if model.moe_layers else None,
        init_from=tcfg.init_from,
        transform=qat_transform(cfg),
    )
    return Trainer(
        model,
        lambda m: build_named_optimizer(m, tcfg.optimizer, tcfg, **options),
        TrainLoader(train_ds, tcfg.batch_size, tcfg.seq_len, tcfg.seed, *_dp_slice(parallel)),
        lm_loss(tcfg.z_loss, tcfg.label_smoothing),
        tcfg,
        RunInfo(Path(out_dir), model_cfg, Path(tokenizer_dir), tok.fingerprint(), cfg, name="pretrain"),
        device,
        dtype,
        hooks,
        flops_per_token=float(model.flops_per_token(tcfg.seq_len)),
        parallel=parallel,
    )


def check_parallel_training(cfg: RecipeConfig, dtype: str, parallel: Any) -> None:
    """The training options a distributed layout does not support, as one clear error each."""
    p, t = cfg.parallel, cfg.train
    if dtype == "fp16" and parallel.sharded:
        key = "parallel.dp_shard > 1" if parallel.fsdp else f"parallel.tp={p.tp}"
        raise ConfigError(f"train.dtype=fp16 with {key} is not supported (sharded parameters); use bf16")
    if not parallel.pipelined:
        return
    unsupported = {
        "train.dtype=fp16": dtype == "fp16",
        f"train.objective={t.objective}": t.objective != "causal",
        "train.grad_clip_group": t.grad_clip_group > 0,
        "train.compile": t.compile,
        "train.activation_checkpointing": bool(t.activation_checkpointing),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ConfigError(
            f"parallel.pp={p.pp} does not support {', '.join(bad)}; remove it or train without pipelining"
        )


def qat_transform(cfg: RecipeConfig) -> Any:
    """The recipe's quantization-aware training (qat:) as the Trainer's model transform, or None."""
    if cfg.qat is None:
        return None
    from danlu.quant.qat import apply_qat

    qat = cfg.qat
    return lambda model: apply_qat(model, qat)


def _dp_slice(parallel: Any) -> tuple[int, int]:
    """(this rank's data-parallel index, data-parallel ranks): which rows of each batch it trains."""
    return (0, 1) if parallel is None else (parallel.dp_rank, parallel.dp)


def run_pretrain(cfg: RecipeConfig, tokens_dir: Path, tokenizer_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Pretrain (or resume) a model on packed tokens; return {model_dir, val_loss, val_bpb, steps,
    tokens_per_s}. Writes out_dir/metrics.jsonl, loss.png, checkpoints/step-NNNNNN/ and model/."""
    trainer = build_pretrainer(cfg, Path(tokens_dir), Path(tokenizer_dir), Path(out_dir))
    parallel = trainer.parallel
    try:
        result = trainer.fit()
        save = parallel.save_model_dir if parallel is not None else save_model_dir
        model_dir = save(Path(out_dir) / "model", trainer.model, trainer.run.model_cfg, Path(tokenizer_dir))
    finally:
        if parallel is not None:
            parallel.close()
    return {"model_dir": model_dir, **result}
