"""Vectorized criss-cross attention in the two-op layout [row W | column H−1].

Row and column energies come from batched matmuls; the column's self entry is
*removed* by a gather (not masked with −inf), so the attention map has exactly
H+W−1 entries per pixel, the layout of the original kernels (specs/ccnet.md §2.1).
"""

from __future__ import annotations

import torch

import attnbench


def column_without_self(H: int, device: torch.device) -> torch.Tensor:
    """idx[y, j] = j if j < y else j + 1: the H−1 column keys of query row y, ascending."""
    j = torch.arange(H - 1, device=device)
    y = torch.arange(H, device=device)[:, None]
    return j + (j >= y).long()


@attnbench.register("ccnet", kind="vectorized", name="vectorized")
def cca_vectorized(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k: [B, Cq, H, W]; v: [B, C, H, W] -> [B, C, H, W]."""
    B, _, H, W = q.shape
    idx = column_without_self(H, q.device)  # [H, H-1]
    # energy_row[b, y, x, x'] = q[b,:,y,x]·k[b,:,y,x']
    energy_row = q.permute(0, 2, 3, 1) @ k.permute(0, 2, 1, 3)  # [B, H, W, W]
    # energy_col[b, x, y, y'] = q[b,:,y,x]·k[b,:,y',x], then drop y' = y
    energy_col = q.permute(0, 3, 2, 1) @ k.permute(0, 3, 1, 2)  # [B, W, H, H]
    energy_col = energy_col.gather(-1, idx.expand(B, W, H, H - 1))  # [B, W, H, H-1]
    energy = torch.cat([energy_row, energy_col.transpose(1, 2)], dim=-1)  # [B, H, W, H+W-1]
    attn = torch.softmax(energy, dim=-1)
    attn_row, attn_col = attn.split([W, H - 1], dim=-1)
    # put the column weights back on an H×H grid with a zero diagonal
    attn_col_full = attn_col.new_zeros(B, W, H, H).scatter(-1, idx.expand(B, W, H, H - 1), attn_col.transpose(1, 2))
    out_row = attn_row @ v.permute(0, 2, 3, 1)  # [B, H, W, C]
    out_col = attn_col_full @ v.permute(0, 3, 2, 1)  # [B, W, H, C]
    return (out_row.permute(0, 3, 1, 2) + out_col.permute(0, 3, 2, 1)).contiguous()
