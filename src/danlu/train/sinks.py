"""Where metrics go besides metrics.jsonl (always written): TensorBoard and Weights & Biases.

Both are optional extras (`pip install 'danlu[monitor]'`), imported only when a recipe asks for them.
W&B runs in offline mode: its files land in the run directory and `wandb sync` uploads them later,
so training never waits on (or needs) a network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from danlu.errors import ConfigError

SINKS = ("tensorboard", "wandb")


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric fields of a metrics record, nested dicts joined with '/' (grad_norm_by_group/attn)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
            out[name] = float(value)
    return out


class TensorBoardSink:
    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.sinks has 'tensorboard' but it is not installed: pip install 'danlu[monitor]'"
            ) from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        for name, value in flatten(record).items():
            self.writer.add_scalar(name, value, step)
        if "event" in record:
            self.writer.add_text("events", f"{record['event']}: {record}", step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, run_dir: Path, name: str, config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "train.sinks has 'wandb' but it is not installed: pip install 'danlu[monitor]'"
            ) from None
        self.run = wandb.init(
            project="danlu",
            name=name,
            dir=str(run_dir),
            mode="offline",
            config=config,
            reinit="finish_previous",
        )

    def log(self, record: dict[str, Any]) -> None:
        data = flatten(record)
        if "event" in record:
            data[f"event/{record['event']}"] = 1.0
        self.run.log(data, step=int(record.get("step", 0)))

    def close(self) -> None:
        self.run.finish()


def open_sinks(names: list[str], run_dir: Path, run_name: str, config: dict[str, Any]) -> list[Any]:
    sinks: list[Any] = []
    for name in names:
        if name == "tensorboard":
            sinks.append(TensorBoardSink(run_dir))
        elif name == "wandb":
            sinks.append(WandbSink(run_dir, run_name, config))
        else:
            raise ConfigError(
                f"unknown metrics sink {name!r}; sinks are {', '.join(SINKS)} (jsonl is always on)"
            )
    return sinks
