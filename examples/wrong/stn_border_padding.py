"""A subtly wrong bilinear sampler: border (clamp) padding instead of zeros (specs/stn.md §6,
mutation 3). Identical wherever the grid stays inside the image."""

import torch.nn.functional as F

import attnbench


@attnbench.register("stn.bilinear_sample", kind="user", name="border_padding")
def bilinear_sample_border_padding(inp, grid, align_corners=False):
    return F.grid_sample(inp, grid, mode="bilinear", padding_mode="border", align_corners=align_corners)
