"""The quantize stage: a model dir in, a quantized model dir out, behind an accuracy gate.

text      the calibration text (quantize.calib, or the built-in Shakespeare corpus); its last
          `gate_chars` characters are held out for the gate unless quantize.gate_ppl names a file
calib     `calib_samples` windows of `calib_seq_len` tokens drawn (seeded) from the rest
quantize  danlu.quant.apply.quantize_model
gate      perplexity of the held-out text before and after (and task accuracy, if asked); a model
          whose relative increase exceeds the threshold is refused, nothing is written
out       save_quantized, atomically; an output that holds anything but a
          model dir is refused before any work
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.config import to_dict
from danlu.errors import ConfigError, DanluError, DataError
from danlu.quant.config import QuantConfig

log = logging.getLogger(__name__)

GATE_WINDOW = 1024  # tokens per perplexity window of the gate (bounds the logits' memory)


class QuantGateFailed(DanluError):
    """The quantized model lost more accuracy than the gate allows."""


def calibration_text(cfg: QuantConfig) -> str:
    if cfg.calib:
        try:
            text = Path(cfg.calib).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(
                f"quantize.calib: cannot read {cfg.calib} ({e}); give a UTF-8 text file"
            ) from None
    else:
        from danlu.data.sources import read_source

        text = "\n\n".join(doc["text"] for doc in read_source("shakespeare"))
    if not text.strip():
        raise DataError(f"calibration text {cfg.calib or 'shakespeare'} is empty")
    return text


def split_text(text: str, cfg: QuantConfig) -> tuple[str, str]:
    """(calibration part, held-out gate text)."""
    if cfg.gate_ppl:
        try:
            held = Path(cfg.gate_ppl).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"quantize.gate_ppl: cannot read {cfg.gate_ppl} ({e})") from None
        return text, held[: cfg.gate_chars]
    if len(text) < 2 * cfg.gate_chars:
        raise DataError(
            f"calibration text has {len(text)} characters; the gate holds out the last {cfg.gate_chars}: "
            "give a longer text, a smaller quantize.gate_chars, or quantize.gate_ppl"
        )
    return text[: -cfg.gate_chars], text[-cfg.gate_chars :]


def calibration_ids(tok: Any, text: str, cfg: QuantConfig) -> torch.Tensor:
    """calib_samples windows [n, calib_seq_len] of token ids, each from a seeded random place in text."""
    rng = random.Random(cfg.seed)
    chars = cfg.calib_seq_len * 12  # enough characters for calib_seq_len tokens of any tokenizer here
    rows: list[list[int]] = []
    for _ in range(cfg.calib_samples * 4):
        start = rng.randrange(max(len(text) - chars, 1))
        ids = tok.encode(text[start : start + chars])[1 : cfg.calib_seq_len + 1]  # skip a cut token
        if len(ids) == cfg.calib_seq_len:
            rows.append(ids)
        if len(rows) == cfg.calib_samples:
            return torch.tensor(rows, dtype=torch.long)
    raise DataError(
        f"calibration text too short for {cfg.calib_samples} windows of {cfg.calib_seq_len} tokens"
    )


@torch.no_grad()
def gate_perplexity(model: nn.Module, tok: Any, text: str) -> float:
    from danlu.eval.perplexity import perplexity
    from danlu.eval.scoring import Scorer

    max_len = min(GATE_WINDOW, model.cfg.max_seq_len)
    return float(perplexity(Scorer(model, tok, batch_size=4), [text], max_len=max_len)["perplexity"])


def task_accuracy(model: nn.Module, tok: Any, cfg: QuantConfig) -> dict[str, float]:
    from danlu.eval.harness import EvalConfig, evaluate

    if not cfg.gate_tasks:
        return {}
    out = evaluate(model, tok, EvalConfig(tasks=cfg.gate_tasks, limit=cfg.gate_limit))
    return {name: float(res["acc"]) for name, res in out["results"].items()}


def gate_verdict(before: dict[str, Any], after: dict[str, Any], cfg: QuantConfig) -> dict[str, Any]:
    """The gate's numbers and whether they pass: relative perplexity increase and task drops."""
    increase = after["perplexity"] / before["perplexity"] - 1
    drops = {
        t: (before["tasks"][t] - after["tasks"][t]) / max(before["tasks"][t], 1e-9) for t in before["tasks"]
    }
    failures = []
    if increase > cfg.threshold():
        failures.append(f"perplexity +{increase:.2%} (allowed {cfg.threshold():.0%})")
    for task, drop in drops.items():
        if drop > cfg.task_threshold():
            failures.append(f"{task} accuracy -{drop:.2%} (allowed {cfg.task_threshold():.0%})")
    return {
        "before": before,
        "after": after,
        "ppl_increase": increase,
        "task_drops": drops,
        "passed": not failures,
        "failures": failures,
    }


def _measure(model: nn.Module, tok: Any, held: str, cfg: QuantConfig) -> dict[str, Any]:
    return {"perplexity": gate_perplexity(model, tok, held), "tasks": task_accuracy(model, tok, cfg)}


def _check_qat(model_dir: Path, entry: Any, cfg: QuantConfig) -> dict[str, Any]:
    """A model trained through fake quantization must be quantized the way it trained; returns what
    the quantized dir's "quant" records of that training."""
    if not entry:
        return {}
    from danlu.quant.qat import deployed_matches, qat_config

    why = deployed_matches(qat_config(entry, str(model_dir)), cfg)
    if why is not None:
        log.warning(
            "%s trained through fake quantization, and these settings quantize it otherwise (%s): "
            "the quantized model is not the trained one",
            model_dir,
            why,
        )
    return {"qat": entry, "qat_matched": why is None}


def run_quantize(
    model_dir: str | Path, out: str | Path, cfg: QuantConfig, force: bool = False
) -> dict[str, Any]:
    """Quantize the model in model_dir into the model dir out; returns the gate and a summary."""
    from danlu.io import check_replaceable_output
    from danlu.model_dir import TOKENIZER_DIR, load_model, read_metadata, require_files
    from danlu.quant.apply import quantize_model

    model_dir, out = Path(model_dir), Path(out)
    if out.resolve() == model_dir.resolve():
        raise ConfigError(f"{out} is the input model dir; write the quantized model to another path")
    check_replaceable_output(out, force)
    require_files(model_dir, ("config.json",))
    meta = read_metadata(model_dir)
    if meta.get("quant"):
        raise ConfigError(f"{model_dir} is already quantized ({meta['quant']}); quantize its fp32 source")
    if meta.get("adapter"):
        raise ConfigError(f"{model_dir} holds unmerged adapters; quantize a merged model dir")
    trained = _check_qat(model_dir, meta.pop("qat", None), cfg)
    model, tok, mcfg = load_model(model_dir)
    if cfg.calib_seq_len > mcfg.max_seq_len:
        cfg = dataclasses.replace(cfg, calib_seq_len=mcfg.max_seq_len)
    calib_part, held = split_text(calibration_text(cfg), cfg)
    ids = calibration_ids(tok, calib_part, cfg)
    t0 = time.perf_counter()
    before = _measure(model, tok, held, cfg) if cfg.gate else None
    layers = quantize_model(model, cfg, ids)
    seconds = time.perf_counter() - t0
    gate = gate_verdict(before, _measure(model, tok, held, cfg), cfg) if before is not None else None
    if gate is not None and not gate["passed"]:
        hint = "" if cfg.method in ("gptq", "awq") else "--method gptq or awq, "
        raise QuantGateFailed(
            f"{cfg.method} {cfg.bits}-bit fails the accuracy gate: {'; '.join(gate['failures'])} on "
            f"{len(held)} held-out characters (perplexity {gate['before']['perplexity']:.3f} -> "
            f"{gate['after']['perplexity']:.3f}); nothing written. Try {hint}more bits, a smaller "
            "--group-size, more --calib-samples, or --max-ppl-increase / --no-gate to accept it"
        )
    quant = {"method": cfg.method, "bits": cfg.bits, "group_size": cfg.group_size} | trained
    report = {"config": to_dict(cfg), "seconds": seconds, "gate": gate, "layers": layers}
    save_quantized(out, model, meta, model_dir / TOKENIZER_DIR, quant, report)
    log.info("quantized %d layers (%s, %d bits) into %s", len(layers), cfg.method, cfg.bits, out)
    return {"model_dir": out, "layers": len(layers), "gate": gate, "seconds": seconds}


def save_quantized(
    path: str | Path,
    model: nn.Module,
    metadata: dict[str, Any],
    tokenizer_dir: str | Path,
    quant: dict[str, Any],
    report: dict[str, Any] | None = None,
) -> Path:
    """Write a quantized model dir atomically (metadata: config.json's content; quant, at least
    {"method": ...}, becomes its "quant")."""
    from danlu.io import atomic_dir
    from danlu.model_dir import write_model_files
    from danlu.quant.store import QUANT_CONFIG, QUANT_DIR, REPORT, model_layout

    layout = model_layout(model, quant["method"])
    with atomic_dir(path) as tmp:
        write_model_files(tmp, model, metadata | {"quant": quant}, Path(tokenizer_dir))
        (tmp / QUANT_DIR).mkdir()
        (tmp / QUANT_DIR / QUANT_CONFIG).write_text(json.dumps(layout, indent=2) + "\n", encoding="utf-8")
        (tmp / QUANT_DIR / REPORT).write_text(json.dumps(report or {}, indent=2) + "\n", encoding="utf-8")
    return Path(path)
