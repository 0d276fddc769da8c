"""The recipe stages after training: quantize and distill the recipe's last trained model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol

from danlu.config import to_dict
from danlu.errors import ConfigError
from danlu.io import local_input_fingerprint
from danlu.recipe import RecipeConfig


class RunLayout(Protocol):
    """What these stages read of danlu.run.RunLayout (not imported: danlu.run imports this module)."""

    root: Path

    @property
    def model(self) -> Path: ...

    @property
    def docs(self) -> Path: ...

    def path(self, stage: str) -> Path: ...


def last_training_stage(cfg: RecipeConfig) -> str:
    """The recipe's last training stage: align, sft or pretrain."""
    return "align" if cfg.align is not None else "sft" if cfg.sft is not None else "pretrain"


def last_trained_model(cfg: RecipeConfig, layout: RunLayout) -> Path:
    """The model of the recipe's last training stage: align's, sft's, or the pretrained one."""
    stage = last_training_stage(cfg)
    return layout.model if stage == "pretrain" else layout.path(stage) / "model"


def run_quantize_stage(cfg: RecipeConfig, layout: RunLayout) -> dict[str, Any]:
    """Quantize the last trained model into quantized/, calibrating on the run's training documents
    and gating on its validation documents unless quantize.calib names a text."""
    from danlu.data.documents import document_texts
    from danlu.io import atomic_write_text
    from danlu.quant.config import QuantConfig
    from danlu.quant.stage import run_quantize

    qcfg = cfg.quantize_config() or QuantConfig()
    if qcfg.calib is None:
        texts = layout.root / "quant_calib"
        atomic_write_text(texts / "calib.txt", "\n\n".join(document_texts(layout.docs, "train")))
        gate = "\n\n".join(document_texts(layout.docs, "val"))
        if gate.strip():
            atomic_write_text(texts / "gate.txt", gate)
        calib = {"calib": str(texts / "calib.txt")}
        qcfg = dataclasses.replace(
            qcfg, **calib, **({"gate_ppl": str(texts / "gate.txt")} if gate.strip() else {})
        )
    result = run_quantize(last_trained_model(cfg, layout), layout.path("quantize"), qcfg, force=True)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}


def quantize_settings(cfg: RecipeConfig) -> dict[str, Any]:
    qcfg = cfg.quantize_config()
    calib = [p for p in (qcfg.calib, qcfg.gate_ppl) if p] if qcfg is not None else []
    return {
        "quantize": None if qcfg is None else to_dict(qcfg),
        "last": last_training_stage(cfg),
        "calib": local_input_fingerprint(calib),
    }


def quantize_summary(r: dict[str, Any], out: Path) -> str:
    gate = r.get("gate")
    if not gate:
        return f"quantized model: {r['model_dir']} ({r['layers']} layers, no gate)"
    before, after = gate["before"]["perplexity"], gate["after"]["perplexity"]
    return (
        f"quantized model: {r['model_dir']} ({r['layers']} layers)  gate passed: perplexity "
        f"{before:.3f} -> {after:.3f} ({gate['ppl_increase']:+.2%})"
    )


def run_distill_stage(cfg: RecipeConfig, layout: RunLayout) -> dict[str, Any]:
    from danlu.compress.stage import run_distill_stage as distill

    if cfg.distill is None:
        raise ConfigError(
            "the distill stage needs a distill: section in the recipe (at least distill.student)"
        )
    return distill(cfg.distill, last_trained_model(cfg, layout), layout.docs, layout.path("distill"))


def distill_settings(cfg: RecipeConfig) -> dict[str, Any]:
    d = cfg.distill
    files = [p for p in (d.teacher, d.student, *d.data) if p] if d is not None else []
    return {
        "distill": None if d is None else to_dict(d),
        "last": last_training_stage(cfg),
        "files": local_input_fingerprint(files),
    }
