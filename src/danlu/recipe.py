"""A recipe: every stage's settings in one typed config, loaded from YAML with dotted overrides.

Each stage's config lives beside its package (danlu.data.config, danlu.model.config, ...); this module
composes them, and danlu.config holds the strict loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from danlu.align.config import AlignConfig
from danlu.compress.config import DistillStageConfig
from danlu.config import from_dict, load_yaml, merge, parse_overrides
from danlu.data.config import DataConfig
from danlu.errors import check
from danlu.finetune.config import SFTConfig
from danlu.infer.config import SampleConfig
from danlu.model.config import ModelConfig
from danlu.parallel.config import ParallelConfig
from danlu.quant.config import QATConfig, QuantConfig
from danlu.tokenizer.config import TokenizerConfig
from danlu.train.config import TrainConfig


@dataclass
class RecipeConfig:
    # Names the run; the run directory defaults to runs/<name>.
    name: str = "tiny-cpu"
    # Where every artifact of the run is written; "" means runs/<name>.
    run_dir: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    # The distributed layout (danlu.parallel.config): mesh degrees and FSDP options, checked against
    # the number of processes (torchrun, or --nproc N).
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    # Supervised finetuning after pretraining (danlu.finetune.config); absent: `danlu run` stops at
    # the base model. `danlu sft` uses these settings, or the defaults when the recipe has none.
    sft: SFTConfig | None = None
    # Preference alignment after SFT (danlu.align.config): a reward model or a DPO-family method;
    # absent: `danlu run` stops at the chat model. `danlu align` uses these settings, or the defaults.
    align: AlignConfig | None = None
    # Quantization-aware training (danlu.quant.config.QATConfig): pretraining trains through fake
    # quantization (int grids, or BitNet b1.58 ternary weights), and the quantize stage then writes
    # the quantized model with the same quantizer. Absent: plain full-precision training.
    qat: QATConfig | None = None
    # Quantization after the last training stage (pretrain, sft or align) into quantized/, behind the
    # accuracy gate (danlu.quant.config.QuantConfig); absent: none, unless qat is set, which implies
    # quantizing the way it trained.
    quantize: QuantConfig | None = None
    # Distillation after the last training stage (danlu.compress.config.DistillStageConfig): that
    # model (or distill.teacher) teaches distill.student on the run's training documents, into
    # distill/model; absent: none. `danlu distill` is the verb with its own flags.
    distill: DistillStageConfig | None = None

    def __post_init__(self) -> None:
        check(
            bool(self.name) and "/" not in self.name,
            "name",
            f"must be a non-empty name without '/', got {self.name!r}",
        )
        if self.qat is not None and self.quantize is not None:
            from danlu.quant.qat import deployed_matches

            why = deployed_matches(self.qat, self.quantize)
            check(
                why is None,
                "quantize",
                f"would not quantize the model the way qat trained it ({why}); make them agree or drop one",
            )

    def quantize_config(self) -> QuantConfig | None:
        """What the quantize stage runs: the quantize section, or the deployment that qat implies."""
        if self.quantize is not None:
            return self.quantize
        return self.qat.deployment() if self.qat is not None else None

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> RecipeConfig:
    """Load a recipe YAML (or the defaults when `path` is None) and apply dotted overrides."""
    data = load_yaml(path) if path is not None else {}
    data = merge(data, parse_overrides(overrides or []))
    return from_dict(RecipeConfig, data)


# Top-level recipe keys that an override may name without a dot (--name=foo).
_TOP_LEVEL_KEYS = ("name", "run_dir")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate dotted config overrides (`--train.lr=3e-4`, `--train.lr 3e-4`) from other arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:].split("=", 1)[0]
        if arg.startswith("--") and ("." in name or name in _TOP_LEVEL_KEYS):
            overrides.append(arg)
            if "=" not in arg and i + 1 < len(argv):
                overrides.append(argv[i + 1])
                i += 1
        else:
            rest.append(arg)
        i += 1
    return rest, overrides
