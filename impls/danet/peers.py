"""Peers: ``F.scaled_dot_product_attention`` for both cores (specs/danet.md §7).

PAM: q = qᵀ, k = kᵀ, v = vᵀ on ``[B, 1, N, ·]`` with ``scale=1.0``.
CAM: query = key = value = X on ``[B, 1, C, N]`` with ``scale=-1.0`` (softmax(−E));
``sign="paper"`` uses ``scale=1.0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import attnbench
from impls.danet.mechanism import check_sign


@attnbench.register("danet.pam", kind="peer", name="sdpa")
def pam_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``F.scaled_dot_product_attention(qᵀ, kᵀ, vᵀ, scale=1.0)``."""
    B, _, H, W = q.shape
    qf, kf, vf = (t.flatten(2).transpose(1, 2)[:, None] for t in (q, k, v))
    out = F.scaled_dot_product_attention(qf, kf, vf, scale=1.0)
    return out[:, 0].transpose(1, 2).reshape(B, -1, H, W)


@attnbench.register("danet.cam", kind="peer", name="sdpa")
def cam_sdpa(x: torch.Tensor, *, sign: str = "code") -> torch.Tensor:
    """``F.scaled_dot_product_attention(X, X, X, scale=-1.0)`` (paper sign: ``scale=1.0``)."""
    check_sign(sign)
    X = x.flatten(2)[:, None]  # [B, 1, C, N]
    out = F.scaled_dot_product_attention(X, X, X, scale=-1.0 if sign == "code" else 1.0)
    return out[:, 0].reshape(x.shape)
