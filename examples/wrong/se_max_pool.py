"""Wrong on purpose: SE squeeze with max pooling instead of average pooling.

Caught by the forward check.
"""

import torch
import torch.nn.functional as F

import attnbench


@attnbench.register("se", kind="user", name="max_pool")
def se_max_pool(x, w1, b1, w2, b2):
    if w1.shape[0] < 1:
        raise ValueError(f"se: Cr = {w1.shape[0]} hidden units for C = {x.shape[1]} (r > C); need Cr >= 1")
    b1 = None if b1 is None or b1.numel() == 0 else b1
    b2 = None if b2 is None or b2.numel() == 0 else b2
    z = x.amax(dim=(2, 3))  # BUG: the paper's squeeze is the global *average*
    s = torch.sigmoid(F.linear(torch.relu(F.linear(z, w1, b1)), w2, b2))
    return x * s[:, :, None, None]
