"""Typed configs: nested dataclasses, YAML recipes, dotted overrides (`--train.lr=3e-4`).

Every field has a comment saying what it means; `__post_init__` validates ranges. Loading a recipe
rejects unknown keys (with a suggestion) and wrong types with a `ConfigError` that names the key.
The resolved config is saved beside every output (`config.yaml` in the run directory).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from danlu.errors import ConfigError

SCHEDULES = ("cosine", "linear", "constant", "inv_sqrt", "wsd")
WARMUP_SHAPES = ("linear", "cosine", "exponential")


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


@dataclass
class DataConfig:
    # Registry names ("shakespeare", "chitchat") or local paths (.txt/.jsonl/.parquet files or folders).
    sources: list[str] = field(default_factory=lambda: ["shakespeare", "chitchat"])
    # Fraction of documents held out (whole documents) for validation.
    val_fraction: float = 0.02
    # Documents shorter than this many characters after cleaning are dropped.
    min_chars: int = 20
    # Seed for the train/validation split.
    seed: int = 1337
    # Blocks to run, in order: [{block: normalize}, {block: minhash_dedup, threshold: 0.8}, ...] (see
    # danlu.data.pipeline.BLOCKS). None: the basic pipeline [clean, min_chars, exact_dedup].
    pipeline: list[dict[str, Any]] | None = None
    # Where the pipeline runs: "local" (a process pool) or "ray" (a Ray cluster, see ray_address).
    executor: str = "local"
    # Worker processes of the local executor (0: one per CPU core); also Ray's CPUs for a local instance.
    workers: int = 1
    # Ray cluster address ("auto", "ray://host:10001"); None starts a local Ray instance.
    ray_address: str | None = None
    # Input shard size: at most this many documents and about this many MB of text per shard.
    shard_docs: int = 5000
    shard_mb: float = 64.0
    # How the pack stage mixes sources in the train split (danlu.data.mixing); None: corpus order.
    # {weights: {shakespeare: 0.7, chitchat: 0.3}} or {alpha: 0.5} (p_i ~ tokens_i^alpha), and optional
    # max_epochs (repeats allowed per source), tokens (budget; default: the train split's own size),
    # phases [{until: 0.7, weights: {...}}, ..., {until: 1.0, weights: {...}}] (fractions of the
    # budget, trained in order) and seed (default: data.seed). The validation split is never mixed.
    mix: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check(len(self.sources) > 0, "data.sources", "name at least one source")
        if self.mix is not None:
            from danlu.data.mixing import parse_mix  # numpy stays out of a plain config import

            parse_mix(self.mix, self.sources, self.seed)
        _check(
            self.executor in ("local", "ray"), "data.executor", f"must be local or ray, got {self.executor!r}"
        )
        _check(self.workers >= 0, "data.workers", f"must be >= 0 (0: one per core), got {self.workers}")
        _check(self.shard_docs >= 1, "data.shard_docs", f"must be >= 1, got {self.shard_docs}")
        _check(self.shard_mb > 0, "data.shard_mb", f"must be > 0, got {self.shard_mb}")
        _check(
            0.0 < self.val_fraction < 0.5,
            "data.val_fraction",
            f"must be in (0, 0.5), got {self.val_fraction}",
        )
        _check(self.min_chars >= 0, "data.min_chars", f"must be >= 0, got {self.min_chars}")


@dataclass
class TokenizerConfig:
    # Vocabulary size including the 256 byte tokens and the special tokens.
    vocab_size: int = 4096
    # A pair must occur at least this often to be merged.
    min_frequency: int = 2

    def __post_init__(self) -> None:
        _check(
            300 <= self.vocab_size <= 2**32 - 1,
            "tokenizer.vocab_size",
            f"must be in [300, 2^32), got {self.vocab_size}",
        )
        _check(self.min_frequency >= 1, "tokenizer.min_frequency", f"must be >= 1, got {self.min_frequency}")


@dataclass
class ModelConfig:
    # Named shape from danlu.model.presets ("tiny", "small", ...); explicit fields below override it.
    preset: str | None = None
    # Single dial: n_layer = depth, width and heads follow (see danlu.model.presets.from_depth).
    depth: int | None = None
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    # Key/value heads for grouped-query attention; None means n_head (multi-head attention).
    n_kv_head: int | None = None
    # SwiGLU hidden size; None means 8/3 * n_embd rounded up to a multiple of 16.
    ffn_hidden: int | None = None
    # 0 means: take it from the tokenizer.
    vocab_size: int = 0
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02
    # Architecture options; the defaults are the Llama design (and what HF Llama export supports).
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    norm_position: str = "pre"  # pre | post (the original Transformer's post-LN)
    mlp: str = "swiglu"  # swiglu | geglu | gelu | relu
    pos: str = "rope"  # rope | alibi | learned | sinusoidal | none
    # RoPE context extension: none | linear (position interpolation) | ntk | yarn, by rope_factor over
    # rope_original_max_len (0: max_seq_len / rope_factor).
    rope_scaling: str = "none"
    rope_factor: float = 1.0
    rope_original_max_len: int = 0
    # Each query sees only the last sliding_window keys (0: all earlier keys).
    sliding_window: int = 0
    # RMSNorm on each head's queries and keys before RoPE.
    qk_norm: bool = False
    # Final logits squashed to (-cap, cap) by cap * tanh(logits / cap); 0 disables it.
    logit_softcap: float = 0.0
    # Biases in every Linear (and LayerNorm).
    bias: bool = False
    # Dropout on embeddings, attention probabilities and residual branches.
    dropout: float = 0.0
    # Distinct blocks; n_layer blocks cycle through them (ALBERT-style sharing). 0: no sharing.
    n_unique_layers: int = 0
    # Mixture of experts: n_experts > 0 replaces the MLP of every moe_every-th block by n_experts MLPs
    # (each ffn_hidden wide) and a router sending each token to its moe_top_k best. An expert takes at
    # most capacity_factor * tokens * top_k / n_experts tokens per batch (0: no limit, nothing dropped).
    n_experts: int = 0
    moe_top_k: int = 2
    moe_every: int = 1
    moe_capacity_factor: float = 0.0
    # Switch-Transformer load-balancing loss and ST-MoE router z-loss, added to the training loss.
    moe_aux_loss: float = 0.01
    moe_z_loss: float = 0.001

    def __post_init__(self) -> None:
        choices = {
            "norm": ("rmsnorm", "layernorm"),
            "norm_position": ("pre", "post"),
            "mlp": ("swiglu", "geglu", "gelu", "relu"),
            "pos": ("rope", "alibi", "learned", "sinusoidal", "none"),
            "rope_scaling": ("none", "linear", "ntk", "yarn"),
        }
        for key, allowed in choices.items():
            value = getattr(self, key)
            _check(value in allowed, f"model.{key}", f"must be one of {', '.join(allowed)}, got {value!r}")
        _check(self.rope_factor >= 1.0, "model.rope_factor", f"must be >= 1, got {self.rope_factor}")
        _check(self.rope_original_max_len >= 0, "model.rope_original_max_len", "must be >= 0")
        _check(self.sliding_window >= 0, "model.sliding_window", "must be >= 0")
        _check(self.logit_softcap >= 0, "model.logit_softcap", "must be >= 0")
        _check(0 <= self.dropout < 1, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        _check(
            self.n_unique_layers == 0 or (1 <= self.n_unique_layers <= self.n_layer),
            "model.n_unique_layers",
            f"must be 0 or in [1, n_layer], got {self.n_unique_layers}",
        )
        _check(self.n_experts >= 0, "model.n_experts", "must be >= 0")
        if self.n_experts:
            _check(
                1 <= self.moe_top_k <= self.n_experts,
                "model.moe_top_k",
                f"must be in [1, n_experts={self.n_experts}], got {self.moe_top_k}",
            )
            _check(self.moe_every >= 1, "model.moe_every", "must be >= 1")
            _check(self.moe_capacity_factor >= 0, "model.moe_capacity_factor", "must be >= 0")
            _check(self.moe_aux_loss >= 0 and self.moe_z_loss >= 0, "model.moe_aux_loss", "must be >= 0")
        for key in ("n_layer", "n_embd", "n_head", "max_seq_len"):
            _check(getattr(self, key) >= 1, f"model.{key}", f"must be >= 1, got {getattr(self, key)}")
        _check(self.depth is None or self.depth >= 1, "model.depth", f"must be >= 1, got {self.depth}")
        _check(self.vocab_size >= 0, "model.vocab_size", f"must be >= 0, got {self.vocab_size}")
        _check(self.n_kv_head is None or self.n_kv_head >= 1, "model.n_kv_head", "must be >= 1")
        _check(self.ffn_hidden is None or self.ffn_hidden >= 1, "model.ffn_hidden", "must be >= 1")


@dataclass
class LayerLRMults:
    # Multipliers of the learning rate per layer group (muP-style tuning, slower embeddings, ...).
    embed: float = 1.0
    attn: float = 1.0
    mlp: float = 1.0
    norm: float = 1.0
    head: float = 1.0

    def __post_init__(self) -> None:
        for k, v in dataclasses.asdict(self).items():
            _check(v > 0, f"train.lr_mults.{k}", f"must be > 0, got {v}")


OPTIMIZERS = ("adamw", "lion", "adafactor", "adamw8bit", "muon")


@dataclass
class TrainConfig:
    # Tokens per training sequence (must not exceed model.max_seq_len).
    seq_len: int = 256
    # Sequences per micro-batch.
    batch_size: int = 16
    # Micro-batches per optimizer step.
    grad_accum: int = 1
    max_steps: int = 1000
    # Peak learning rate; None means the model's suggested LR for its width.
    lr: float | None = None
    # adamw, lion, adafactor, adamw8bit or muon (Muon on the hidden matrices, AdamW elsewhere).
    optimizer: str = "adamw"
    # Muon's learning rate for the hidden matrices (lr stays the AdamW-side rate).
    muon_lr: float = 0.02
    lr_mults: LayerLRMults = field(default_factory=LayerLRMults)
    # Decay after warmup: cosine, linear, constant, inv_sqrt or wsd (warmup-stable-decay).
    schedule: str = "cosine"
    # The decay ends at lr * min_lr_ratio.
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    # Warmup shape: linear, cosine or exponential.
    warmup_shape: str = "linear"
    # wsd: the fraction of max_steps spent in the final decay.
    decay_fraction: float = 0.2
    # Micro-batches per step ramp from 1 to grad_accum over this many steps (0: no ramp).
    batch_ramp_steps: int = 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    # Max global gradient norm; 0 disables clipping.
    grad_clip: float = 1.0
    # Weight of the z-loss (mean squared log-partition, PaLM uses 1e-4); 0 disables it.
    z_loss: float = 0.0
    # Pretraining objective (danlu.train.objectives): causal, mlm, prefix_lm, fim or span.
    objective: str = "causal"
    # Cross-entropy label smoothing (targets get 1 - eps, the rest eps spread over the vocabulary).
    label_smoothing: float = 0.0
    # mlm: the fraction of tokens predicted. fim: the fraction of documents rearranged, and of those
    # the fraction in SPM order. span: noise density and mean span length.
    mlm_rate: float = 0.15
    fim_rate: float = 0.5
    fim_spm_rate: float = 0.5
    span_noise: float = 0.15
    span_mean: float = 3.0
    # Loss-spike guard: above mean + spike_k sigma the LR is halved for spike_cooldown steps; above
    # mean + spike_k_severe sigma (or a non-finite loss) training rolls back to the last checkpoint
    # and skips the batches that caused it.
    spike_guard: bool = True
    spike_k: float = 6.0
    spike_k_severe: float = 12.0
    spike_cooldown: int = 50
    # Stop after this many evaluations without a new best validation loss; 0 never stops early.
    early_stop_patience: int = 0
    # Recompute activations of every k-th block in backward (1: all blocks); 0 stores them all.
    activation_checkpointing: int = 0
    # Clip each layer group's gradient norm (embed, attn, mlp, norm, head) to this, before the
    # global clip; 0 disables it.
    grad_clip_group: float = 0.0
    # Metrics destinations besides metrics.jsonl: tensorboard, wandb (offline).
    sinks: list[str] = field(default_factory=list)
    eval_every: int = 100
    # Validation batches per evaluation; 0 means the whole validation split.
    eval_batches: int = 0
    ckpt_every: int = 100
    # Step checkpoints kept on disk (the newest ones).
    keep_last: int = 2
    log_every: int = 10
    seed: int = 1337
    # "auto" picks cuda if available, else cpu.
    device: str = "auto"
    # "auto": fp32 on CPU, bf16 autocast on CUDA; or "fp32" / "bf16" / "fp16" (with loss scaling).
    dtype: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        for key in (
            "seq_len",
            "batch_size",
            "grad_accum",
            "max_steps",
            "eval_every",
            "ckpt_every",
            "log_every",
            "keep_last",
        ):
            _check(getattr(self, key) >= 1, f"train.{key}", f"must be >= 1, got {getattr(self, key)}")
        _check(self.lr is None or self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _check(
            0.0 <= self.min_lr_ratio <= 1.0,
            "train.min_lr_ratio",
            f"must be in [0, 1], got {self.min_lr_ratio}",
        )
        _check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _check(
            self.schedule in SCHEDULES,
            "train.schedule",
            f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}",
        )
        _check(
            self.warmup_shape in WARMUP_SHAPES,
            "train.warmup_shape",
            f"must be one of {', '.join(WARMUP_SHAPES)}, got {self.warmup_shape!r}",
        )
        _check(
            0 < self.decay_fraction <= 1,
            "train.decay_fraction",
            f"must be in (0, 1], got {self.decay_fraction}",
        )
        _check(self.batch_ramp_steps >= 0, "train.batch_ramp_steps", "must be >= 0")
        _check(self.z_loss >= 0, "train.z_loss", "must be >= 0")
        objectives = ("causal", "mlm", "prefix_lm", "fim", "span")
        _check(
            self.objective in objectives,
            "train.objective",
            f"must be one of {', '.join(objectives)}, got {self.objective!r}",
        )
        _check(0 <= self.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
        for key in ("mlm_rate", "fim_rate", "fim_spm_rate", "span_noise"):
            _check(
                0 <= getattr(self, key) <= 1, f"train.{key}", f"must be in [0, 1], got {getattr(self, key)}"
            )
        _check(self.mlm_rate > 0 and 0 < self.span_noise < 1, "train.mlm_rate", "rates must be > 0")
        _check(self.span_mean >= 1, "train.span_mean", "must be >= 1")
        _check(0 < self.spike_k < self.spike_k_severe, "train.spike_k", "need 0 < spike_k < spike_k_severe")
        _check(self.spike_cooldown >= 0, "train.spike_cooldown", "must be >= 0")
        _check(self.early_stop_patience >= 0, "train.early_stop_patience", "must be >= 0")
        _check(self.activation_checkpointing >= 0, "train.activation_checkpointing", "must be >= 0")
        _check(self.grad_clip_group >= 0, "train.grad_clip_group", "must be >= 0")
        _check(
            self.optimizer in OPTIMIZERS,
            "train.optimizer",
            f"must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}",
        )
        _check(self.muon_lr > 0, "train.muon_lr", "must be > 0")
        bad = [s for s in self.sinks if s not in ("tensorboard", "wandb")]
        _check(
            not bad, "train.sinks", f"unknown sink {bad[0] if bad else ''!r}; use tensorboard and/or wandb"
        )
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1/beta2", "must be in [0, 1)")
        _check(self.grad_clip >= 0, "train.grad_clip", "must be >= 0")
        _check(self.eval_batches >= 0, "train.eval_batches", "must be >= 0")
        _check(
            self.dtype in ("auto", "fp32", "bf16", "fp16"),
            "train.dtype",
            f"must be auto, fp32, bf16 or fp16, got {self.dtype!r}",
        )
        _check(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            "train.device",
            f"must be auto, cpu, cuda[:N] or mps, got {self.device!r}",
        )


@dataclass
class SampleConfig:
    # Prompts sampled at the end of `danlu run`.
    prompts: list[str] = field(default_factory=lambda: ["Romeo.\n"])
    max_new_tokens: int = 120
    temperature: float = 0.8
    # 0 disables top-k filtering.
    top_k: int = 50
    # 1.0 disables nucleus filtering.
    top_p: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.max_new_tokens >= 1, "sample.max_new_tokens", "must be >= 1")
        _check(self.temperature >= 0, "sample.temperature", "must be >= 0 (0 is greedy)")
        _check(self.top_k >= 0, "sample.top_k", "must be >= 0")
        _check(0 < self.top_p <= 1, "sample.top_p", "must be in (0, 1]")


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

    def __post_init__(self) -> None:
        _check(
            bool(self.name) and "/" not in self.name,
            "name",
            f"must be a non-empty name without '/', got {self.name!r}",
        )

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")


# ---------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with type checks


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str | int | float):  # a scalar where a list is expected: one-element list
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:  # free-form settings (e.g. a pipeline block's options), checked by their consumer
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}: expected a mapping with string keys, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config annotation {tp!r} for {key}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override --{dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


_EXPONENT_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _parse_scalar(raw: str) -> Any:
    """Parse an override value as YAML (scalars, and flow lists and maps such as
    `[{block: clean}, {block: exact_dedup}]`); also read 3e-4 (a string to YAML 1.1) and none."""
    if raw.lower() in ("none", "null", "~"):
        return None
    if _EXPONENT_FLOAT.fullmatch(raw):
        return float(raw)
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`["--train.lr=3e-4", "--model.n_layer", "6"]` -> nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) <= 2:
            raise ConfigError(f"expected an override like --train.lr=3e-4, got {arg!r}")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, raw = arg[2:], args[i + 1]
            i += 1
        else:
            raise ConfigError(f"override {arg} has no value; write {arg}=VALUE")
        _set_dotted(tree, key, _parse_scalar(raw))
        i += 1
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} not found; recipes live in recipes/ (e.g. recipes/tiny-cpu.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"recipe {path} must be a mapping of sections (data, tokenizer, model, train, sample)"
        )
    return data


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> RecipeConfig:
    """Load a recipe YAML (or the defaults when `path` is None) and apply dotted overrides."""
    data = load_yaml(path) if path is not None else {}
    data = _merge(data, parse_overrides(overrides or []))
    return from_dict(RecipeConfig, data)


def save_yaml(cfg: Any, path: str | Path) -> None:
    from danlu.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
