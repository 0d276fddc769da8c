"""The distill stage of a recipe: distil the run's last trained model (or distill.teacher) into the
student of the distill: section, on the run's training documents unless distill.data names texts.

    <run>/distill/data/train.txt   the run's training documents, as the student's text (when no data)
    <run>/distill/...              run_distill's checkpoints, metrics and generations
    <run>/distill/model/           the student
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from danlu.compress.config import DistillStageConfig, default_train
from danlu.compress.distill import run_distill
from danlu.errors import DataError
from danlu.io import atomic_write_text


def distill_teacher(cfg: DistillStageConfig, last_trained: Path) -> Path:
    return Path(cfg.teacher).expanduser() if cfg.teacher else last_trained


def run_distill_stage(
    cfg: DistillStageConfig, last_trained: Path, docs_dir: Path, out_dir: Path
) -> dict[str, Any]:
    """Run (or resume) the distill stage into out_dir; a JSON-ready result."""
    from danlu.data.documents import document_texts

    settings = cfg.distill_config()
    if settings.train.lr is None:  # a recipe's train: mapping leaves it unset; the verb's default then
        settings.train = dataclasses.replace(settings.train, lr=default_train().lr)
    if not settings.data:
        text = "\n\n".join(document_texts(docs_dir, "train"))
        if not text.strip():
            raise DataError(f"{docs_dir} has no training documents for the distill stage; set distill.data")
        path = out_dir / "data" / "train.txt"
        atomic_write_text(path, text)
        settings = dataclasses.replace(settings, data=(str(path),))
    result = run_distill(settings, distill_teacher(cfg, last_trained), cfg.student, out_dir)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}
