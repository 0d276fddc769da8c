"""The hardware table, and training time, cost and energy from FLOPs and an MFU.

GPU figures are vendor datasheet values (dense, i.e. without 2:4 sparsity), per GPU in the SXM /
HGX form factor; each row names its datasheet. The inter-node figure is the per-GPU network of the
vendor's reference system (one ConnectX NIC per GPU in DGX A100 / H100 / H200 / B200). The CPU row
is this project's machine, measured by danlu (BASELINES.md, 2026-11-22, `benchmarks/peak_flops.py`):
no datasheet states the peak of two vCPUs.

The default MFU of a hardware class is what danlu measured on it and recorded in BENCHMARKS.md;
where nothing is recorded there is no default and the caller must pass one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from danlu.errors import ConfigError

TB = 1e12
GB = 1e9


@dataclass(frozen=True)
class Hardware:
    name: str
    # peak dense FLOP/s by dtype
    peak: dict[str, float]
    memory_bytes: float
    # memory bandwidth, bytes/s
    bandwidth: float
    # within a node (NVLink) and between nodes (network), bytes/s per device, one direction
    intra_node_bw: float
    inter_node_bw: float
    # board power, W (None where unknown)
    watts: float | None
    # the hardware class whose measured MFU applies (the same chip in another memory configuration)
    mfu_class: str
    source: str
    max_per_node: int = 8
    extra: dict[str, str] = field(default_factory=dict)

    def peak_flops(self, dtype: str) -> float:
        if dtype not in self.peak:
            raise ConfigError(
                f"{self.name} has no {dtype} peak in the table; choose one of {', '.join(self.peak)}"
            )
        return self.peak[dtype]


HARDWARE: dict[str, Hardware] = {
    # NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM); NVLink 3 600 GB/s total = 300 GB/s each way;
    # DGX A100: 8 x 200 Gb/s HDR InfiniBand
    "a100": Hardware(
        "a100",
        {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12, "int8": 624e12},
        80 * GB,
        2.039 * TB,
        300 * GB,
        25 * GB,
        400.0,
        "ampere",
        "NVIDIA A100 Tensor Core GPU datasheet (SXM 80GB)",
    ),
    # NVIDIA H100 Tensor Core GPU datasheet (H100 SXM); NVLink 4 900 GB/s total; DGX H100: 8 x 400 Gb/s
    "h100": Hardware(
        "h100",
        {"fp32": 67e12, "tf32": 494.5e12, "bf16": 989.5e12, "fp16": 989.5e12, "fp8": 1979e12},
        80 * GB,
        3.35 * TB,
        450 * GB,
        50 * GB,
        700.0,
        "hopper",
        "NVIDIA H100 Tensor Core GPU datasheet (SXM)",
    ),
    # NVIDIA H200 Tensor Core GPU datasheet (H200 SXM): the H100's compute with 141 GB HBM3e
    "h200": Hardware(
        "h200",
        {"fp32": 67e12, "tf32": 494.5e12, "bf16": 989.5e12, "fp16": 989.5e12, "fp8": 1979e12},
        141 * GB,
        4.8 * TB,
        450 * GB,
        50 * GB,
        700.0,
        "hopper",
        "NVIDIA H200 Tensor Core GPU datasheet (SXM)",
    ),
    # NVIDIA HGX B200 datasheet, per GPU (the 8-GPU board's figures / 8); NVLink 5 1.8 TB/s total;
    # DGX B200: 8 x 400 Gb/s
    "b200": Hardware(
        "b200",
        {"fp32": 75e12, "tf32": 1.1e15, "bf16": 2.25e15, "fp16": 2.25e15, "fp8": 4.5e15},
        180 * GB,
        7.7 * TB,
        900 * GB,
        50 * GB,
        1000.0,
        "blackwell",
        "NVIDIA HGX B200 datasheet (per GPU of the 8-GPU board)",
    ),
    # this project's machine: AMD EPYC, 2 vCPU, 24 GiB; fp32 torch.mm peak 73.6 GFLOP/s and bf16
    # 0.8 GFLOP/s at 2 threads, memory read ~18.5 GB/s (BASELINES.md, measured 2026-11-22); one device
    # per node, no interconnect but loopback (gloo)
    "cpu": Hardware(
        "cpu",
        {"fp32": 73.6e9, "bf16": 0.8e9},
        24 * 2**30,
        18.5 * GB,
        0.0,
        0.0,
        None,
        "cpu-2core",
        "measured by danlu: BASELINES.md (benchmarks/peak_flops.py, 2 threads)",
        max_per_node=1,
    ),
}

# MFU measured by danlu per hardware class (BENCHMARKS.md): (MFU, dtype, what was measured)
MEASURED_MFU: dict[str, tuple[float, str, str]] = {
    "hopper": (
        0.235,
        "bf16",
        "H200, 124m shape, eager bf16, train_throughput.py 2026-11-30 (BENCHMARKS.md)",
    ),
    "cpu-2core": (
        0.429,
        "fp32",
        "AMD EPYC 2 cores, tiny shape, fp32, train_throughput.py 2026-12-01 (BENCHMARKS.md)",
    ),
}


def hardware(name: str) -> Hardware:
    key = name.lower()
    if key not in HARDWARE:
        raise ConfigError(f"unknown hardware {name!r}; the table has {', '.join(HARDWARE)}")
    return HARDWARE[key]


def default_dtype(hw: Hardware) -> str:
    return "fp32" if hw.name == "cpu" else "bf16"


def default_mfu(hw: Hardware) -> tuple[float, str]:
    """(MFU, where it comes from) for a hardware class, or a ConfigError when danlu recorded none."""
    if hw.mfu_class not in MEASURED_MFU:
        raise ConfigError(
            f"danlu has measured no MFU on {hw.name} ({hw.mfu_class}) yet; pass one, e.g. --mfu 0.4"
        )
    mfu, _, what = MEASURED_MFU[hw.mfu_class]
    return mfu, f"measured by danlu: {what}"


@dataclass(frozen=True)
class CostEstimate:
    flops: float
    hardware: str
    dtype: str
    devices: int
    mfu: float
    mfu_source: str
    device_hours: float
    wall_hours: float
    cost: float | None
    energy_kwh: float | None


def estimate_cost(
    flops: float,
    hw: Hardware,
    devices: int = 1,
    mfu: float | None = None,
    dtype: str | None = None,
    price_per_hour: float | None = None,
    pue: float = 1.0,
) -> CostEstimate:
    """Device-hours = FLOPs / (peak * MFU) / 3600; cost = device-hours * price; energy = device-hours *
    board power * PUE (an upper bound: boards rarely draw their full rating)."""
    if not flops > 0:
        raise ConfigError(f"FLOPs must be > 0, got {flops:g}")
    if devices < 1:
        raise ConfigError(f"devices must be >= 1, got {devices}")
    dtype = dtype or default_dtype(hw)
    source = "given"
    if mfu is None:
        mfu, source = default_mfu(hw)
    if not 0 < mfu <= 1:
        raise ConfigError(f"MFU must be in (0, 1], got {mfu}")
    if price_per_hour is not None and price_per_hour < 0:
        raise ConfigError(f"price per device-hour must be >= 0, got {price_per_hour}")
    if pue < 1:
        raise ConfigError(f"PUE must be >= 1, got {pue}")
    device_hours = flops / (hw.peak_flops(dtype) * mfu) / 3600
    energy = device_hours * hw.watts * pue / 1000 if hw.watts is not None else None
    return CostEstimate(
        flops=flops,
        hardware=hw.name,
        dtype=dtype,
        devices=devices,
        mfu=mfu,
        mfu_source=source,
        device_hours=device_hours,
        wall_hours=device_hours / devices,
        cost=device_hours * price_per_hour if price_per_hour is not None else None,
        energy_kwh=energy,
    )
