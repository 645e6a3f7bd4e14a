"""Naive spatial transformer cores: loops over output pixels, the four neighbours written out.

Obviously correct and slow; the float64 ground truth for every other impl.
Gradients come from autograd through the loop body; since the corner indices
are plain integers (``math.floor``), the derivative at an integer coordinate is
the right-hand one: the floor convention of specs/stn.md §2.
"""

from __future__ import annotations

import math

import torch

import attnbench


def unnormalize(g: torch.Tensor, size: int, align_corners: bool) -> torch.Tensor:
    """Normalised coordinate (−1..1) -> pixel coordinate (0..size−1 at the centres)."""
    if align_corners:
        return (g + 1) / 2 * (size - 1)
    return ((g + 1) * size - 1) / 2


@attnbench.register("stn.bilinear_sample", kind="naive", name="naive")
def bilinear_sample_naive(inp: torch.Tensor, grid: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """inp: [B, C, H, W]; grid: [B, Ho, Wo, 2] as (x, y) -> [B, C, Ho, Wo], zeros outside."""
    B, C, H, W = inp.shape
    _, Ho, Wo, _ = grid.shape
    zero = inp.new_zeros(C)

    def value(b: int, y: int, x: int) -> torch.Tensor:
        """V(y, x): the pixel's C channels, or zeros outside the image (per corner)."""
        if 0 <= y < H and 0 <= x < W:
            return inp[b, :, y, x]
        return zero

    batches = []
    for b in range(B):
        pixels = []
        for i in range(Ho):
            for j in range(Wo):
                ix = unnormalize(grid[b, i, j, 0], W, align_corners)
                iy = unnormalize(grid[b, i, j, 1], H, align_corners)
                x0 = math.floor(float(ix.detach()))
                y0 = math.floor(float(iy.detach()))
                x1, y1 = x0 + 1, y0 + 1
                tx = ix - x0
                ty = iy - y0
                out = (
                    (1 - ty) * (1 - tx) * value(b, y0, x0)
                    + (1 - ty) * tx * value(b, y0, x1)
                    + ty * (1 - tx) * value(b, y1, x0)
                    + ty * tx * value(b, y1, x1)
                )
                pixels.append(out)
        batches.append(torch.stack(pixels, dim=1).reshape(C, Ho, Wo))
    return torch.stack(batches)


def base_coordinate(k: int, n: int, align_corners: bool) -> float:
    """k-th of n normalised pixel coordinates; a size-1 axis gives 0 in both modes."""
    if n == 1:
        return 0.0
    return -1 + 2 * k / (n - 1) if align_corners else (2 * k + 1) / n - 1


@attnbench.register("stn.affine_grid", kind="naive", name="naive")
def affine_grid_naive(
    theta: torch.Tensor, size: tuple[int, int, int, int], align_corners: bool = False
) -> torch.Tensor:
    """theta: [B, 2, 3]; size: (B, C, Ho, Wo) -> grid [B, Ho, Wo, 2] as (x, y)."""
    B, _, Ho, Wo = size
    points = []
    for b in range(B):
        for i in range(Ho):
            y = base_coordinate(i, Ho, align_corners)
            for j in range(Wo):
                x = base_coordinate(j, Wo, align_corners)
                gx = theta[b, 0, 0] * x + theta[b, 0, 1] * y + theta[b, 0, 2]
                gy = theta[b, 1, 0] * x + theta[b, 1, 1] * y + theta[b, 1, 2]
                points.append(torch.stack([gx, gy]))
    return torch.stack(points).reshape(B, Ho, Wo, 2)
