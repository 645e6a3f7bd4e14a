"""Naive Squeeze-and-Excitation: explicit loops over (b, c), pixels and hidden units.

Obviously correct and slow; the float64 ground truth for every other impl.
"""

from __future__ import annotations

import torch

import attnbench
from impls.se.mechanism import bias_or_none, check_hidden


@attnbench.register("se", kind="naive", name="naive")
def se_naive(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None
) -> torch.Tensor:
    """x: [B, C, H, W]; w1: [Cr, C]; b1: [Cr] | None; w2: [C, Cr]; b2: [C] | None -> [B, C, H, W]."""
    B, C, H, W = x.shape
    Cr = w1.shape[0]
    check_hidden(C, Cr)
    b1, b2 = bias_or_none(b1), bias_or_none(b2)
    planes = []
    for b in range(B):
        # squeeze: z[c] = (1/HW) Σ_{y,x} x[b,c,y,x]
        z = []
        for c in range(C):
            total = x.new_zeros(())
            for y in range(H):
                for xx in range(W):
                    total = total + x[b, c, y, xx]
            z.append(total / (H * W))
        # excitation MLP: u[r] = relu(Σ_c w1[r,c] z[c] + b1[r]); s[c] = sigmoid(Σ_r w2[c,r] u[r] + b2[c])
        u = []
        for r in range(Cr):
            pre = b1[r] if b1 is not None else x.new_zeros(())
            for c in range(C):
                pre = pre + w1[r, c] * z[c]
            u.append(torch.clamp_min(pre, 0.0))
        for c in range(C):
            pre = b2[c] if b2 is not None else x.new_zeros(())
            for r in range(Cr):
                pre = pre + w2[c, r] * u[r]
            gate = 1.0 / (1.0 + torch.exp(-pre))
            planes.append(x[b, c] * gate)  # excite: one plane times its scalar gate
    return torch.stack(planes).reshape(B, C, H, W)
