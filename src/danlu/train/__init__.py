"""Training: one reusable trainer (danlu.train.trainer), its optimizers, LR schedules, losses, guards,
metrics and exact-resume checkpoints, and the pretraining stage built on it (danlu.train.pretrain)."""
