"""Naive non-local core: explicit loops over queries and keys, float64-friendly.

Obviously correct and slow; the float64 ground truth for every other impl.
"""

from __future__ import annotations

import torch

import attnbench
from attnbench.cases import Case
from impls.non_local.mechanism import SOFTMAX_MODES, check_args


def skip_gradcheck(case: Case, dtype: str, device: str) -> str | None:
    """Cases tagged ``gradcheck``: the naive loops are autograd over scalar ops; gradcheck
    would cost two ~0.2 s forwards per input element (minutes per case). The loops' own
    gradients are still compared on every quick case (backward rows)."""
    if "gradcheck" in case.tags:
        return "naive: gradcheck skipped (2 forwards per input element through Python loops); see vectorized/ext"
    return None


@attnbench.register("nonlocal", kind="naive", name="naive", supports=skip_gradcheck)
def non_local_naive(
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
    Hk, Wk = phi.shape[2:]
    M = Hk * Wk
    sigma = 1.0 if scale is None else scale
    batches = []
    for b in range(B):
        # key vectors φ_j, g_j in row-major order j = y'·Wk + x'
        phis = [phi[b, :, yy, xx] for yy in range(Hk) for xx in range(Wk)]
        gs = [g[b, :, yy, xx] for yy in range(Hk) for xx in range(Wk)]
        if mode == "concat":
            assert w is not None
            key_terms = [torch.dot(w[Ck:], p) for p in phis]
        queries = []
        for y in range(H):
            for x in range(W):
                t = theta[b, :, y, x]
                if mode in SOFTMAX_MODES:
                    energy = torch.stack([sigma * torch.dot(t, p) for p in phis])
                    weights = torch.exp(energy - energy.max())
                    coeffs = weights / weights.sum()
                elif mode == "dot":
                    coeffs = torch.stack([torch.dot(t, p) for p in phis]) / M
                else:
                    assert w is not None
                    query_term = torch.dot(w[:Ck], t)
                    coeffs = torch.stack([torch.relu(query_term + kt) for kt in key_terms]) / M
                parts = coeffs.unbind()
                out = parts[0] * gs[0]
                for j in range(1, M):
                    out = out + parts[j] * gs[j]
                queries.append(out)
        batches.append(torch.stack(queries, dim=1).reshape(-1, H, W))
    return torch.stack(batches)
