"""The byte layout of `torch._convert_weight_to_int4pack_for_cpu` (innerKTiles 1), read back without the
kernel, so that an `Int4Linear` can keep its codes in that layout only, instead of beside a copy.

The converter takes codes [N, K] (N a multiple of 16) and returns uint8 [N, K / 2], made of row blocks
of B rows (the last block may be smaller), where B is the kernel's vector width in rows: 64 on a CPU
with AVX-512, 32 with AVX2 only; `block_rows` finds it once by packing a probe. A block of `size` rows
starting at row b is size * K / 2 bytes, K runs of size / 2 bytes, one run per input column k:

- a full block (B rows): the byte at run k, place c holds row b + c (low nibble) and row b + c + B / 2
  (high nibble);
- a smaller last block: the byte at run k, place c holds row b + 2c (low) and row b + 2c + 1 (high).

`tests/test_quant_linear_embedding.py` checks these functions against the converter itself for full
and partial blocks, so a torch that changes the layout fails there.
"""

from __future__ import annotations

import torch

_block_rows: int | None = None


def block_rows() -> int:
    """B, the rows of a full block on this CPU: the high nibble of byte 0 holds row B / 2, so a probe whose
    code is row // 16 reads B / 32 there."""
    global _block_rows
    if _block_rows is None:
        probe = (torch.arange(128) // 16)[:, None].expand(128, 2)
        _block_rows = 32 * int(kernel_pack(probe).reshape(-1)[0] >> 4)
    return _block_rows


def kernel_pack(codes: torch.Tensor) -> torch.Tensor:
    """codes [N, K] (0..15) in the CPU int4 kernel's layout, uint8 [N, K / 2]."""
    return torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)


def _places(rows: torch.Tensor, n_rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat byte index [R, cols], high-nibble flag [R, 1]) of every code of the given rows."""
    b_rows = block_rows()
    block = rows // b_rows
    r = rows % b_rows
    size = (n_rows - block * b_rows).clamp(max=b_rows)
    full = size == b_rows
    place = torch.where(full, r % (b_rows // 2), r // 2)
    high = torch.where(full, r >= b_rows // 2, r % 2 == 1)
    start = block * b_rows * cols // 2 + place
    k = torch.arange(cols, device=rows.device)
    return start[:, None] + k[None, :] * (size[:, None] // 2), high[:, None]


def kernel_rows(packed: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Codes [R, K] (uint8) of the given rows of a matrix of n_rows rows held in kernel layout."""
    cols = packed.shape[1] * 2
    index, high = _places(rows.reshape(-1).long(), n_rows, cols)
    byte = packed.reshape(-1)[index]
    return torch.where(high, byte >> 4, byte & 0xF)


def kernel_unpack(packed: torch.Tensor) -> torch.Tensor:
    """All codes [N, K] (uint8) of a matrix held in kernel layout (by whole blocks: no index tensor)."""
    n_rows, cols = packed.shape[0], packed.shape[1] * 2
    b_rows = block_rows()
    n_full = n_rows // b_rows
    flat = packed.reshape(-1)
    half = b_rows // 2
    full = flat[: n_full * b_rows * cols // 2].view(n_full, cols, half)
    parts = [torch.stack([full & 0xF, full >> 4], dim=1).transpose(2, 3).reshape(-1, cols)]
    size = n_rows - n_full * b_rows
    if size:
        tail = flat[n_full * b_rows * cols // 2 :].view(cols, size // 2)
        parts.append(torch.stack([tail & 0xF, tail >> 4], dim=-1).permute(1, 2, 0).reshape(size, cols))
    return torch.cat(parts)
