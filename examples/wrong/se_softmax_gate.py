"""Wrong on purpose: the SE gate is a softmax over channels instead of a sigmoid per channel.

Caught by the forward check (and the gate_range / zero_w2 properties).
"""

import torch
import torch.nn.functional as F

import attnbench


@attnbench.register("se", kind="user", name="softmax_gate")
def se_softmax_gate(x, w1, b1, w2, b2):
    if w1.shape[0] < 1:
        raise ValueError(f"se: Cr = {w1.shape[0]} hidden units for C = {x.shape[1]} (r > C); need Cr >= 1")
    b1 = None if b1 is None or b1.numel() == 0 else b1
    b2 = None if b2 is None or b2.numel() == 0 else b2
    z = x.mean(dim=(2, 3))
    s = torch.softmax(F.linear(torch.relu(F.linear(z, w1, b1)), w2, b2), dim=1)  # BUG: channels compete
    return x * s[:, :, None, None]
