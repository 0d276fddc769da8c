"""Distributed training on torch.distributed, applied to a plain model from outside: the layout config
(`parallel.*`), the device mesh, DDP and FSDP2, checkpoints of sharded runs, and the launcher."""
