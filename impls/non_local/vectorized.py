"""Vectorized non-local core: one [B, N, M] pairwise matrix and batched matmuls."""

from __future__ import annotations

import torch

import attnbench
from impls.non_local.mechanism import SOFTMAX_MODES, check_args


@attnbench.register("nonlocal", kind="vectorized", name="vectorized")
def non_local_vectorized(
    theta: torch.Tensor,
    phi: torch.Tensor,
    g: torch.Tensor,
    w: torch.Tensor | None = None,
    *,
    mode: str = "embedded_gaussian",
    scale: float | None = None,
) -> torch.Tensor:
    """theta: [B, Ck, H, W]; phi: [B, Ck, Hk, Wk]; g: [B, Cv, Hk, Wk]; w: [2Ck] (concat) -> [B, Cv, H, W]."""
    check_args(mode, w, scale)
    B, Ck, H, W = theta.shape
    theta_f = theta.flatten(2).transpose(1, 2)  # [B, N, Ck]
    phi_f = phi.flatten(2)  # [B, Ck, M]
    g_f = g.flatten(2).transpose(1, 2)  # [B, M, Cv]
    M = phi_f.shape[2]
    if mode in SOFTMAX_MODES:
        energy = theta_f @ phi_f
        if scale is not None:
            energy = energy * scale
        pairwise = torch.softmax(energy, dim=-1)
    elif mode == "dot":
        pairwise = (theta_f @ phi_f) / M
    else:
        assert w is not None
        a = theta_f @ w[:Ck]  # [B, N]
        b = w[Ck:] @ phi_f  # [B, M]
        pairwise = torch.relu(a[:, :, None] + b[:, None, :]) / M
    out = pairwise @ g_f  # [B, N, Cv]
    return out.transpose(1, 2).reshape(B, -1, H, W)
