"""Naive multi-head attention: explicit loops over batch, head and query row.

Obviously correct and slow; the float64 ground truth for every other impl. For
each query row the allowed keys are listed with a plain Python predicate; a row
with no allowed key is the constant 0 (not connected to the inputs, so its
gradient is exactly 0: no NaN can arise).
"""

from __future__ import annotations

import torch

import attnbench


def allowed_keys(b: int, i: int, S: int, key_padding_mask: torch.Tensor | None, causal: bool) -> list[int]:
    """Keys j that query i of batch element b attends: not padded and, if causal, j <= i (upper-left)."""
    keys = []
    for j in range(S):
        if key_padding_mask is not None and bool(key_padding_mask[b, j]):
            continue  # True = ignore
        if causal and j > i:
            continue
        keys.append(j)
    return keys


@attnbench.register("mhsa", kind="naive", name="naive")
def attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """q: [B, h, L, d], k: [B, h, S, d], v: [B, h, S, dv], mask bool [B, S] (True = ignore) -> [B, h, L, dv]."""
    B, h, L, d = q.shape
    S, dv = v.shape[2], v.shape[3]
    s = scale if scale is not None else d**-0.5
    q64, k64, v64 = (t.to(torch.float64) for t in (q, k, v))
    batches = []
    for b in range(B):
        heads = []
        for hh in range(h):
            rows = []
            for i in range(L):
                keys = allowed_keys(b, i, S, key_padding_mask, causal)
                if not keys:
                    rows.append(torch.zeros(dv, dtype=torch.float64, device=q.device))
                    continue
                idx = torch.tensor(keys, device=q.device)
                logits = s * (k64[b, hh, idx] @ q64[b, hh, i])  # [n_keys]
                weights = torch.exp(logits - logits.max())
                attn = weights / weights.sum()
                rows.append(attn @ v64[b, hh, idx])
            heads.append(torch.stack(rows) if rows else torch.zeros(0, dv, dtype=torch.float64, device=q.device))
        batches.append(torch.stack(heads))
    return torch.stack(batches).to(q.dtype)
