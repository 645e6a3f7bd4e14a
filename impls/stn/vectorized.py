"""Vectorized spatial transformer cores, written with gathers (not ``F.grid_sample``).

The sampler flattens each input plane to ``[B, C, H·W]``, computes the four
corner indices and weights once per output point (``[B, Ho·Wo]``), and gathers
each corner for all channels; out-of-bounds corners get weight 0 and a clamped
(valid) index. Autograd differentiates the weights (grid gradient; the indices
are integers, so at an integer coordinate it is the right-hand derivative, the
floor convention) and the gathers (input gradient, a scatter-add).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

import attnbench


def unnormalize(g: torch.Tensor, size: int, align_corners: bool) -> torch.Tensor:
    if align_corners:
        return (g + 1) * ((size - 1) / 2)
    return ((g + 1) * size - 1) / 2


@attnbench.register("stn.bilinear_sample", kind="vectorized", name="vectorized")
def bilinear_sample_vectorized(inp: torch.Tensor, grid: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """inp: [B, C, H, W]; grid: [B, Ho, Wo, 2] as (x, y) -> [B, C, Ho, Wo], zeros outside."""
    B, C, H, W = inp.shape
    _, Ho, Wo, _ = grid.shape
    ix = unnormalize(grid[..., 0], W, align_corners).reshape(B, 1, Ho * Wo)
    iy = unnormalize(grid[..., 1], H, align_corners).reshape(B, 1, Ho * Wo)
    x0 = ix.detach().floor()
    y0 = iy.detach().floor()
    tx = ix - x0
    ty = iy - y0
    flat = inp.reshape(B, C, H * W)
    out = inp.new_zeros(B, C, Ho * Wo)
    for dy, wy in ((0, 1 - ty), (1, ty)):
        for dx, wx in ((0, 1 - tx), (1, tx)):
            xk, yk = x0 + dx, y0 + dy
            inside = (xk >= 0) & (xk <= W - 1) & (yk >= 0) & (yk <= H - 1)
            index = (yk.clamp(0, H - 1) * W + xk.clamp(0, W - 1)).long()  # [B, 1, Ho·Wo]
            corner = flat.gather(2, index.expand(B, C, Ho * Wo))
            out = out + (wy * wx * inside) * corner
    return out.reshape(B, C, Ho, Wo)


def base_coords(n: int, align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """The n normalised coordinates of one axis; a size-1 axis gives 0 (linspace would give −1)."""
    if n == 1:
        return like.new_zeros(1)
    k = torch.arange(n, dtype=like.dtype, device=like.device)
    return -1 + k * (2 / (n - 1)) if align_corners else (2 * k + 1) / n - 1


@attnbench.register("stn.affine_grid", kind="vectorized", name="vectorized")
def affine_grid_vectorized(theta: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """theta: [B, 2, 3]; size: (B, C, Ho, Wo) -> grid [B, Ho, Wo, 2] as (x, y)."""
    B, _, Ho, Wo = size
    x = base_coords(Wo, align_corners, theta)
    y = base_coords(Ho, align_corners, theta)
    base = torch.stack(
        [x[None, :].expand(Ho, Wo), y[:, None].expand(Ho, Wo), theta.new_ones(Ho, Wo)], dim=-1
    )  # [Ho, Wo, 3] as (x, y, 1)
    return (base.reshape(1, Ho * Wo, 3) @ theta.transpose(1, 2)).reshape(B, Ho, Wo, 2)
