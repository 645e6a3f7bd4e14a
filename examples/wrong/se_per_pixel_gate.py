"""Wrong on purpose: the SE gate computed per pixel (the MLP at every position, no squeeze).

Caught by the forward check: the gate should come from the pooled mean z.
"""

import torch
import torch.nn.functional as F

import attnbench


@attnbench.register("se", kind="user", name="per_pixel_gate")
def se_per_pixel_gate(x, w1, b1, w2, b2):
    if w1.shape[0] < 1:
        raise ValueError(f"se: Cr = {w1.shape[0]} hidden units for C = {x.shape[1]} (r > C); need Cr >= 1")
    b1 = None if b1 is None or b1.numel() == 0 else b1
    b2 = None if b2 is None or b2.numel() == 0 else b2
    pixels = x.permute(0, 2, 3, 1)  # [B, H, W, C]: BUG, no pooling
    s = torch.sigmoid(F.linear(torch.relu(F.linear(pixels, w1, b1)), w2, b2))
    return x * s.permute(0, 3, 1, 2)
