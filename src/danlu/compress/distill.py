"""The distill stage: `run_distill(cfg, teacher_dir, student, out_dir)`, a builder over the one Trainer.

A teacher model dir and a student (a model dir to start from, a model-config file, or a preset) in;
out_dir/model, a plain model dir that loads everywhere, out. The student shares the teacher's
tokenizer: a student whose vocabulary or tokenizer differs from the teacher's is refused, since the
two distributions over next tokens must range over the same ids.

    out_dir/data/generations.jsonl   sequence-level methods: the teacher's continuations (cached)
    out_dir/checkpoints/             the Trainer's step checkpoints (resumable), metrics.jsonl
    out_dir/model/                   the student

The teacher is frozen (no parameter requires grad) and runs in eval mode under no_grad, inside the
loss function: the Trainer sees only the student.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from danlu.compress.config import DistillConfig
from danlu.compress.distill_loss import distill_loss
from danlu.compress.text_data import ExampleBatches, WindowBatches, read_text, split_ids, val_windows
from danlu.config import from_dict, load_yaml
from danlu.errors import ConfigError
from danlu.io import atomic_path, sha256_json
from danlu.model.config import ModelConfig
from danlu.model_dir import (
    TOKENIZER_DIR,
    is_model_dir,
    load_model,
    load_tokenizer,
    read_model_config,
    save_model_dir,
)
from danlu.train.losses import IGNORE_INDEX
from danlu.train.optimizers import build_named_optimizer
from danlu.train.precision import autocast, resolve_device, resolve_dtype
from danlu.train.pretrain import seed_everything
from danlu.train.trainer import Hooks, LossFn, LossOutput, RunInfo, Trainer

log = logging.getLogger(__name__)


def check_shared_vocab(
    teacher_tok: Any, teacher_cfg: ModelConfig, student_tok: Any, student_cfg: ModelConfig
) -> None:
    """ConfigError unless teacher and student read and write the same token ids."""
    if (
        teacher_cfg.vocab_size != student_cfg.vocab_size
        or teacher_tok.fingerprint() != student_tok.fingerprint()
    ):
        raise ConfigError(
            f"the teacher's vocabulary ({teacher_cfg.vocab_size} tokens, tokenizer "
            f"{teacher_tok.fingerprint()[:12]}) differs from the student's ({student_cfg.vocab_size} tokens, "
            f"tokenizer {student_tok.fingerprint()[:12]}): distillation compares next-token distributions "
            "id by id, so both must share one tokenizer; build the student on the teacher's tokenizer"
        )


def resolve_student(spec: str | Path, tok: Any, teacher_cfg: ModelConfig) -> tuple[ModelConfig, Path | None]:
    """(student config, model dir it starts from or None) from a model dir, a YAML/JSON file of model
    fields (the vocabulary is the teacher's), or a preset name."""
    from danlu.model.presets import PRESETS, resolve_model_config

    path = Path(spec)
    if is_model_dir(path):
        cfg = read_model_config(path)
        check_shared_vocab(tok, teacher_cfg, load_tokenizer(path), cfg)
        return cfg, path
    if path.is_file():
        fields = load_yaml(path)
        fields.setdefault("vocab_size", 0)
        cfg = from_dict(ModelConfig, fields, prefix="student.")
    elif str(spec) in PRESETS:
        cfg = ModelConfig(preset=str(spec))
    else:
        raise ConfigError(
            f"--student {spec}: neither a model dir, a model-config file (YAML: n_layer, n_embd, ...) "
            f"nor a preset ({', '.join(PRESETS)})"
        )
    return resolve_model_config(cfg, tok.vocab_size), None


def load_teacher(teacher_dir: Path, device: torch.device) -> tuple[nn.Module, Any, ModelConfig]:
    """The teacher, frozen and in eval mode."""
    model, tok, cfg = load_model(teacher_dir, device)
    model.requires_grad_(False)
    return model.eval(), tok, cfg


def distill_loss_fn(teacher: nn.Module | None, temperature: float, alpha: float, kind: str) -> LossFn:
    """The Trainer's loss: the teacher's logits on the same inputs (no_grad) against the student's;
    with no teacher, plain cross-entropy (α ignored)."""

    def loss_fn(model: nn.Module, batch: Any) -> LossOutput:
        x, y = batch
        logits = model(x)
        if teacher is None:
            terms = distill_loss(logits, None, y, temperature, 1.0, kind)
        else:
            with torch.no_grad():
                teacher_logits = teacher(x)
            terms = distill_loss(logits, teacher_logits, y, temperature, alpha, kind)
        n = max(terms.n_tokens, 1)
        return LossOutput(
            terms.loss_sum, terms.n_tokens, metrics={"kl": terms.kl_sum / n, "ce": terms.ce_sum / n}
        )

    return loss_fn


@torch.no_grad()
def evaluate_ce(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device, dtype: str
) -> dict[str, float]:
    """val_loss: mean next-token cross-entropy (nats) over the held-out batches."""
    nats, n = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast(device, dtype):
            logits = model(x)
        nats += float(
            torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )
        )
        n += int((y != IGNORE_INDEX).sum())
    return {"val_loss": nats / max(n, 1)}


def teacher_generations(
    teacher: nn.Module, tok: Any, train_ids: np.ndarray, cfg: DistillConfig, cache: Path
) -> list[tuple[list[int], int]]:
    """(prompt + continuation ids, prompt length) for gen_prompts prompts drawn from the training
    text, continued by the teacher through the inference engine with per-prompt seeds; cached in
    `cache` (keyed by the settings and the text) so a resumed run trains on the same examples."""
    from danlu.infer.engine import Engine
    from danlu.infer.params import SamplingParams

    key = sha256_json(
        {
            "n": cfg.gen_prompts, "len": cfg.gen_prompt_len, "tokens": cfg.gen_tokens,
            "temp": cfg.gen_temperature, "seed": cfg.gen_seed, "tok": tok.fingerprint(),
            "text": sha256_json(train_ids[:: max(1, len(train_ids) // 4096)].tolist()), "n_ids": len(train_ids),
        }
    )  # fmt: skip
    if cache.is_file():
        lines = cache.read_text(encoding="utf-8").splitlines()
        head = json.loads(lines[0]) if lines else {}
        if head.get("key") == key:
            return [(r["ids"], r["prompt_len"]) for r in map(json.loads, lines[1:])]
    rng = np.random.default_rng(cfg.gen_seed)
    starts = rng.integers(0, len(train_ids) - cfg.gen_prompt_len, size=cfg.gen_prompts)
    prompts = [train_ids[s : s + cfg.gen_prompt_len].tolist() for s in starts]
    params = [
        SamplingParams(max_tokens=cfg.gen_tokens, temperature=cfg.gen_temperature, seed=cfg.gen_seed + i)
        for i in range(len(prompts))
    ]
    engine = Engine(teacher, tok, max_batch=8, max_len=cfg.gen_prompt_len + cfg.gen_tokens + 1)
    completions = engine.generate(prompts, params)
    examples = [(c.prompt_ids + c.token_ids, len(c.prompt_ids)) for c in completions if c.token_ids]
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        rows = [json.dumps({"key": key})] + [json.dumps({"ids": ids, "prompt_len": n}) for ids, n in examples]
        tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
    log.info("distill: the teacher continued %d prompts (%d tokens)", len(examples),
             sum(len(ids) - n for ids, n in examples))  # fmt: skip
    return examples


def build_distill_trainer(
    cfg: DistillConfig, teacher_dir: str | Path, student: str | Path, out_dir: str | Path
) -> Trainer:
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    tcfg = cfg.train
    device = resolve_device(tcfg.device)
    dtype = resolve_dtype(tcfg.dtype, device)
    if cfg.method == "ce":  # the baseline needs only the teacher's tokenizer
        tok, teacher_cfg, teacher = load_tokenizer(teacher_dir), read_model_config(teacher_dir), None
    else:
        teacher, tok, teacher_cfg = load_teacher(teacher_dir, device)
    student_cfg, init_dir = resolve_student(student, tok, teacher_cfg)
    check_shared_vocab(tok, teacher_cfg, tok, student_cfg)
    limit = min(student_cfg.max_seq_len, teacher_cfg.max_seq_len)
    if tcfg.seq_len > limit:
        raise ConfigError(
            f"distill seq_len={tcfg.seq_len} exceeds the student's or teacher's context {limit}"
        )
    train_ids, val_ids = split_ids(tok.encode(read_text(cfg.data)), tcfg.seq_len, cfg.val_fraction)
    val = list(val_windows(val_ids, tcfg.batch_size, tcfg.seq_len, tcfg.eval_batches))
    if cfg.method in ("sequence", "both"):
        assert teacher is not None
        examples = teacher_generations(teacher, tok, train_ids, cfg, out_dir / "data" / "generations.jsonl")
        batches: Any = ExampleBatches(examples, tcfg.batch_size, tok.pad_id, tcfg.seed)
    else:
        batches = WindowBatches(train_ids, tcfg.batch_size, tcfg.seq_len, tcfg.seed)
    seed_everything(tcfg.seed)
    from danlu.model.transformer import build_model

    model = build_model(student_cfg, device)
    in_loss = teacher if cfg.method in ("logit", "both") else None
    hooks = Hooks(evaluate=lambda m: evaluate_ce(m, val, device, dtype), init_from=init_dir)
    run = RunInfo(out_dir, student_cfg, teacher_dir / TOKENIZER_DIR, tok.fingerprint(), cfg, name="distill")
    trainer = Trainer(
        model, lambda m: build_named_optimizer(m, tcfg.optimizer, tcfg), batches,
        distill_loss_fn(in_loss, cfg.temperature, cfg.alpha, cfg.kind), tcfg, run, device, dtype, hooks,
        flops_per_token=float(model.flops_per_token(tcfg.seq_len)),
    )  # fmt: skip
    log.info(
        "distill: %s (%s KL, T=%g, alpha=%g), student %d layers x %d (%.1fM parameters), %d train / %d "
        "held-out tokens", cfg.method, cfg.kind, cfg.temperature, cfg.alpha, student_cfg.n_layer,
        student_cfg.n_embd, sum(p.numel() for p in model.parameters()) / 1e6, len(train_ids), len(val_ids),
    )  # fmt: skip
    return trainer


def run_distill(
    cfg: DistillConfig, teacher_dir: str | Path, student: str | Path, out_dir: str | Path
) -> dict[str, Any]:
    """Distil (or resume) a student from the teacher; write out_dir/model. Returns {model_dir,
    val_loss, steps, tokens_per_s, ...}."""
    trainer = build_distill_trainer(cfg, teacher_dir, student, out_dir)
    result = trainer.fit()
    extra = {"distill": {"teacher": str(teacher_dir)} | dataclasses.asdict(cfg) | {"train": None}}
    model_dir = save_model_dir(
        Path(out_dir) / "model", trainer.model.eval(), trainer.run.model_cfg, trainer.run.tokenizer_dir, extra
    )
    return {"model_dir": model_dir, **result}
