"""The quantize stage's settings: the flags of `danlu quantize` (one dataclass, ready for a recipe section)."""

from __future__ import annotations

from dataclasses import dataclass

from danlu.errors import check

METHODS = ("rtn", "gptq", "awq", "smoothquant", "nf4", "bitnet")
INT8_KERNELS = ("weight_only", "dynamic", "native")  # danlu.quant.linear.Int8Linear's kernels
DEFAULT_SKIP = ("embed", "lm_head", "*norm*")


@dataclass
class QuantConfig:
    """How to quantize a model and the accuracy gate it must pass."""

    method: str = "gptq"  # rtn | gptq | awq | smoothquant (W8A8) | nf4 | bitnet (ternary W, int8 A)
    bits: int = 4  # 8 (int8 per channel, symmetric), 4, 3 or 2 (grouped); nf4 is always 4
    group_size: int = 128  # input columns per scale for 2-4 bits
    symmetric: bool = False  # 2-4 bits: symmetric grid (default: min/max grid with a float zero point)
    skip: tuple[str, ...] = DEFAULT_SKIP  # module-name patterns (fnmatch) kept in full precision
    calib: str | None = None  # calibration text file (default: the Shakespeare corpus from the cache)
    calib_samples: int = 32  # calibration sequences
    calib_seq_len: int = 256  # tokens per calibration sequence
    damp: float = 0.01  # GPTQ: fraction of mean(diag H) added to the diagonal
    block_size: int = 128  # GPTQ: columns per lazy batch update
    act_order: bool = True  # GPTQ: visit columns in decreasing diag(H)
    smooth_alpha: float = 0.5  # SmoothQuant: migration strength (0: none, 1: all onto the weights)
    # rtn int8 Linears: weight_only (W8A16, bf16 activations), dynamic (W8A8, activations quantized to
    # int8 per token at run time, fbgemm's kernel) or native (W8A8, activations int8 per block of 32
    # columns, danlu's C kernel on the stored codes); recorded per layer in quant_config.json. An int8
    # embedding table's head takes native too (it reads the table's one copy), else weight_only (the
    # dynamic kernel would hold the table twice)
    int8_kernel: str = "weight_only"
    seed: int = 0  # calibration window draw
    gate: bool = True  # measure the accuracy gate and refuse a model that fails it
    gate_ppl: str | None = None  # gate perplexity text (default: a held-out part of the calibration text)
    gate_chars: int = 20_000  # characters of held-out text the gate scores
    gate_tasks: tuple[str, ...] = ()  # eval tasks of the gate, e.g. ("hellaswag", "arc_easy")
    gate_limit: int = 100  # items per gate task
    max_ppl_increase: float | None = None  # relative; default 0.02 for 8 bits, 0.05 below
    max_task_drop: float | None = None  # relative drop of each task's accuracy; same defaults

    def __post_init__(self) -> None:
        self.skip, self.gate_tasks = tuple(self.skip), tuple(self.gate_tasks)
        check(
            self.method in METHODS,
            "quantize.method",
            f"must be one of {', '.join(METHODS)}, got {self.method!r}",
        )
        check(self.bits in (2, 3, 4, 8), "quantize.bits", f"must be 8, 4, 3 or 2, got {self.bits}")
        check(
            self.method not in ("gptq", "awq") or self.bits < 8,
            "quantize.bits",
            f"{self.method} here is for 2-4 bits; use --method rtn for int8",
        )
        check(self.method != "nf4" or self.bits == 4, "quantize.bits", "nf4 is a 4-bit format")
        check(self.method != "bitnet" or self.bits == 2, "quantize.bits", "bitnet is ternary: --bits 2")
        check(
            self.method != "smoothquant" or self.bits == 8, "quantize.bits", "smoothquant is W8A8: --bits 8"
        )
        check(
            self.int8_kernel in INT8_KERNELS,
            "quantize.int8_kernel",
            f"must be one of {', '.join(INT8_KERNELS)}, got {self.int8_kernel!r}",
        )
        check(
            0 <= self.smooth_alpha <= 1,
            "quantize.smooth_alpha",
            f"must be in [0, 1], got {self.smooth_alpha}",
        )
        check(self.group_size >= 8, "quantize.group_size", f"must be at least 8, got {self.group_size}")
        check(
            self.calib_samples >= 1 and self.calib_seq_len >= 8,
            "quantize.calib_samples",
            "need >= 1 samples of >= 8 tokens",
        )
        check(0 <= self.damp < 1, "quantize.damp", f"must be in [0, 1), got {self.damp}")
        check(self.block_size >= 1, "quantize.block_size", "must be at least 1")
        check(
            self.gate_chars >= 100 and self.gate_limit >= 1,
            "quantize.gate_chars",
            "need >= 100 chars, >= 1 item",
        )
        for name in ("max_ppl_increase", "max_task_drop"):
            value = getattr(self, name)
            check(value is None or value >= 0, f"quantize.{name}", f"must be >= 0, got {value}")

    def threshold(self) -> float:
        """The relative perplexity increase the gate allows."""
        if self.max_ppl_increase is not None:
            return self.max_ppl_increase
        return 0.02 if self.bits == 8 else 0.05

    def task_threshold(self) -> float:
        if self.max_task_drop is not None:
            return self.max_task_drop
        return 0.02 if self.bits == 8 else 0.05


QAT_METHODS = ("int", "bitnet")


@dataclass
class QATConfig:
    """Quantization-aware training (danlu.quant.qat): the Linears train through fake quantization."""

    method: str = "int"  # int: the RTN grid of `danlu quantize --method rtn`; bitnet: b1.58 ternary
    bits: int = 4  # int: 8 (per channel, symmetric), 4, 3 or 2 (grouped); bitnet: ignored
    group_size: int = 128  # int, 2-4 bits: input columns per scale
    symmetric: bool = False  # int, 2-4 bits: symmetric grid (default min/max, as quantize's default)
    act_bits: int = 0  # int: 8 fake-quantizes each Linear's input per token (absmax), 0 leaves it; bitnet: 8
    skip: tuple[str, ...] = DEFAULT_SKIP  # module-name patterns kept in full precision

    def __post_init__(self) -> None:
        self.skip = tuple(self.skip)
        check(
            self.method in QAT_METHODS,
            "qat.method",
            f"must be one of {', '.join(QAT_METHODS)}, got {self.method!r}",
        )
        check(self.bits in (2, 3, 4, 8), "qat.bits", f"must be 8, 4, 3 or 2, got {self.bits}")
        check(self.group_size >= 8, "qat.group_size", f"must be at least 8, got {self.group_size}")
        check(self.act_bits in (0, 8), "qat.act_bits", f"must be 0 (off) or 8, got {self.act_bits}")

    def deployment(self) -> QuantConfig:
        """The quantize settings whose quantized model computes what this training saw."""
        if self.method == "bitnet":
            return QuantConfig(method="bitnet", bits=2, skip=self.skip)
        return QuantConfig(
            method="rtn", bits=self.bits, group_size=self.group_size, symmetric=self.symmetric, skip=self.skip
        )
