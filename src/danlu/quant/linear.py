"""Quantized Linear replacements for inference: int8 and int4 weight-only, with a CPU kernel path and a
reference path.

- `Int8Linear`: int8 codes [out, in] and one fp32 scale per output channel (symmetric), on one of three
  kernels (`INT8_KERNELS`): `weight_only` (W8A16: bf16 activations, `torch._weight_int8pack_mm`),
  `dynamic` (W8A8: activations quantized to int8 per token on the fly, fbgemm's int8 GEMM through
  `danlu.quant.int8_dynamic`) or `native` (W8A8: activations int8 per block of 32 columns, danlu's own C
  kernel `danlu.quant.native` on qweight itself). With `dynamic` the codes are held once, in fbgemm's
  packed weight, after the first kernel call (a table's gathers keep them beside it); `state_dict`
  unpacks them.
- `W8A8Linear`: SmoothQuant's int8 weights and dynamically quantized int8 activations (per token).
  Kernel: `torch._int_mm` (int32 accumulation).
- `Int4Linear`: codes of 2 to 4 bits packed two per byte [out, ceil(in/2)], scale and offset per group
  of `group_size` input columns (w = u * scale + offset). Kernel: danlu's native int4 kernel on the
  packed codes themselves where it is built and the shape fits (whole blocks of 32 columns and groups;
  activations int8 per block, as `native`), else `torch._weight_int4pack_mm_for_cpu`,
  which takes w = (u - 8) * s + z, so z = offset + 8 * scale. On the first kernel call the codes are
  converted to the kernel's layout (`danlu.quant.int4_layout`) and kept in that layout only, in place
  of the packed ones: the codes are held once. `state_dict` converts them back to the packed layout,
  so a saved model dir never holds the kernel's layout. The input dimension is padded to a whole
  number of groups for the kernel (zero inputs times whatever the padded codes hold add nothing).

In torch 2.13 on CPU both kernels are fast only for bf16 activations (with fp32 inputs they fall back
to a path about 50x slower than fp32 `F.linear`): the kernel path rounds the activations to bf16 and
returns the result in the input's dtype. The reference path dequantizes the weight to fp32 and calls
`F.linear`; it runs off CPU, under autograd, and when `reference` is set (`use_reference(model)`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from danlu.quant import int8_dynamic, native
from danlu.quant.config import INT8_KERNELS
from danlu.quant.int4_layout import kernel_pack, kernel_rows, kernel_unpack
from danlu.quant.quantizers import QTensor, QuantSpec, dequantize, pack_int4, unpack_int4

INT4_KERNEL_GROUPS = (32, 64, 128, 256)


class QuantLinear(nn.Module):
    """Common part: shapes, an optional fp32 bias, the choice of path."""

    kind = ""

    def __init__(self, in_features: int, out_features: int, bias: bool, device: torch.device | str | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.reference = False
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    def dequantize(self) -> torch.Tensor:
        raise NotImplementedError

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def kernel_tensors(self) -> list[torch.Tensor]:
        """Tensors the kernel path keeps beside the buffers (counted by memory reports)."""
        return []

    def kernel_bytes(self) -> int:
        """Bytes the kernel path keeps outside any tensor (a packed weight of torch's)."""
        return 0

    def _use_kernel(self, x: torch.Tensor) -> bool:
        return not self.reference and x.device.type == "cpu" and not torch.is_grad_enabled()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._use_kernel(x):
            return F.linear(x, self.dequantize().to(x.dtype), self.bias)
        # one decode step calls this ~120 times on a [1, 1, d] input: every op here is a dispatch
        shape = x.shape
        flat = x if x.dim() == 2 else x.view(-1, shape[-1]) if x.is_contiguous() else x.reshape(-1, shape[-1])
        y = self.kernel(flat.to(torch.bfloat16)).to(x.dtype)
        bias = self._parameters["bias"]
        if bias is not None:
            y = y + bias.to(x.dtype)
        return y if x.dim() == 2 else y.view((*shape[:-1], self.out_features))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}"

    def layout(self) -> dict[str, object]:
        """What quant/quant_config.json records for this layer."""
        return {
            "kind": self.kind,
            "in": self.in_features,
            "out": self.out_features,
            "bias": self.bias is not None,
        }


class Int8Linear(QuantLinear):
    """int8 codes, symmetric per output channel, on the `weight_only` or the `dynamic` kernel."""

    kind = "int8"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        device: torch.device | str | None = None,
        kernel: str = "weight_only",
    ):
        super().__init__(in_features, out_features, bias, device)
        self.register_buffer(
            "qweight", torch.empty(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer("scale", torch.empty(out_features, device=device))
        # (the scale tensor, its version, its bf16 copy): the kernel takes bf16 scales
        self._kernel_scale: tuple[torch.Tensor, int, torch.Tensor] | None = None
        # dynamic: (fbgemm's packed weight, the scale tensor it was made from, that tensor's version)
        self._packed: tuple[torch.ScriptObject, torch.Tensor, int] | None = None
        self.keep_codes = False  # keep qweight beside the packed weight (a table's gathers read it)
        self._native_fits = native.fits(in_features)
        self.int8_kernel = "weight_only"
        self.set_kernel(kernel)

    @classmethod
    def from_qtensor(
        cls, q: QTensor, bias: torch.Tensor | None = None, kernel: str = "weight_only"
    ) -> Int8Linear:
        spec = q.spec
        if spec.bits != 8 or not spec.symmetric or spec.granularity != "channel":
            raise ValueError("Int8Linear holds symmetric per-channel 8-bit weights")
        m = cls(q.codes.shape[1], q.codes.shape[0], bias is not None, q.codes.device, kernel)
        m.qweight.copy_((q.codes.to(torch.int16) - 128).to(torch.int8))
        m.scale.copy_(q.scale[:, 0])
        if bias is not None:
            m.bias.data.copy_(bias)
        return m

    def set_kernel(self, kernel: str) -> None:
        if kernel not in INT8_KERNELS:
            raise ValueError(f"int8 kernel must be one of {', '.join(INT8_KERNELS)}, got {kernel!r}")
        if kernel != "dynamic":
            self.to_plain_layout()
        self.int8_kernel = kernel

    def codes(self) -> torch.Tensor:
        """The int8 codes [out, in] (read back from the packed weight when only it holds them)."""
        q = self._buffers["qweight"]
        if q is None:
            assert self._packed is not None
            return int8_dynamic.unpack(self._packed[0])
        return q

    def dequantize(self) -> torch.Tensor:
        return self.codes().float() * self.scale[:, None]

    def to_plain_layout(self) -> None:
        """Drop the packed weight, the codes back in qweight (no-op without one)."""
        if self._packed is not None:
            self._buffers["qweight"] = self.codes()
            self._packed = None

    def _save_to_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.to_plain_layout()
        super()._save_to_state_dict(*args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if self._packed is not None:  # new codes arrive: the packed weight is stale
            if self._buffers["qweight"] is None:
                self._buffers["qweight"] = torch.empty(self.out_features, self.in_features, dtype=torch.int8)
            self._packed = None
        super()._load_from_state_dict(*args, **kwargs)

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        # converted once, again only if the scale tensor was replaced or changed in place; the
        # buffers are read from _buffers directly: Module.__getattr__ costs microseconds per call
        scale = self._buffers["scale"]
        cached = self._kernel_scale
        if cached is None or cached[0] is not scale or cached[1] != scale._version:
            cached = self._kernel_scale = (scale, scale._version, scale.to(torch.bfloat16))
        return torch._weight_int8pack_mm(x, self._buffers["qweight"], cached[2])

    def kernel_tensors(self) -> list[torch.Tensor]:
        return [self._kernel_scale[2]] if self._kernel_scale is not None else []

    def kernel_bytes(self) -> int:
        # the packed int8 matrix; fbgemm's few bytes per row beside it (offsets, scale) are not counted
        return self.out_features * self.in_features if self._packed is not None else 0

    def _packed_weight(self) -> torch.ScriptObject:
        scale = self._buffers["scale"]
        p = self._packed
        if p is None or p[1] is not scale or p[2] != scale._version:
            p = self._packed = (int8_dynamic.pack(self.codes(), scale), scale, scale._version)
            if not self.keep_codes:
                self._buffers["qweight"] = None
        return p[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.int8_kernel == "weight_only":
            return super().forward(x)
        if self.int8_kernel == "native":
            return self._native_forward(x)
        p = self._packed
        if (  # a decode step calls this ~120 times: once packed, only the checks the kernel needs
            p is not None
            and p[2] == p[1]._version
            and p[1] is self._buffers["scale"]
            and not self.reference
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and not torch.is_grad_enabled()
        ):
            shape = x.shape
            y = int8_dynamic.matmul(x.reshape(-1, shape[-1]), p[0])
            bias = self._parameters["bias"]
            if bias is not None:
                y = y.add_(bias)
            return y if x.dim() == 2 else y.view(*shape[:-1], self.out_features)
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).float()
        if self._use_kernel(x) and int8_dynamic.available():
            y = int8_dynamic.matmul(flat, self._packed_weight())
        else:  # the same product in fp32; under autograd the rounding passes the gradient straight
            xq = int8_dynamic.quantize_activations(flat)
            y = F.linear(flat + (xq - flat).detach(), self.dequantize())
        bias = self._parameters["bias"]
        if bias is not None:
            y = y + bias
        return y.to(x.dtype).view((*shape[:-1], self.out_features))

    def _native_forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = self._buffers["qweight"], self._buffers["scale"]
        if (  # the checks the kernel needs, cheapest first (a decode step makes ~120 of these calls)
            self._native_fits
            and x.dtype == torch.float32
            and x.is_cpu
            and not torch.is_grad_enabled()
            and not self.reference
            and scale.dtype == torch.float32
            and native.available()
        ):
            y = native.q8_linear(x if x.is_contiguous() else x.contiguous(), q, scale)
        else:  # the same product in fp32 (straight-through under autograd)
            shape = x.shape
            y = native.q8_reference(x.reshape(-1, shape[-1]).float(), self.codes(), scale.float())
            y = y.to(x.dtype).view(*shape[:-1], self.out_features)
        bias = self._parameters["bias"]
        return y if bias is None else y + bias.to(y.dtype)

    def layout(self) -> dict[str, object]:
        return super().layout() | {"kernel": self.int8_kernel}


class Int4Linear(QuantLinear):
    """Weight-only codes of 2-4 bits (stored 4 bits each) with a scale and offset per group."""

    kind = "int4"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        group_size: int = 128,
        bits: int = 4,
        bias: bool = False,
        device: torch.device | str | None = None,
    ):
        super().__init__(in_features, out_features, bias, device)
        self.group_size, self.bits = group_size, bits
        groups = -(-in_features // group_size)
        packed = (in_features + 1) // 2
        self.register_buffer("qweight", torch.empty(out_features, packed, dtype=torch.uint8, device=device))
        self.register_buffer("scale", torch.empty(out_features, groups, device=device))
        self.register_buffer("offset", torch.empty(out_features, groups, device=device))
        self._kernel_sz: torch.Tensor | None = None  # set while qweight is in torch's kernel's layout
        # danlu's native kernel where the shape fits it (set False to run torch's int4 kernel instead)
        self.use_native = native.fits(in_features, group_size)

    @classmethod
    def from_qtensor(cls, q: QTensor, bias: torch.Tensor | None = None) -> Int4Linear:
        spec = q.spec
        if spec.bits > 4 or spec.granularity != "group":
            raise ValueError("Int4Linear holds grouped codes of at most 4 bits")
        out_f, in_f = q.codes.shape
        m = cls(in_f, out_f, spec.group_size, spec.bits, bias is not None, q.codes.device)
        m.qweight.copy_(pack_int4(q.codes))
        m.scale.copy_(q.scale)
        m.offset.copy_(q.offset)
        if bias is not None:
            m.bias.data.copy_(bias)
        return m

    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, True, "group", self.group_size)

    @property
    def in_kernel_layout(self) -> bool:
        return self._kernel_sz is not None

    def codes(self) -> torch.Tensor:
        if self.in_kernel_layout:
            return kernel_unpack(self.qweight)[:, : self.in_features]
        return unpack_int4(self.qweight, self.in_features)

    def row_codes(self, rows: torch.Tensor) -> torch.Tensor:
        """Codes [len(rows), in] of some output rows (an embedding lookup), without unpacking the rest."""
        if self.in_kernel_layout:
            return kernel_rows(self.qweight, rows, self.out_features)[:, : self.in_features]
        return unpack_int4(self.qweight[rows], self.in_features)

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes(), self.scale, self.offset, self.spec())

    def kernel_tensors(self) -> list[torch.Tensor]:
        return [self._kernel_sz] if self._kernel_sz is not None else []

    def to_packed_layout(self) -> None:
        """Back from the kernel's layout to the packed codes of the state dict (no-op if there)."""
        if self.in_kernel_layout:
            self.qweight = pack_int4(self.codes())
            self._kernel_sz = None

    def _save_to_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.to_packed_layout()  # one packed tensor, so a tied table's two names still share it
        super()._save_to_state_dict(*args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if self.in_kernel_layout:  # new codes arrive in the packed layout
            self.qweight = torch.empty(
                self.out_features, (self.in_features + 1) // 2, dtype=torch.uint8, device=self.qweight.device
            )
            self._kernel_sz = None
        super()._load_from_state_dict(*args, **kwargs)

    def _use_kernel(self, x: torch.Tensor) -> bool:
        # the kernel's layout takes whole tiles of 16 output rows
        return (
            self.group_size in INT4_KERNEL_GROUPS and self.out_features % 16 == 0 and super()._use_kernel(x)
        )

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        gs = self.group_size
        padded = self.scale.shape[1] * gs
        if self._kernel_sz is None:
            codes = F.pad(self.codes(), (0, padded - self.in_features))
            zeros = self.offset + 8 * self.scale
            sz = torch.stack([self.scale.T, zeros.T], dim=-1).contiguous().to(torch.bfloat16)
            self.qweight = kernel_pack(codes)
            self._kernel_sz = sz
        if padded != self.in_features:
            x = F.pad(x, (0, padded - self.in_features))
        return torch._weight_int4pack_mm_for_cpu(x, self.qweight, gs, self._kernel_sz)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.use_native
            and x.dtype == torch.float32
            and x.is_cpu
            and not torch.is_grad_enabled()
            and not self.reference
            and self._kernel_sz is None  # not in torch's kernel's layout
            and native.available()
        ):
            b = self._buffers
            y = native.q4_linear(
                x if x.is_contiguous() else x.contiguous(),
                b["qweight"],
                b["scale"],
                b["offset"],
                self.group_size,
            )
            bias = self._parameters["bias"]
            return y if bias is None else y.add_(bias)
        return super().forward(x)

    def layout(self) -> dict[str, object]:
        return super().layout() | {"group_size": self.group_size, "bits": self.bits}


class W8A8Linear(Int8Linear):
    """SmoothQuant's W8A8: int8 weights (symmetric per output channel) times int8 activations quantized
    on the fly (symmetric per token), accumulated in int32 by `torch._int_mm`, rescaled to float. The
    reference path computes the same quantized product in fp32 (exact for the int8 products; the fp32
    sum rounds where the int32 sum does not). Its weights are Int8Linear's, only the product differs."""

    kind = "w8a8"

    @staticmethod
    def quantize_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(int8 codes, fp32 scale per row) of x [rows, in], symmetric per row."""
        a = x.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 127
        return (x.float() / a).round_().clamp_(-127, 127).to(torch.int8), a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xq, a = self.quantize_tokens(x.reshape(-1, shape[-1]))
        if self._use_kernel(x):
            acc = torch._int_mm(xq, self.qweight.T).float()
            y = acc * a * self.scale
        else:
            y = F.linear(xq.float() * a, self.dequantize())
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def layout(self) -> dict[str, object]:
        return QuantLinear.layout(self)


def set_int8_kernel(model: nn.Module, kernel: str, tables: bool = False) -> int:
    """Put every Int8Linear of model (not W8A8Linear: its product is its own; an embedding table's only
    with `tables`, since it then holds its codes twice) on `kernel`; how many."""
    mods = [m for m in model.modules() if type(m) is Int8Linear and (tables or not m.keep_codes)]
    for m in mods:
        m.set_kernel(kernel)
    return len(mods)


def set_int4_kernel(model: nn.Module, use_native: bool) -> int:
    """Put every Int4Linear of model on danlu's native kernel (where its shape fits) or on torch's; how
    many."""
    mods = [m for m in model.modules() if isinstance(m, Int4Linear)]
    for m in mods:
        m.to_packed_layout()
        m.use_native = use_native and native.fits(m.in_features, m.group_size)
    return len(mods)


def use_reference(model: nn.Module, reference: bool = True) -> None:
    """Run every quantized Linear of model on the reference path (or back on the kernels)."""
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.reference = reference
