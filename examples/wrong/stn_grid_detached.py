"""A subtly wrong bilinear sampler: the grid is detached, so no gradient reaches θ and the
localisation net never learns. Forward and input gradient are exact."""

import torch.nn.functional as F

import attnbench


@attnbench.register("stn.bilinear_sample", kind="user", name="grid_detached")
def bilinear_sample_grid_detached(inp, grid, align_corners=False):
    return F.grid_sample(inp, grid.detach(), mode="bilinear", padding_mode="zeros", align_corners=align_corners)
