"""Peers: PyTorch built-ins computing the same core (specs/nonlocal.md §7).

- ``sdpa``: ``F.scaled_dot_product_attention`` on ``[B, 1, N, ·]`` with
  ``scale=σ`` passed explicitly (its default is 1/√Ck), softmax modes only.
- ``bmm``: two ``torch.bmm`` calls, ``dot`` mode only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import attnbench
from attnbench.cases import Case
from impls.non_local.mechanism import SOFTMAX_MODES, check_args


def _softmax_only(case: Case, dtype: str, device: str) -> str | None:
    mode = case.get("mode")
    return None if mode in SOFTMAX_MODES else f"sdpa computes softmax attention; mode {mode!r} is not one"


def _dot_only(case: Case, dtype: str, device: str) -> str | None:
    mode = case.get("mode")
    return None if mode == "dot" else f"bmm peer covers mode 'dot' only, not {mode!r}"


@attnbench.register("nonlocal", kind="peer", name="sdpa", supports=_softmax_only)
def non_local_sdpa(
    theta: torch.Tensor,
    phi: torch.Tensor,
    g: torch.Tensor,
    w: torch.Tensor | None = None,
    *,
    mode: str = "embedded_gaussian",
    scale: float | None = None,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention(θᵀ, φᵀ, gᵀ, scale=σ)``."""
    check_args(mode, w, scale)
    if mode not in SOFTMAX_MODES:
        raise ValueError(f"sdpa peer: mode {mode!r} is not a softmax mode")
    B, _, H, W = theta.shape
    q, k, v = (t.flatten(2).transpose(1, 2)[:, None] for t in (theta, phi, g))
    out = F.scaled_dot_product_attention(q, k, v, scale=1.0 if scale is None else scale)
    return out[:, 0].transpose(1, 2).reshape(B, -1, H, W)


@attnbench.register("nonlocal", kind="peer", name="bmm", supports=_dot_only)
def non_local_bmm(
    theta: torch.Tensor,
    phi: torch.Tensor,
    g: torch.Tensor,
    w: torch.Tensor | None = None,
    *,
    mode: str = "dot",
    scale: float | None = None,
) -> torch.Tensor:
    """dot mode: ``bmm(bmm(θᵀ, φ) / M, gᵀ)``."""
    check_args(mode, w, scale)
    if mode != "dot":
        raise ValueError(f"bmm peer: mode {mode!r} is not 'dot'")
    B, _, H, W = theta.shape
    M = phi.shape[2] * phi.shape[3]
    f = torch.bmm(theta.flatten(2).transpose(1, 2), phi.flatten(2)) / M
    return torch.bmm(g.flatten(2), f.transpose(1, 2)).reshape(B, -1, H, W)
