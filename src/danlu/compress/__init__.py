"""Smaller models from bigger ones: knowledge distillation (logit and sequence level, on the one
Trainer) and pruning (magnitude and 2:4 semi-structured, with an optional recovery finetune)."""
