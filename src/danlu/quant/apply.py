"""Quantize a loaded model in place: RTN, GPTQ, AWQ or SmoothQuant W8A8 (block by block over
calibration inputs) or NF4.

GPTQ runs the calibration sequences through the model one block at a time, as the paper does: the
inputs of block l are the outputs of blocks 0..l-1 already quantized, so each block corrects for the
error of the ones before it. In a block, every targeted Linear's Hessian comes from one pass over
those inputs; the Linears are quantized, and a second pass through the quantized block gives the next
block's inputs. Two block passes per block: the cost of two forward passes over the calibration set.

Every quantized layer gets an error report: MSE, SQNR and max error of its weights, and (when the
layer's Hessian is known) the relative output error tr(E H E^T) / tr(W H W^T) on the calibration
inputs, E = W_hat - W: the quantity GPTQ minimizes.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from danlu.errors import ConfigError
from danlu.quant.config import QuantConfig
from danlu.quant.gptq import Hessian, gptq_quantize
from danlu.quant.linear import Int4Linear, Int8Linear, W8A8Linear, use_reference
from danlu.quant.quantizers import QTensor, QuantSpec, error_report, quantize

log = logging.getLogger(__name__)


def spec_of(cfg: QuantConfig) -> QuantSpec:
    if cfg.bits == 8:  # the int8 kernel's layout
        return QuantSpec(8, True, "channel")
    return QuantSpec(cfg.bits, cfg.symmetric, "group", cfg.group_size)


def skipped(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) or name == p or name.endswith("." + p) for p in patterns)


def _tied(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "cfg", None), "tie_embeddings", False))


def embedding_listed(model: nn.Module, cfg: QuantConfig) -> bool:
    """Whether the embedding table (and with it a tied lm_head) is quantized: `embed` not skipped."""
    if not isinstance(getattr(model, "embed", None), nn.Embedding) or skipped("embed", cfg.skip):
        if _tied(model) and not skipped("lm_head", cfg.skip):
            raise ConfigError(
                "lm_head is tied to the embedding: take both embed and lm_head off quantize.skip, or neither"
            )
        return False
    return True


def targets(model: nn.Module, cfg: QuantConfig) -> list[str]:
    """Names of the Linears to quantize: every Linear not matched by the skip-list (a tied lm_head is
    the embedding table's business: see embedding_listed)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not skipped(n, cfg.skip)]
    if _tied(model):
        embedding_listed(model, cfg)
        names = [n for n in names if n != "lm_head"]
    if not names:
        raise ConfigError(f"quantize.skip {list(cfg.skip)} leaves no Linear to quantize")
    return names


def output_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    E, W, H = (W_hat - W).float(), W.float(), H.float()
    num = (E @ H).mul_(E).sum(dtype=torch.float64)
    den = (W @ H).mul_(W).sum(dtype=torch.float64)
    return float(num / den.clamp(min=1e-300))


def _module(q: QTensor, bias: torch.Tensor | None, int8_kernel: str = "weight_only") -> nn.Module:
    if q.spec.bits == 8:
        return Int8Linear.from_qtensor(q, bias, int8_kernel)
    return Int4Linear.from_qtensor(q, bias)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _report(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor | None) -> dict[str, float]:
    rep = error_report(W, W_hat)
    if H is not None:
        rep["out_err"] = output_error(W.float(), W_hat.float(), H)
    return rep


@torch.no_grad()
def quantize_model(
    model: nn.Module, cfg: QuantConfig, calib: torch.Tensor | None = None
) -> dict[str, dict[str, float]]:
    """Replace the targeted Linears of model by quantized modules, and the embedding table (with a tied
    lm_head) when it is off the skip-list (RTN: int8 per row, or the 4-bit grid at 4 bits and below);
    per-layer error reports by name.

    calib: token ids [n, T] (GPTQ, AWQ and SmoothQuant need them; NF4 and BitNet ignore them)."""
    from danlu.quant.embedding import quantize_embedding, table_spec

    table = embedding_listed(model, cfg)
    reports = _quantize_linears(model, cfg, calib)
    if table:
        four = cfg.bits <= 4 and cfg.method not in ("nf4", "bitnet")
        spec = table_spec(cfg.bits, cfg.group_size, cfg.symmetric) if four else table_spec(8)
        # an int8 table's head is native or weight_only: its gathers keep the codes, which those kernels
        # read; the dynamic kernel's packed copy would hold the table twice
        head = "native" if cfg.int8_kernel == "native" else "weight_only"
        reports |= quantize_embedding(model, spec, head)
    return reports


def _quantize_linears(
    model: nn.Module, cfg: QuantConfig, calib: torch.Tensor | None
) -> dict[str, dict[str, float]]:
    names = targets(model, cfg)
    spec = spec_of(cfg)
    if cfg.method == "gptq":
        if calib is None:
            raise ConfigError("GPTQ needs calibration token ids")
        return _blockwise(
            model,
            names,
            calib,
            lambda W, H: gptq_quantize(W, H, spec, cfg.block_size, cfg.damp, cfg.act_order),
        )
    if cfg.method == "awq":
        from danlu.quant.awq import awq_block, check_supported

        if calib is None:
            raise ConfigError("AWQ needs calibration token ids")
        check_supported(model)
        return _blockwise(model, names, calib, lambda W, _H: quantize(W, spec), prepare=awq_block, spec=spec)
    if cfg.method == "smoothquant":
        from danlu.quant.awq import check_supported
        from danlu.quant.smoothquant import smooth_block

        if calib is None:
            raise ConfigError("SmoothQuant needs calibration token ids")
        check_supported(model)
        return _blockwise(
            model,
            names,
            calib,
            lambda W, _H: quantize(W, spec),
            prepare=lambda block, layer, x, rest, local, _spec: smooth_block(
                block, layer, x, rest, local, cfg.smooth_alpha
            ),
            module_for=W8A8Linear.from_qtensor,
        )
    if cfg.method == "rtn" and calib is not None:  # RTN with output errors on the calibration inputs
        return _blockwise(
            model,
            names,
            calib,
            lambda W, _H: quantize(W, spec),
            module_for=lambda q, bias: _module(q, bias, cfg.int8_kernel),
        )
    reports: dict[str, dict[str, float]] = {}
    for name in tqdm(names, desc=cfg.method, unit="layer", leave=False):
        lin = model.get_submodule(name)
        W = lin.weight.detach()
        if cfg.method == "nf4":
            from danlu.finetune.nf4 import NF4Linear

            module: nn.Module = NF4Linear(lin)
            W_hat = module.dequantize()
        elif cfg.method == "bitnet":
            from danlu.quant.bitnet import deployed

            module = deployed(W, lin.bias)
            W_hat = module.dequantize()
        else:
            q = quantize(W, spec_of(cfg))
            module, W_hat = _module(q, lin.bias, cfg.int8_kernel), q.dequantize()
        reports[name] = _report(W, W_hat, None)
        _replace(model, name, module)
    return reports


class _Stop(Exception):
    pass


def _block_inputs(model: nn.Module, calib: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...]]:
    """The hidden states entering blocks[0] for calib, and the other arguments of a block call."""
    seen: dict[str, Any] = {}

    def grab(_m: nn.Module, args: tuple[Any, ...]) -> None:
        seen["args"] = args
        raise _Stop

    handle = model.blocks[0].register_forward_pre_hook(grab)
    try:
        model(calib)
    except _Stop:
        pass
    finally:
        handle.remove()
    x, _layer, *rest = seen["args"]
    return x, tuple(rest)


def _blockwise(
    model: nn.Module,
    names: list[str],
    calib: torch.Tensor,
    method: Callable[[torch.Tensor, torch.Tensor], QTensor],
    prepare: Callable[..., tuple[dict[str, torch.Tensor], dict[str, float]]] | None = None,
    spec: QuantSpec | None = None,
    module_for: Callable[[QTensor, torch.Tensor | None], nn.Module] | None = None,
) -> dict[str, dict[str, float]]:
    """Quantize block by block with method(W, H) on each block's calibration inputs. `prepare`
    (AWQ) may first rewrite the block's full-precision weights and gives the weight each Linear
    quantizes (method(prepared W, H)); the reports then measure against the rewritten weights."""
    blocks = model.blocks
    if len(blocks) != model.cfg.n_layer:
        raise ConfigError("calibrated quantization goes block by block; cross-layer sharing is not supported")
    x, rest = _block_inputs(model, calib)
    chunk = 8
    reports: dict[str, dict[str, float]] = {}
    for layer, block in enumerate(tqdm(blocks, desc="quantize", unit="block", leave=False)):
        prefix = f"blocks.{layer}."
        local = {
            n[len(prefix) :]: block.get_submodule(n[len(prefix) :]) for n in names if n.startswith(prefix)
        }
        prepared: dict[str, torch.Tensor] = {}
        if prepare is not None:
            prepared, extra = prepare(block, layer, x, rest, list(local), spec)
            for n, alpha in extra.items():
                reports.setdefault(prefix + n, {})["alpha"] = alpha
        hessians = {n: Hessian(m.in_features, x.device) for n, m in local.items()}
        hooks = [
            m.register_forward_hook(lambda _m, a, _o, h=hessians[n]: h.add(a[0])) for n, m in local.items()
        ]
        try:
            for i in range(0, x.shape[0], chunk):
                block(x[i : i + chunk], layer, *rest)
        finally:
            for h in hooks:
                h.remove()
        for n, lin in local.items():
            H = hessians[n].H
            q = method(prepared.get(n, lin.weight), H)
            module = (module_for or _module)(q, lin.bias)
            use_reference(module)  # the next block's inputs in fp32, as the reference computes them
            reports[prefix + n] = reports.get(prefix + n, {}) | _report(lin.weight, q.dequantize(), H)
            _replace(block, n, module)
        x = torch.cat([block(x[i : i + chunk], layer, *rest)[0] for i in range(0, x.shape[0], chunk)])
    use_reference(model, False)
    for (
        name
    ) in names:  # outside the blocks (an untied lm_head taken off the skip-list): no H, no compensation
        if not name.startswith("blocks."):
            lin = model.get_submodule(name)
            H = torch.eye(lin.in_features, device=lin.weight.device)
            q = method(lin.weight, H)
            reports[name] = _report(lin.weight, q.dequantize(), None)
            _replace(model, name, (module_for or _module)(q, lin.bias))
    return reports
