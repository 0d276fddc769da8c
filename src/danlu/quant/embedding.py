"""A quantized embedding table, which also serves as the tied LM head.

`QuantEmbedding` holds the [vocab, dim] table as a quantized matrix (an `Int8Linear`, symmetric per row,
or an `Int4Linear`, grouped along dim) and answers both uses of a tied table:

- integer ids: gather their rows of codes and dequantize only those rows (fp32);
- float activations [..., dim]: the quantized matrix product, i.e. the logits, on the int8/int4 kernel.

A tied model gets the one module at both `embed` and `lm_head`, so the table is stored once. `weight` is
the dequantized fp32 table, made on each access, for callers that read a model's device, dtype or
embedding values; the forward never uses it.
"""

from __future__ import annotations

import torch
from torch import nn

from danlu.errors import ConfigError
from danlu.quant.linear import Int4Linear, Int8Linear, QuantLinear
from danlu.quant.quantizers import QuantSpec, dequantize, error_report, quantize


class QuantEmbedding(nn.Module):
    """An embedding (and, tied, the LM head) over a quantized [vocab, dim] table."""

    def __init__(self, table: QuantLinear):
        super().__init__()
        if not isinstance(table, Int8Linear | Int4Linear) or type(table).kind not in ("int8", "int4"):
            raise TypeError("QuantEmbedding takes an Int8Linear or an Int4Linear table")
        self.table = table
        if isinstance(table, Int8Linear):
            table.keep_codes = True  # the gathers read rows of qweight
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features

    @property
    def weight(self) -> torch.Tensor:
        return self.table.dequantize()

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """fp32 rows [*ids.shape, dim] of the table."""
        flat = ids.reshape(-1)
        t = self.table
        if isinstance(t, Int4Linear):
            out = dequantize(t.row_codes(flat), t.scale[flat], t.offset[flat], t.spec())
        else:
            out = t.qweight[flat].float() * t.scale[flat, None]
        return out.view(*ids.shape, self.embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            return self.table(x)
        return self.rows(x)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, kind={self.table.kind}"


def table_spec(bits: int, group_size: int = 128, symmetric: bool = False) -> QuantSpec:
    """The grid of a quantized table: int8 symmetric per row, or 2-4 bits grouped along dim."""
    if bits == 8:
        return QuantSpec(8, True, "channel")
    if 2 <= bits <= 4:
        return QuantSpec(bits, symmetric, "group", group_size)
    raise ConfigError(f"a quantized embedding holds 8 or 2-4 bits, not {bits}")


@torch.no_grad()
def quantize_embedding(
    model: nn.Module, spec: QuantSpec, int8_kernel: str = "weight_only"
) -> dict[str, dict[str, float]]:
    """Replace model.embed, and the LM head when it is tied to it, by one QuantEmbedding (RTN on spec;
    an int8 table's head product on `int8_kernel`); the error report of the table, by name. An untied
    head stays whatever it is."""
    embed = getattr(model, "embed", None)
    if not isinstance(embed, nn.Embedding):
        raise ConfigError("the model has no plain embedding table to quantize")
    tied = getattr(getattr(model, "lm_head", None), "weight", None) is embed.weight
    W = embed.weight.detach()
    q = quantize(W, spec)
    table: QuantLinear = (
        Int8Linear.from_qtensor(q, kernel=int8_kernel) if spec.bits == 8 else Int4Linear.from_qtensor(q)
    )
    module = QuantEmbedding(table)
    model.embed = module
    if tied:
        model.lm_head = module
    return {"embed": error_report(W, q.dequantize())}
