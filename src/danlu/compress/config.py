"""Settings of the distill and prune stages: the flags of `danlu distill` and `danlu prune`."""

from __future__ import annotations

from dataclasses import dataclass, field

from danlu.compress.distill_loss import KL_KINDS
from danlu.compress.masks import DEFAULT_SKIP, METHODS, SCOPES
from danlu.errors import check
from danlu.train.config import TrainConfig

# logit: T²·KL + α·CE on the text, the teacher run beside the student at every step.
# sequence: CE on the teacher's own continuations of prompts drawn from the text (Kim & Rush 2016).
# both: the logit loss on the teacher's continuations.
# ce: labels only, no teacher in the loss: the baseline a distillation is compared with.
DISTILL_METHODS = ("logit", "sequence", "both", "ce")


def default_train() -> TrainConfig:
    return TrainConfig(seq_len=128, batch_size=4, max_steps=200, lr=1e-3, warmup_steps=20, eval_every=50,
                       ckpt_every=100, log_every=10, eval_batches=8)  # fmt: skip


@dataclass
class DistillConfig:
    method: str = "logit"
    kind: str = "forward"  # forward: KL(teacher ‖ student); reverse: KL(student ‖ teacher)
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the cross-entropy on the labels beside T²·KL
    data: tuple[str, ...] = ()  # UTF-8 text files (the student's training text; the tail is held out)
    val_fraction: float = 0.05
    # sequence-level: how many prompts of how many tokens the teacher continues, and how
    gen_prompts: int = 256
    gen_prompt_len: int = 32
    gen_tokens: int = 96
    gen_temperature: float = 1.0
    gen_seed: int = 0
    train: TrainConfig = field(default_factory=default_train)

    def __post_init__(self) -> None:
        self.data = tuple(self.data)
        check(
            self.method in DISTILL_METHODS, "distill.method", f"must be one of {', '.join(DISTILL_METHODS)}"
        )
        check(self.kind in KL_KINDS, "distill.kind", f"must be forward or reverse, got {self.kind!r}")
        check(self.temperature > 0, "distill.temperature", f"must be > 0, got {self.temperature}")
        check(self.alpha >= 0, "distill.alpha", f"must be >= 0, got {self.alpha}")
        check(0 < self.val_fraction < 0.5, "distill.val_fraction", "must be in (0, 0.5)")
        for key in ("gen_prompts", "gen_prompt_len", "gen_tokens"):
            check(getattr(self, key) >= 1, f"distill.{key}", f"must be >= 1, got {getattr(self, key)}")
        check(self.gen_temperature >= 0, "distill.gen_temperature", "must be >= 0")
        check(
            self.method in ("logit", "ce") or self.gen_prompt_len + self.gen_tokens <= self.train.seq_len + 1,
            "distill.gen_tokens",
            f"a prompt ({self.gen_prompt_len}) and its continuation ({self.gen_tokens}) must fit in "
            f"train.seq_len + 1 = {self.train.seq_len + 1} tokens",
        )


@dataclass
class DistillStageConfig(DistillConfig):
    """A recipe's distill: section (the distill stage of `danlu run`): the distillation settings, and
    which teacher teaches which student."""

    teacher: str = ""  # a model dir; "": the run's last trained model (align's, sft's or the pretrained one)
    student: str = ""  # a model dir to start from, a YAML/JSON of model fields, or a preset (required)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            bool(self.student),
            "distill.student",
            "must name the student: a model dir to start from, a YAML of model fields, or a preset",
        )

    def distill_config(self) -> DistillConfig:
        """The settings run_distill takes (the section less its teacher and student)."""
        fields = {k: v for k, v in vars(self).items() if k not in ("teacher", "student")}
        return DistillConfig(**fields)


@dataclass
class PruneConfig:
    method: str = "magnitude"  # magnitude (unstructured) | 2:4 (semi-structured)
    sparsity: float = 0.5  # magnitude: the fraction of the pruned weights set to zero
    scope: str = "layer"  # magnitude: one threshold per layer, or one global threshold
    skip: tuple[str, ...] = DEFAULT_SKIP  # module-name patterns (fnmatch) never pruned
    recover_steps: int = 0  # finetune steps with the masks kept (0: none)
    data: tuple[str, ...] = ()  # UTF-8 text for the recovery and the held-out loss before and after
    val_fraction: float = 0.05
    train: TrainConfig = field(default_factory=default_train)

    def __post_init__(self) -> None:
        self.data, self.skip = tuple(self.data), tuple(self.skip)
        check(self.method in METHODS, "prune.method", f"must be magnitude or 2:4, got {self.method!r}")
        check(0 <= self.sparsity < 1, "prune.sparsity", f"must be in [0, 1), got {self.sparsity}")
        check(self.scope in SCOPES, "prune.scope", f"must be layer or global, got {self.scope!r}")
        check(self.recover_steps >= 0, "prune.recover_steps", "must be >= 0")
        check(self.recover_steps == 0 or bool(self.data), "prune.data", "--recover-steps needs --data FILE")
        check(0 < self.val_fraction < 0.5, "prune.val_fraction", "must be in (0, 0.5)")
