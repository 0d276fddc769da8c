"""danlu's own CPU kernels for int8 and int4 Linears (`qgemm.c`), built with the system C compiler at
first use and called through ctypes on tensors' memory.

Both kernels read the codes in the layout a model dir stores (int8 [out, in]; int4 packed two per byte),
so a tied table's gathers and its head product share one copy. Activations are quantized to int8 per
block of 32 columns inside the call; `q8_reference` / `q4_reference` compute the same product with torch
ops (the integer products are exact; only the fp32 summation order differs).

The shared library is cached under `$DANLU_CACHE/native` (default `~/.cache/danlu/native`), named by a
hash of the source, the flags and the CPU's flags, and written atomically, so concurrent first uses and
other CPUs never load a wrong build. No compiler, a failed build, or `DANLU_NATIVE=0`: `available()` is
False and the Linears keep torch's kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from danlu import fetch

BLOCK = 32  # activation columns per scale (the C kernels' QB)
_SOURCE = Path(__file__).with_name("qgemm.c")
_lib: ctypes.CDLL | None = None
_tried = False


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def flags() -> list[str]:
    """The compiler flags for this CPU: AVX2 and FMA where it has them."""
    flags = ["-O3", "-shared", "-fPIC", "-std=c11"]
    cpu = set(_cpu_flags().split())
    if {"avx2", "fma"} <= cpu:
        flags += ["-mavx2", "-mfma"]
    return flags


def cache_dir() -> Path:
    return fetch.cache_dir() / "native"


def build(compiler: str, cflags: list[str]) -> Path:
    """The cached shared library of qgemm.c built with flags (built now if missing)."""
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *cflags, _cpu_flags()]).encode()).hexdigest()[:16]
    out = cache_dir() / f"qgemm-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *cflags, str(_SOURCE), "-o", tmp, "-lm"], check=True, capture_output=True, text=True
        )
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("DANLU_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    try:
        _lib = open_library(build(compiler, flags()))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        warnings.warn(
            "danlu's native int8/int4 kernels did not build (int4 runs torch's kernel, the native int8 "
            f"kernel the same product in torch ops): {detail}",
            stacklevel=2,
        )
    return _lib


def open_library(path: Path) -> ctypes.CDLL:
    """A built qgemm library, its functions typed."""
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.danlu_q8_linear.argtypes = [ptr, i64, i64, ptr, ptr, i64, ptr]
    lib.danlu_q4_linear.argtypes = [ptr, i64, i64, ptr, ptr, ptr, i64, i64, ptr]
    lib.danlu_q8_linear.restype = lib.danlu_q4_linear.restype = ctypes.c_int
    return lib


def available() -> bool:
    """Whether the kernels are built and loaded here (builds them on the first call)."""
    return _load() is not None


def simd_level() -> int:
    """2: the AVX2 path was compiled in; 0: plain loops; -1: not available."""
    lib = _load()
    return -1 if lib is None else int(lib.danlu_simd_level())


def fits(in_features: int, group_size: int | None = None) -> bool:
    """Whether a Linear's shape is one the kernels take (whole activation blocks, whole-block groups)."""
    return in_features % BLOCK == 0 and (group_size is None or group_size % BLOCK == 0)


def _checked(rc: int) -> None:
    if rc != 0:
        raise MemoryError("danlu's native kernel could not allocate its activation buffers")


def q8_linear(
    x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, lib: ctypes.CDLL | None = None
) -> torch.Tensor:
    """x [..., k] fp32 contiguous, codes [n, k] int8, scale [n] fp32 -> fp32 [..., n]. (A decode step
    makes ~120 of these calls: no reshapes, one allocation.)"""
    lib = lib or _load()
    assert lib is not None
    shape = x.shape
    k, n = shape[-1], codes.shape[0]
    y = torch.empty((*shape[:-1], n))
    rc = lib.danlu_q8_linear(
        x.data_ptr(), x.numel() // k, k, codes.data_ptr(), scale.data_ptr(), n, y.data_ptr()
    )
    _checked(rc)
    return y


def q4_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    group: int,
    lib: ctypes.CDLL | None = None,
) -> torch.Tensor:
    """x [..., k] fp32 contiguous, packed [n, k/2] uint8, scale and offset [n, groups] fp32 -> [..., n]."""
    lib = lib or _load()
    assert lib is not None
    shape = x.shape
    k, n = shape[-1], packed.shape[0]
    y = torch.empty((*shape[:-1], n))
    rows = x.numel() // k
    rc = lib.danlu_q4_linear(
        x.data_ptr(), rows, k, packed.data_ptr(), scale.data_ptr(), offset.data_ptr(), group, n, y.data_ptr()
    )
    _checked(rc)
    return y


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' activation codes of x [rows, k]: (int8-valued fp32 codes [rows, k], scales
    [rows, ceil(k/32)]), each block over its absmax / 127, rounded half to even (a last block shorter
    than 32, which only this torch path meets, over its own absmax)."""
    rows, k = x.shape
    xb = F.pad(x.float(), (0, -k % BLOCK)).view(rows, -1, BLOCK)
    s = xb.abs().amax(dim=-1) / 127
    codes = torch.where(s[..., None] > 0, xb / s[..., None], torch.zeros(())).round()
    return codes.view(rows, -1)[:, :k], s


def _rounded(x: torch.Tensor) -> torch.Tensor:
    """x [rows, k] with the kernels' activation rounding, the gradient passed straight through."""
    rows, k = x.shape
    q, s = quantize_activations(x.detach())
    xq = (F.pad(q, (0, -k % BLOCK)).view(*s.shape, BLOCK) * s[..., None]).view(rows, -1)[:, :k]
    return x.float() + (xq - x.float()).detach()


def q8_reference(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q8_linear's product with torch ops (fp32, differentiable in x by straight-through rounding)."""
    return _rounded(x) @ (codes.float() * scale[:, None]).T


def q4_reference(
    x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group: int
) -> torch.Tensor:
    """q4_linear's product with torch ops: codes [n, k] (unpacked), scale and offset [n, groups]; the
    offsets meet the exact fp32 sums of x over each group (fp32, straight-through rounding)."""
    rows, k = x.shape
    xs = _rounded(x)
    scaled = codes.float() * scale.repeat_interleave(group, dim=1)[:, :k]
    sums = F.pad(x.float(), (0, scale.shape[1] * group - k)).view(rows, -1, group).sum(-1)
    return xs @ scaled.T + sums @ offset.T
