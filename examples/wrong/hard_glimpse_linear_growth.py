"""A wrong glimpse: patches grow by +size per scale (size, 2·size, 3·size, …)
instead of doubling. Identical for scales ≤ 2; caught by ``forward`` on the
3-scale cases."""

import torch
import torch.nn.functional as F

import attnbench


@attnbench.register("hard_attention.glimpse", kind="user", name="glimpse_linear_growth")
def glimpse_linear_growth(x, loc, size, scales):
    B, C, H, W = x.shape
    out = []
    for b in range(B):
        lx, ly = (float(v) for v in loc[b].detach().double())
        cx = min(max(int((lx + 1) / 2 * W // 1), 0), W - 1)
        cy = min(max(int((ly + 1) / 2 * H // 1), 0), H - 1)
        per_scale = []
        for s in range(scales):
            f = s + 1  # bug: 2**s
            side = size * f
            img = F.pad(x[b : b + 1], (side, side, side, side))
            r0, c0 = cy - side // 2 + side, cx - side // 2 + side
            per_scale.append(F.avg_pool2d(img[:, :, r0 : r0 + side, c0 : c0 + side], f))
        out.append(torch.cat(per_scale, 1))
    return torch.cat(out, 0)
