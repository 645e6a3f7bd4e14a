"""Vectorized DANet cores, as in the official ``PAM_Module`` / ``CAM_Module`` (batched matmuls)."""

from __future__ import annotations

import torch

import attnbench
from impls.danet.mechanism import check_sign


@attnbench.register("danet.pam", kind="vectorized", name="vectorized")
def pam_vectorized(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k: [B, Cq, H, W]; v: [B, C, H, W] -> [B, C, H, W]."""
    B, _, H, W = q.shape
    query = q.flatten(2).transpose(1, 2)  # [B, N, Cq]
    energy = query @ k.flatten(2)  # [B, N, N]
    attn = torch.softmax(energy, dim=-1)
    out = v.flatten(2) @ attn.transpose(1, 2)  # [B, C, N]
    return out.reshape(B, -1, H, W)


@attnbench.register("danet.cam", kind="vectorized", name="vectorized")
def cam_vectorized(x: torch.Tensor, *, sign: str = "code") -> torch.Tensor:
    """x: [B, C, H, W] -> [B, C, H, W]; softmax(rowmax − E) (sign="paper": softmax(E))."""
    check_sign(sign)
    X = x.flatten(2)  # [B, C, N]
    energy = X @ X.transpose(1, 2)  # [B, C, C]
    if sign == "paper":
        attn = torch.softmax(energy, dim=-1)
    else:
        attn = torch.softmax(energy.amax(-1, keepdim=True) - energy, dim=-1)
    return (attn @ X).reshape(x.shape)
