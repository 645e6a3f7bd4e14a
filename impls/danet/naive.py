"""Naive DANet cores: explicit loops over positions (PAM) and channels (CAM), float64-friendly."""

from __future__ import annotations

import torch

import attnbench
from impls.danet.mechanism import check_sign
from impls.non_local.naive import skip_gradcheck


@attnbench.register("danet.pam", kind="naive", name="naive", supports=skip_gradcheck)
def pam_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k: [B, Cq, H, W]; v: [B, C, H, W] -> [B, C, H, W]; loops over queries n and keys m."""
    B, _, H, W = q.shape
    N = H * W
    qf, kf, vf = (t.reshape(B, -1, N) for t in (q, k, v))
    batches = []
    for b in range(B):
        keys = [kf[b, :, m] for m in range(N)]
        values = [vf[b, :, m] for m in range(N)]
        columns = []
        for n in range(N):
            query = qf[b, :, n]
            energy = torch.stack([torch.dot(query, key) for key in keys])
            weights = torch.exp(energy - energy.max())
            attn = (weights / weights.sum()).unbind()
            out = attn[0] * values[0]
            for m in range(1, N):
                out = out + attn[m] * values[m]
            columns.append(out)
        batches.append(torch.stack(columns, dim=1).reshape(-1, H, W))
    return torch.stack(batches)


@attnbench.register("danet.cam", kind="naive", name="naive", supports=skip_gradcheck)
def cam_naive(x: torch.Tensor, *, sign: str = "code") -> torch.Tensor:
    """x: [B, C, H, W] -> [B, C, H, W]; loops over channel pairs (i, j)."""
    check_sign(sign)
    B, C, H, W = x.shape
    X = x.reshape(B, C, H * W)
    batches = []
    for b in range(B):
        channels = [X[b, j] for j in range(C)]
        rows = []
        for i in range(C):
            energy = torch.stack([torch.dot(channels[i], xj) for xj in channels])
            logits = energy - energy.max() if sign == "paper" else energy.max() - energy
            weights = torch.exp(logits - logits.max())
            attn = (weights / weights.sum()).unbind()
            out = attn[0] * channels[0]
            for j in range(1, C):
                out = out + attn[j] * channels[j]
            rows.append(out)
        batches.append(torch.stack(rows).reshape(C, H, W))
    return torch.stack(batches)
