"""Pretraining: the loop, AdamW groups, LR schedule, losses, metrics and exact-resume checkpoints."""

from danlu.train.checkpoint import load_model
from danlu.train.loop import run_pretrain

__all__ = ["load_model", "run_pretrain"]
