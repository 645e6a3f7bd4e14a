"""A wrong glimpse: the centre pixel is rounded instead of floored, one pixel off
for half the locations. Caught by ``forward``."""

import torch
import torch.nn.functional as F

import attnbench


@attnbench.register("hard_attention.glimpse", kind="user", name="glimpse_off_by_one")
def glimpse_off_by_one(x, loc, size, scales):
    B, C, H, W = x.shape
    out = []
    for b in range(B):
        lx, ly = (float(v) for v in loc[b].detach().double())
        cx = min(max(round((lx + 1) / 2 * W), 0), W - 1)  # bug: floor
        cy = min(max(round((ly + 1) / 2 * H), 0), H - 1)
        per_scale = []
        for s in range(scales):
            f = 2**s
            side = size * f
            img = F.pad(x[b : b + 1], (side, side, side, side))
            r0, c0 = cy - side // 2 + side, cx - side // 2 + side
            per_scale.append(F.avg_pool2d(img[:, :, r0 : r0 + side, c0 : c0 + side], f))
        out.append(torch.cat(per_scale, 1))
    return torch.cat(out, 0)
