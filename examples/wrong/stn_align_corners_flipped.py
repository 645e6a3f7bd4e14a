"""A subtly wrong bilinear sampler: align_corners flipped (specs/stn.md §6, mutation 1).

The two conventions differ by half a pixel at the border and a (W−1)/W scale:
small, smooth, and wrong everywhere except the image centre."""

import torch.nn.functional as F

import attnbench


@attnbench.register("stn.bilinear_sample", kind="user", name="align_corners_flipped")
def bilinear_sample_align_corners_flipped(inp, grid, align_corners=False):
    return F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=not align_corners)
