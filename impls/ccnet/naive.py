"""Naive criss-cross attention: explicit loops over pixels and their H+W−1 keys.

Obviously correct and slow; the float64 ground truth for every other impl.
"""

from __future__ import annotations

import torch

import attnbench


def criss_cross_keys(y: int, x: int, H: int, W: int) -> list[tuple[int, int]]:
    """Ω(y, x): the row (self included, once), then the column without self."""
    return [(y, xx) for xx in range(W)] + [(yy, x) for yy in range(H) if yy != y]


@attnbench.register("ccnet", kind="naive", name="naive")
def cca_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k: [B, Cq, H, W]; v: [B, C, H, W] -> [B, C, H, W]."""
    B, _, H, W = q.shape
    rows = []
    for b in range(B):
        pixels = []
        for y in range(H):
            for x in range(W):
                keys = criss_cross_keys(y, x, H, W)
                energy = torch.stack([(q[b, :, y, x] * k[b, :, yy, xx]).sum() for yy, xx in keys])
                weights = torch.exp(energy - energy.max())
                attn = weights / weights.sum()
                out = attn[0] * v[b, :, keys[0][0], keys[0][1]]
                for i in range(1, len(keys)):
                    out = out + attn[i] * v[b, :, keys[i][0], keys[i][1]]
                pixels.append(out)
        rows.append(torch.stack(pixels, dim=1).reshape(-1, H, W))
    return torch.stack(rows)
