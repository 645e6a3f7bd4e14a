"""Peers: torch's own sampler and grid generator (exact peers, specs/stn.md §7).

``align_corners`` is always passed explicitly: its default changed in torch 1.3
and an implicit one warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

import attnbench


@attnbench.register("stn.bilinear_sample", kind="peer", name="grid_sample")
def bilinear_sample_grid_sample(inp: torch.Tensor, grid: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """``F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=...)``."""
    return F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)


@attnbench.register("stn.affine_grid", kind="peer", name="affine_grid")
def affine_grid_torch(theta: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """``F.affine_grid(theta, size, align_corners=...)``."""
    with warnings.catch_warnings():  # unit-size axes with align_corners=True give 0, as the spec wants
        warnings.filterwarnings("ignore", message=".*unit-size grids.*")
        return F.affine_grid(theta, list(size), align_corners=align_corners)
