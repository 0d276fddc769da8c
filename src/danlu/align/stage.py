"""The align stage: `run_align(cfg, base_dir, out_dir)`, a builder over the one Trainer.

A chat model dir in (the run's SFT model by default), an aligned model dir (or a reward model) out:

    out_dir/data/         pairs.jsonl (train and val, after the checks), manifest.json (counts, drops),
                          reference.pt (the base model's log-probs of every row, when precomputed)
    out_dir/checkpoints/  the Trainer's step checkpoints (resumable), metrics.jsonl, loss.png
    out_dir/model/        the result: merged weights (a plain model dir), or for rm the body and
                          reward_head.safetensors (danlu.align.reward)

The policy trains with LoRA (adapters merged at the end) or fully. The reference of DPO, IPO, cDPO
and KTO is the base model: its log-probs precomputed once, or (reference=adapters) recomputed each
step by the policy with its adapters disabled, which needs no second model. The Trainer normalizes
each step's summed loss by its number of pairs (KTO: completions). Held-out metrics every eval_every
steps: the method's loss, its reward accuracy and margin, and the policy's own ranking of the pairs
(summed and per-token log-prob of chosen above rejected).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.align import losses as L
from danlu.align.batches import (
    Completion,
    Encoded,
    IndexStream,
    batch_sizes,
    in_order,
    kto_batch,
    paired_batch,
    unpaired,
)
from danlu.align.config import RL_METHODS, WITH_REFERENCE, AlignConfig
from danlu.align.logps import precompute, sequence_logps
from danlu.align.pair_cache import prepare_pairs
from danlu.align.reward import RewardModel, save_reward_model
from danlu.align.unpaired import prepare_unpaired
from danlu.errors import ConfigError
from danlu.finetune.lora import ALL_TARGETS, AdapterSpec, adapters_disabled, apply_lora, unwrap
from danlu.io import atomic_path, atomic_write_json, sha256_file, sha256_json
from danlu.model_dir import MODEL_FILE, load_model, read_metadata, save_model_dir
from danlu.train.optimizers import build_named_optimizer
from danlu.train.precision import autocast, resolve_device, resolve_dtype
from danlu.train.trainer import Hooks, LossOutput, RunInfo, Trainer

log = logging.getLogger(__name__)


# --- data -----------------------------------------------------------------------------------------


def _model_hash(model_dir: Path) -> str:
    adapters = sorted(p for p in (model_dir / "adapters").rglob("*") if p.is_file())
    return sha256_json([sha256_file(model_dir / MODEL_FILE), *(sha256_file(p) for p in adapters)])


# --- losses per method ----------------------------------------------------------------------------


def _reference(
    model: nn.Module, batch: dict[str, torch.Tensor], key: str, ids: str, mask: str
) -> torch.Tensor:
    """The batch's precomputed reference log-probs, or the policy's with its adapters disabled."""
    if key in batch:
        return batch[key]
    with torch.no_grad(), adapters_disabled(model):
        return sequence_logps(model, batch[ids], batch[mask])[0].detach()


def paired_loss(
    cfg: AlignConfig, lp: torch.Tensor, n: torch.Tensor, ref: Callable[[], torch.Tensor]
) -> L.PreferenceLoss:
    """A paired method's losses from the policy's log-probs and lengths [2B] (chosen rows first);
    ref() gives the reference's log-probs of the same rows, for the methods that use one."""
    m, beta = cfg.method, cfg.loss_beta
    (pc, pr), (lc, lr) = lp.chunk(2), n.chunk(2)
    if m == "simpo":
        return L.simpo(pc, pr, lc, lr, beta, cfg.gamma, 0.0)
    if m == "orpo":
        return L.orpo(pc, pr, lc, lr, beta)
    rc, rr = ref().chunk(2)
    if m == "ipo":
        return L.ipo(pc, pr, rc, rr, lc, lr, beta)
    return L.cdpo(pc, pr, rc, rr, beta, cfg.label_smoothing if m == "cdpo" else 0.0)


def preference_loss(cfg: AlignConfig, model: nn.Module, batch: dict[str, torch.Tensor]) -> L.PreferenceLoss:
    """The configured method's losses on one batch (see danlu.align.batches for the layouts)."""
    if cfg.method == "rm":
        c, r = model.scores(batch["ids"], batch["mask"]).chunk(2)  # type: ignore[operator]
        return L.bradley_terry(c, r, batch["margin"] if cfg.use_margin else None)
    lp, n = sequence_logps(model, batch["ids"], batch["mask"])
    if cfg.method == "kto":
        with torch.no_grad():
            kl = sequence_logps(model, batch["kl_ids"], batch["kl_mask"])[0]
        ref = _reference(model, batch, "ref", "ids", "mask")
        ref_kl = _reference(model, batch, "ref_kl", "kl_ids", "kl_mask")
        return L.kto(
            lp, ref, batch["label"], kl, ref_kl, cfg.loss_beta, cfg.desirable_weight, cfg.undesirable_weight
        )
    return paired_loss(cfg, lp, n, lambda: _reference(model, batch, "ref", "ids", "mask"))


def make_loss_fn(cfg: AlignConfig) -> Callable[[nn.Module, Any], LossOutput]:
    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        out = preference_loss(cfg, model, batch)
        metrics = {k: v for k, v in out.metrics().items() if k != "loss"}
        return LossOutput(out.losses.sum(), batch_sizes(batch)[1], metrics=metrics)

    return loss_fn


# --- evaluation -----------------------------------------------------------------------------------


def _on(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    cfg: AlignConfig,
    model: nn.Module,
    val: list[Encoded],
    refs: dict[str, torch.Tensor],
    pad_id: int,
    device: torch.device,
    dtype: str,
    extra_val: Sequence[Completion] = (),
) -> dict[str, float]:
    """Held-out numbers over every val pair, in order: val_loss (the method's mean loss; KTO's over
    the pairs' completions), val_accuracy and val_margin (the method's rewards: a reward model's
    scores), and the policy's own ranking: val_logp_accuracy (summed log-prob of chosen above
    rejected) and val_logp_norm_accuracy (per token). extra_val: KTO's held-out unpaired completions,
    in its loss beside the pairs' completions."""
    bs, beta = cfg.train.batch_size, cfg.loss_beta
    got: dict[str, list[torch.Tensor]] = {k: [] for k in ("loss", "c", "r", "pc", "pr", "lc", "lr")}
    for idx in in_order(len(val), bs):
        pref = refs["val"][idx] if "val" in refs else None
        batch = _on(paired_batch([val[i] for i in idx], pad_id, pref), device)
        with autocast(device, dtype):
            if cfg.method == "rm":
                out = preference_loss(cfg, model, batch)
            else:
                lp, n = sequence_logps(model, batch["ids"], batch["mask"])
                ref = lambda b=batch: _reference(model, b, "ref", "ids", "mask")  # noqa: E731
                if cfg.method == "kto":  # rewards as DPO's: beta times the log-ratios
                    rc, rr = ref().chunk(2)
                    (pc, pr) = lp.chunk(2)
                    out = L.PreferenceLoss(torch.zeros(0), beta * (pc - rc), beta * (pr - rr))
                else:
                    out = paired_loss(cfg, lp, n, ref)
                for k, v in zip(("pc", "pr", "lc", "lr"), (*lp.chunk(2), *n.chunk(2)), strict=True):
                    got[k].append(v.float().cpu())
        got["loss"].append(out.losses.float().cpu())
        got["c"].append(out.chosen_rewards.float().cpu())
        got["r"].append(out.rejected_rewards.float().cpu())
    if cfg.method == "kto":
        items = [*unpaired(val), *extra_val]
        got["loss"] = []
        for idx in in_order(len(items), bs):
            pref = refs["val_kto"][idx] if "val_kto" in refs else None
            batch = _on(kto_batch([items[i] for i in idx], pad_id, pref), device)
            with autocast(device, dtype):
                got["loss"].append(preference_loss(cfg, model, batch).losses.float().cpu())
    t = {k: torch.cat(v) for k, v in got.items() if v}
    res = {
        "val_loss": float(t["loss"].mean()),
        "val_accuracy": float((t["c"] > t["r"]).float().mean()),
        "val_margin": float((t["c"] - t["r"]).mean()),
    }
    if cfg.method != "rm":
        res["val_logp_accuracy"] = float((t["pc"] > t["pr"]).float().mean())
        res["val_logp_norm_accuracy"] = float((t["pc"] / t["lc"] > t["pr"] / t["lr"]).float().mean())
    return res


# --- the stage ------------------------------------------------------------------------------------


def reference_logps(
    cfg: AlignConfig,
    base_dir: Path,
    encoded: dict[str, list[Encoded]],
    pad_id: int,
    path: Path,
    device,
    dtype,
    extra: dict[str, list[Completion]] | None = None,
) -> dict[str, torch.Tensor]:
    """The base model's log-probs of every row the method compares with it, computed once and kept
    in path (keyed by the base model's files and the encoded data). extra: KTO's unpaired
    completions, after the pairs' own."""
    if cfg.method not in WITH_REFERENCE or cfg.reference != "precompute":
        return {}
    key = sha256_json(
        {
            "base": _model_hash(base_dir),
            "method": cfg.method == "kto",
            "pairs": [[dataclasses.astuple(e) for e in encoded[s]] for s in ("train", "val")],
            **(
                {"unpaired": {s: [dataclasses.astuple(c) for c in v] for s, v in extra.items()}}
                if extra
                else {}
            ),
        }
    )
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved.get("key") == key:
            return saved["logps"]
    model, _, _ = load_model(base_dir, device)
    bs = cfg.train.batch_size
    pairs = lambda items: paired_batch(items, pad_id)  # noqa: E731
    kto = lambda items: kto_batch(items, pad_id)  # noqa: E731
    kto_keys = (("ids", "mask"), ("kl_ids", "kl_mask"))
    out = {"val": precompute(model, encoded["val"], pairs, (("ids", "mask"),), bs, device, dtype)}
    if cfg.method == "kto":
        extra = extra or {"train": [], "val": []}
        train_items, val_items = (
            [*unpaired(encoded["train"]), *extra["train"]],
            [*unpaired(encoded["val"]), *extra["val"]],
        )
        out["train"] = precompute(model, train_items, kto, kto_keys, bs, device, dtype)
        out["val_kto"] = precompute(model, val_items, kto, kto_keys, bs, device, dtype)
    else:
        out["train"] = precompute(model, encoded["train"], pairs, (("ids", "mask"),), bs, device, dtype)
    with atomic_path(path) as tmp:
        torch.save({"key": key, "logps": out}, tmp)
    log.info(
        "align: reference log-probs of %d train and %d val rows computed", len(out["train"]), len(out["val"])
    )
    return out


def method_hooks(
    cfg: AlignConfig,
) -> tuple[Callable[[nn.Module], nn.Module], Callable[[str, Any], bool] | None]:
    """(model transform, trainable rule): a reward head for rm, then LoRA adapters unless full."""
    spec = None
    if cfg.tune == "lora":
        targets = ALL_TARGETS if "all-linear" in cfg.lora.targets else tuple(cfg.lora.targets)
        spec = AdapterSpec(r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout, targets=targets,
                           rslora=cfg.lora.rslora)  # fmt: skip

    def transform(model: nn.Module) -> nn.Module:
        if cfg.method == "rm":
            torch.manual_seed(cfg.train.seed)
            model = RewardModel(model)
            if spec is not None:
                apply_lora(model.body, spec, cfg.lora.name, seed=cfg.train.seed)
            return model
        return apply_lora(model, spec, cfg.lora.name, seed=cfg.train.seed) if spec is not None else model

    def trainable(name: str, p: Any) -> bool:
        return ".adapters." in name or name.startswith("body.lm_head.")

    return transform, (trainable if spec is not None else None)


def build_align_trainer(cfg: AlignConfig, base_dir: Path, out_dir: Path) -> tuple[Trainer, dict[str, Any]]:
    """The Trainer of the stage and the data manifest; Hooks.evaluate is the held-out evaluation."""
    device = resolve_device(cfg.train.device)
    dtype = resolve_dtype(cfg.train.dtype, device)
    torch.manual_seed(cfg.train.seed)
    model, tok, model_cfg = load_model(base_dir, device)
    if cfg.train.seq_len > model_cfg.max_seq_len:
        raise ConfigError(
            f"align.train.seq_len={cfg.train.seq_len} exceeds the base model's context {model_cfg.max_seq_len}"
        )
    encoded, manifest = prepare_pairs(cfg, tok, out_dir / "data")
    extra, manifest["unpaired"] = prepare_unpaired(
        cfg.data, tok, manifest["template"], cfg.train.seq_len + 1, out_dir / "data"
    )
    pad = tok.pad_id
    refs = reference_logps(
        cfg, base_dir, encoded, pad, out_dir / "data" / "reference.pt", device, dtype, extra
    )
    tcfg = dataclasses.replace(cfg.train, lr=cfg.lr)
    train = encoded["train"]
    if cfg.method == "kto":
        items = [*unpaired(train), *extra["train"]]
        collate = lambda idx: kto_batch([items[i] for i in idx], pad, refs["train"][idx] if refs else None)  # noqa: E731
        n_items = len(items)
    else:
        collate = lambda idx: paired_batch([train[i] for i in idx], pad, refs["train"][idx] if refs else None)  # noqa: E731
        n_items = len(train)
    batches = IndexStream(n_items, tcfg.batch_size, tcfg.seed, collate)
    transform, trainable = method_hooks(cfg)
    hooks = Hooks(
        transform=transform,
        trainable=trainable,
        sizes=batch_sizes,
        evaluate=lambda m: evaluate(cfg, m, encoded["val"], refs, pad, device, dtype, extra["val"]),
    )
    run = RunInfo(
        out_dir, model_cfg, base_dir / "tokenizer", tok.fingerprint(), cfg, name=f"align-{cfg.method}"
    )
    trainer = Trainer(
        model, lambda m: build_named_optimizer(m, tcfg.optimizer, tcfg), batches, make_loss_fn(cfg),
        tcfg, run, device, dtype, hooks, flops_per_token=float(model.flops_per_token(tcfg.seq_len)),
    )  # fmt: skip
    n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    log.info(
        "align: %s (%s), %d parameters train, %d train / %d val pairs",
        cfg.method, cfg.tune, n_train, len(encoded["train"]), len(encoded["val"]),
    )  # fmt: skip
    manifest["trainable_params"] = n_train
    atomic_write_json(out_dir / "data" / "manifest.json", manifest)
    return trainer, manifest


def run_align(cfg: AlignConfig, base_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Align (or resume aligning) base_dir on the configured preference pairs; write out_dir/model.
    Returns the last held-out evaluation, the one before training (`before`), steps, tokens_per_s."""
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if cfg.method in RL_METHODS:
        from danlu.align.rl_stage import run_rl

        return run_rl(cfg, base_dir, out_dir)
    trainer, _ = build_align_trainer(cfg, base_dir, out_dir)
    before_path = out_dir / "data" / "before.json"
    if before_path.is_file():
        before = json.loads(before_path.read_text())
    else:  # the starting model's held-out numbers, before any step
        trainer.model.eval()
        assert trainer.hooks.evaluate is not None
        before = trainer.hooks.evaluate(trainer.model)
        trainer.model.train()
        atomic_write_json(before_path, before)
    result = trainer.fit()
    model = trainer.model.eval()
    meta = read_metadata(base_dir)
    extra = {
        "chat": bool(meta.get("chat", False)),
        "align": {"method": cfg.method, "tune": cfg.tune, "beta": cfg.loss_beta, "base": str(base_dir)},
    }
    tok_dir = base_dir / "tokenizer"
    if cfg.method == "rm":
        if cfg.tune == "lora":
            unwrap(model.body)
        model_dir = save_reward_model(out_dir / "model", model, trainer.run.model_cfg, tok_dir, extra)
    else:
        plain = unwrap(model) if cfg.tune == "lora" else model
        model_dir = save_model_dir(out_dir / "model", plain, trainer.run.model_cfg, tok_dir, extra)
    return {"model_dir": model_dir, "before": before, **result}
