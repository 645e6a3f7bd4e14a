"""Vectorized Squeeze-and-Excitation: mean, two linear layers, broadcast multiply."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import attnbench
from impls.se.mechanism import bias_or_none, check_hidden


@attnbench.register("se", kind="vectorized", name="vectorized")
def se_vectorized(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None
) -> torch.Tensor:
    """x: [B, C, H, W]; w1: [Cr, C]; b1: [Cr] | None; w2: [C, Cr]; b2: [C] | None -> [B, C, H, W]."""
    check_hidden(x.shape[1], w1.shape[0])
    z = x.mean(dim=(2, 3))  # [B, C]
    u = torch.relu(F.linear(z, w1, bias_or_none(b1)))  # [B, Cr]
    s = torch.sigmoid(F.linear(u, w2, bias_or_none(b2)))  # [B, C]
    return x * s[:, :, None, None]
