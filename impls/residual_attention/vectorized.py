"""Vectorized residual attention: the three kinds as whole-tensor PyTorch expressions."""

from __future__ import annotations

import torch

import attnbench
from impls.residual_attention.mechanism import NORM_EPS, VAR_EPS, check_kind


@attnbench.register("residual_attention", kind="vectorized", name="vectorized")
def ran_vectorized(trunk: torch.Tensor, mask_logits: torch.Tensor, kind: str = "mixed") -> torch.Tensor:
    """trunk, mask_logits: [B, C, H, W] -> (1 + f(mask_logits)) ⊙ trunk, [B, C, H, W]."""
    check_kind(kind)
    m = mask_logits
    if kind == "mixed":
        f = torch.sigmoid(m)
    elif kind == "channel":
        f = m / torch.linalg.vector_norm(m, dim=1, keepdim=True).clamp_min(NORM_EPS)
    else:
        mean = m.mean(dim=(2, 3), keepdim=True)
        var = (m - mean).square().mean(dim=(2, 3), keepdim=True)  # biased (1/HW)
        f = torch.sigmoid((m - mean) * torch.rsqrt(var + VAR_EPS))
    return (1.0 + f) * trunk
