"""The prune stage: `run_prune(cfg, model_dir, out_dir)`.

A model dir in; out_dir, a plain model dir whose pruned weights are zeros (it loads everywhere), out,
with config.json's "prune" (method, sparsity, totals) and sparsity.json (every layer). With
recover_steps, the pruned model is finetuned on the given text through the one Trainer, its masks
kept (danlu.compress.masks.MaskKeeper), in out_dir.recover/ (checkpoints, metrics), before it is
written. With text given, the held-out loss is measured before pruning, after it, and after the
recovery.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.compress.config import PruneConfig
from danlu.compress.distill import distill_loss_fn, evaluate_ce
from danlu.compress.masks import MaskKeeper, apply_masks, compute_masks, sparsity_report
from danlu.compress.text_data import WindowBatches, read_text, split_ids, val_windows
from danlu.io import atomic_write_json, check_replaceable_output
from danlu.model_dir import TOKENIZER_DIR, load_model, read_metadata, save_model_dir
from danlu.train.optimizers import build_named_optimizer
from danlu.train.precision import resolve_device, resolve_dtype
from danlu.train.trainer import Hooks, RunInfo, Trainer

log = logging.getLogger(__name__)

SPARSITY_FILE = "sparsity.json"


def recover(
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    batches: WindowBatches,
    val: list[Any],
    cfg: PruneConfig,
    run: RunInfo,
    device: torch.device,
    dtype: str,
) -> dict[str, Any]:
    """Finetune the pruned model for cfg.recover_steps with its pruned weights held at zero."""
    n = cfg.recover_steps
    tcfg = dataclasses.replace(
        cfg.train, max_steps=n, warmup_steps=min(cfg.train.warmup_steps, n // 10), eval_every=n, ckpt_every=n
    )
    keeper = MaskKeeper(model, masks)
    trainer = Trainer(
        model, lambda m: keeper.attach(build_named_optimizer(m, tcfg.optimizer, tcfg)), batches,
        distill_loss_fn(None, 1.0, 1.0, "forward"), tcfg, dataclasses.replace(run), device, dtype,
        Hooks(evaluate=lambda m: evaluate_ce(m, val, device, dtype)),
    )  # fmt: skip
    keeper.remask()  # a resumed run loads weights saved after a re-masked step; this costs nothing
    try:
        return trainer.fit()
    finally:
        keeper.remove()


def run_prune(
    cfg: PruneConfig, model_dir: str | Path, out_dir: str | Path, force: bool = False
) -> dict[str, Any]:
    """Prune model_dir into out_dir; returns {model_dir, report, val_loss: {before, pruned, recovered}}."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_replaceable_output(out_dir, force)
    tcfg = cfg.train
    device = resolve_device(tcfg.device)
    dtype = resolve_dtype(tcfg.dtype, device)
    model, tok, model_cfg = load_model(model_dir, device)
    val, batches = [], None
    if cfg.data:
        train_ids, val_ids = split_ids(tok.encode(read_text(cfg.data)), tcfg.seq_len, cfg.val_fraction)
        val = list(val_windows(val_ids, tcfg.batch_size, tcfg.seq_len, tcfg.eval_batches))
        batches = WindowBatches(train_ids, tcfg.batch_size, tcfg.seq_len, tcfg.seed)
    losses: dict[str, float] = {}
    if val:
        losses["before"] = evaluate_ce(model, val, device, dtype)["val_loss"]
    masks = compute_masks(model, cfg.method, cfg.sparsity, cfg.scope, cfg.skip)
    apply_masks(model, masks)
    if val:
        losses["pruned"] = evaluate_ce(model, val, device, dtype)["val_loss"]
    if cfg.recover_steps:
        assert batches is not None
        work = out_dir.with_name(out_dir.name + ".recover")
        run = RunInfo(
            work, model_cfg, model_dir / TOKENIZER_DIR, tok.fingerprint(), cfg, name="prune-recover"
        )
        model.train()
        result = recover(model, masks, batches, val, cfg, run, device, dtype)
        model.eval()
        losses["recovered"] = result.get("val_loss", math.nan)
    report = sparsity_report(model, masks)
    meta = {k: v for k, v in read_metadata(model_dir).items() if k in ("chat", "source")}
    summary = {
        "method": cfg.method, "sparsity": cfg.sparsity if cfg.method == "magnitude" else 0.5,
        "scope": cfg.scope, "recover_steps": cfg.recover_steps, "base": str(model_dir),
        "measured_sparsity": report["sparsity"], "model_sparsity": report["model_sparsity"],
        "val_loss": losses,
    }  # fmt: skip
    save_model_dir(out_dir, model, model_cfg, model_dir / TOKENIZER_DIR, meta | {"prune": summary})
    atomic_write_json(out_dir / SPARSITY_FILE, report)
    log.info("prune: %s, %.1f%% of %d pruned weights are zero", cfg.method, 100 * report["sparsity"],
             report["pruned_params"])  # fmt: skip
    return {"model_dir": out_dir, "report": report, "val_loss": losses}
