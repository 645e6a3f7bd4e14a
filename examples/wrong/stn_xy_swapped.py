"""A subtly wrong bilinear sampler: the grid read as (y, x), the legacy stn.pytorch order,
without the adapter's flip (specs/stn.md §6, mutation 2). Right only where x = y."""

import torch.nn.functional as F

import attnbench


@attnbench.register("stn.bilinear_sample", kind="user", name="xy_swapped")
def bilinear_sample_xy_swapped(inp, grid, align_corners=False):
    return F.grid_sample(inp, grid.flip(-1), mode="bilinear", padding_mode="zeros", align_corners=align_corners)
