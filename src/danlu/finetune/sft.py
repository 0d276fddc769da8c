"""The SFT stage: `run_sft(cfg, base_dir, out_dir)`, a builder over the one Trainer.

A base model dir in (a danlu pretrain or an imported model), a chat model dir out:

    out_dir/data/            conversations.jsonl (what survived the rules), examples.npz (tokenized,
                             cached), manifest.json (counts and reasons, examples, instruction types)
    out_dir/checkpoints/     the Trainer's step checkpoints (resumable), metrics.jsonl, loss.png
    out_dir/model/           the result: merged weights (sft.merge), or the base weights plus
                             adapters/<name>/ that danlu.model_dir.load_model applies

Each method is a model transform and a trainable rule (`method_hooks`): full trains every weight;
lora wraps the targeted Linears (danlu.finetune.lora) and trains only the adapters; dora adds the
magnitudes; qlora first stores the targeted base Linears in NF4 (danlu.finetune.nf4); prompt, prefix
and bottleneck (danlu.finetune.prompts) train through the same Trainer, but run_sft refuses them
until a model dir can hold them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from danlu.errors import ConfigError
from danlu.finetune import templates
from danlu.finetune.config import UNSAVED_METHODS, SFTConfig
from danlu.finetune.lora import (
    ALL_TARGETS,
    FUSED_PARTS,
    AdapterSpec,
    adapter_state,
    apply_lora,
    lora_layers,
    spec_to_json,
    unwrap,
)
from danlu.finetune.packing import Example, SFTBatches, check_packing, eval_batches, fit_to_context
from danlu.finetune.sources import build_conversations
from danlu.io import atomic_path, atomic_write_json, sha256_json
from danlu.model.transformer import Transformer
from danlu.model_dir import load_model, save_model_dir
from danlu.train.losses import IGNORE_INDEX, summed_lm_loss
from danlu.train.optimizers import build_named_optimizer
from danlu.train.precision import autocast, resolve_device, resolve_dtype
from danlu.train.trainer import Hooks, LossOutput, RunInfo, Trainer

log = logging.getLogger(__name__)


def adapter_spec(cfg: SFTConfig) -> AdapterSpec:
    targets = ALL_TARGETS if "all-linear" in cfg.lora.targets else tuple(cfg.lora.targets)
    return AdapterSpec(
        r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout, targets=targets,
        rslora=cfg.lora.rslora, dora=cfg.method == "dora",
    )  # fmt: skip


def method_hooks(
    cfg: SFTConfig,
) -> tuple[Callable[[nn.Module], nn.Module] | None, Callable[[str, Any], bool] | None]:
    """(model transform, trainable rule) of the configured method."""
    if cfg.method == "full":
        return None, None
    if cfg.method in UNSAVED_METHODS:
        from danlu.finetune.prompts import LightSpec, trainable_name

        size = cfg.bottleneck_width if cfg.method == "bottleneck" else cfg.virtual_tokens
        light = LightSpec(cfg.method, size)
        return (lambda model: light.apply(model, cfg.train.seed)), (lambda name, p: trainable_name(name))
    spec = adapter_spec(cfg)

    def transform(model: nn.Module) -> nn.Module:
        if cfg.method == "qlora":
            from danlu.finetune.nf4 import quantize_linears

            suffixes = tuple(s for s, parts in FUSED_PARTS.items() if any(p in spec.targets for p in parts))
            quantize_linears(model, suffixes, cfg.nf4_block, cfg.nf4_absmax_block)
        return apply_lora(model, spec, cfg.lora.name, seed=cfg.train.seed)

    def trainable(name: str, p: Any) -> bool:
        return ".adapters." in name

    return transform, trainable


def sft_loss(model: nn.Module, batch: Any) -> LossOutput:
    """Next-token loss over the assistant tokens of a micro-batch (inputs, targets[, packing mask]).

    On a plain Transformer the output head runs only on the positions that have a target: the prompt
    and padding (often half the row or more) never pay for the vocabulary-wide matmul and softmax."""
    x, y, *rest = batch
    keep = y != IGNORE_INDEX
    head = getattr(model, "lm_head", None) if isinstance(model, Transformer) else None
    hook = None
    if head is not None:
        hook = head.register_forward_pre_hook(lambda mod, args: (args[0][keep],))
        y = y[keep]
    try:
        logits = model(x) if not rest else model(x, attn_mask=rest[0])
    finally:
        if hook is not None:
            hook.remove()
    return LossOutput(summed_lm_loss(logits, y), int(keep.sum()))


# --- data -----------------------------------------------------------------------------------------


def _val_split(cid: str, seed: int, fraction: float) -> bool:
    h = hashlib.sha256(f"{seed}:{cid}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def _save_examples(path: Path, examples: dict[str, list[Example]]) -> None:
    arrays: dict[str, np.ndarray] = {}
    for split, exs in examples.items():
        arrays[f"{split}_ids"] = np.array([t for ids, _ in exs for t in ids], dtype=np.int64)
        arrays[f"{split}_mask"] = np.array([m for _, mask in exs for m in mask], dtype=np.int8)
        arrays[f"{split}_len"] = np.array([len(ids) for ids, _ in exs], dtype=np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _load_examples(path: Path) -> dict[str, list[Example]]:
    out: dict[str, list[Example]] = {}
    with np.load(path) as z:
        for split in ("train", "val"):
            ids, mask, lens = z[f"{split}_ids"].tolist(), z[f"{split}_mask"].tolist(), z[f"{split}_len"]
            ends = np.cumsum(lens).tolist()
            starts = [0, *ends[:-1]]
            out[split] = [(ids[s:e], mask[s:e]) for s, e in zip(starts, ends, strict=True)]
    return out


def prepare_data(cfg: SFTConfig, tok: Any, data_dir: Path) -> tuple[dict[str, list[Example]], dict[str, Any]]:
    """Train/val examples and the data manifest, built once and cached under data_dir (keyed by the
    data settings, the tokenizer and the context length)."""
    template = templates.resolve(cfg.data.template, tok)
    key = sha256_json(
        {"data": dataclasses.asdict(cfg.data), "tok": tok.fingerprint(), "seq_len": cfg.train.seq_len, "v": 2}
    )
    manifest_path = data_dir / "manifest.json"
    if manifest_path.is_file() and (data_dir / "examples.npz").is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("key") == key:
            return _load_examples(data_dir / "examples.npz"), manifest
    convos, report = build_conversations(cfg.data)
    splits: dict[str, list[Example]] = {"train": [], "val": []}
    names: dict[str, list[str]] = {"train": [], "val": []}
    for c in convos:
        split = "val" if _val_split(c["id"], cfg.data.seed, cfg.data.val_fraction) else "train"
        splits[split].append(templates.encode(tok, c["messages"], template))
        names[split].append(str(c["id"]))
    fitted = {
        s: fit_to_context(exs, cfg.train.seq_len, cfg.data.truncation, names[s]) for s, exs in splits.items()
    }
    examples = {s: f.examples for s, f in fitted.items()}
    if not examples["val"] or not examples["train"]:
        raise ConfigError(
            f"SFT data: {len(examples['train'])} train and {len(examples['val'])} validation conversations "
            "fit the context; add data, raise sft.train.seq_len or sft.data.val_fraction"
        )
    report["context"] = {
        s: {
            "too_long": f.too_long,
            "no_target": f.no_target,
            "kept": len(f.examples),
            "policy": cfg.data.truncation,
            "examples": {"too_long": f.too_long_examples, "no_target": f.no_target_examples},
        }
        for s, f in fitted.items()
    }
    report["tokens"] = {
        s: {"total": sum(len(i) for i, _ in exs), "target": sum(sum(m[1:]) for _, m in exs)}
        for s, exs in examples.items()
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(data_dir / "conversations.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in convos), encoding="utf-8")
    _save_examples(data_dir / "examples.npz", examples)
    manifest = {"key": key, "template": template, **report}
    atomic_write_json(manifest_path, manifest)
    return examples, manifest


@torch.no_grad()
def evaluate(
    model: nn.Module,
    examples: list[Example],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    dtype: str,
    max_batches: int = 0,
) -> dict[str, float]:
    """val_loss: mean nats per assistant token over the validation examples (the first max_batches
    batches of them; 0: every one)."""
    nats, n = 0.0, 0
    for k, (x, y) in enumerate(eval_batches(examples, batch_size, pad_id)):
        if max_batches and k >= max_batches:
            break
        x, y = x.to(device), y.to(device)
        with autocast(device, dtype):
            logits = model(x)
        nats += float(
            torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )
        )
        n += int((y != IGNORE_INDEX).sum())
    return {"val_loss": nats / n}


# --- the stage ------------------------------------------------------------------------------------


def trainable_report(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Parameter counts and bytes: trainable, frozen, frozen storage (NF4 buffers included), optimizer."""
    params = list(model.parameters())
    train = [p for p in params if p.requires_grad]
    out = {
        "trainable_params": sum(p.numel() for p in train),
        "total_params": sum(p.numel() for p in params),
        "trainable_bytes": sum(p.numel() * p.element_size() for p in train),
        "frozen_bytes": sum(p.numel() * p.element_size() for p in params if not p.requires_grad)
        + sum(b.numel() * b.element_size() for b in model.buffers()),
    }
    out["trainable_fraction"] = out["trainable_params"] / max(out["total_params"], 1)
    if optimizer is not None:
        from danlu.train.optimizers import state_bytes

        out["optimizer_state_bytes"] = int(state_bytes(optimizer))
    return out


def build_sft_trainer(cfg: SFTConfig, base_dir: Path, out_dir: Path) -> tuple[Trainer, dict[str, Any]]:
    device = resolve_device(cfg.train.device)
    dtype = resolve_dtype(cfg.train.dtype, device)
    torch.manual_seed(cfg.train.seed)
    model, tok, model_cfg = load_model(base_dir, device)
    if cfg.train.seq_len > model_cfg.max_seq_len:
        raise ConfigError(
            f"sft.train.seq_len={cfg.train.seq_len} exceeds the base model's context {model_cfg.max_seq_len}"
        )
    if cfg.data.packing:
        check_packing(model_cfg)
        if cfg.method in ("prompt", "prefix"):
            raise ConfigError(
                f"sft.method={cfg.method} needs sft.data.packing=false: a packed conversation's distance "
                "to the prompt would depend on its place in the row"
            )
    examples, manifest = prepare_data(cfg, tok, out_dir / "data")
    tcfg = dataclasses.replace(cfg.train, lr=cfg.lr)
    transform, trainable = method_hooks(cfg)
    pad = tok.pad_id
    hooks = Hooks(
        transform=transform,
        trainable=trainable,
        evaluate=lambda m: evaluate(
            m, examples["val"], tcfg.batch_size, pad, device, dtype, max_batches=tcfg.eval_batches
        ),
    )
    batches = SFTBatches(examples["train"], tcfg.batch_size, tcfg.seq_len, pad, tcfg.seed, cfg.data.packing)
    run = RunInfo(out_dir, model_cfg, base_dir / "tokenizer", tok.fingerprint(), cfg, name="sft")
    trainer = Trainer(
        model, lambda m: build_named_optimizer(m, tcfg.optimizer, tcfg), batches, sft_loss,
        tcfg, run, device, dtype, hooks, flops_per_token=float(model.flops_per_token(tcfg.seq_len)),
    )  # fmt: skip
    report = trainable_report(trainer.model, trainer.optimizer)
    log.info(
        "sft: %s, %d of %d parameters train (%.2f%%), %d train / %d val conversations",
        cfg.method, report["trainable_params"], report["total_params"], 100 * report["trainable_fraction"],
        len(examples["train"]), len(examples["val"]),
    )  # fmt: skip
    manifest["parameters"] = report
    atomic_write_json(out_dir / "data" / "manifest.json", manifest)
    return trainer, manifest


def run_sft(cfg: SFTConfig, base_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Finetune (or resume) base_dir on the configured conversations; write out_dir/model. Returns
    {model_dir, val_loss, val_loss_before, steps, tokens_per_s, ...}."""
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if cfg.method in UNSAVED_METHODS:
        raise ConfigError(
            f"sft.method={cfg.method} trains (build_sft_trainer) but a model dir cannot hold a {cfg.method} "
            "yet: model dirs load LoRA and DoRA adapters; use full, lora, dora or qlora"
        )
    trainer, manifest = build_sft_trainer(cfg, base_dir, out_dir)
    result = trainer.fit()
    model = trainer.model.eval()
    template = manifest["template"]
    extra = {
        "chat": template in ("danlu", "model"),
        "sft": {"method": cfg.method, "template": template, "base": str(base_dir)},
    }
    tok_dir = base_dir / "tokenizer"
    if cfg.method == "qlora":
        from danlu.finetune.nf4 import dequantize_linears

        dequantize_linears(model)  # the base the adapter trained against, in fp32
    if cfg.method == "full":
        model_dir = save_model_dir(out_dir / "model", model, trainer.run.model_cfg, tok_dir, extra)
    elif cfg.merge:
        model_dir = save_model_dir(out_dir / "model", unwrap(model), trainer.run.model_cfg, tok_dir, extra)
    else:
        name = cfg.lora.name
        state = adapter_state(model, name)
        spec = next(layer.adapters[name].spec for _, layer in lora_layers(model))
        adapter = (name, spec_to_json(spec), state)
        base = unwrap(model, merge=False)
        model_dir = save_model_dir(out_dir / "model", base, trainer.run.model_cfg, tok_dir, extra, adapter)
    return {"model_dir": model_dir, "template": template, **result}
