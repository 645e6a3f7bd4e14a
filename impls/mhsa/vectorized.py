"""Vectorized multi-head attention with a NaN-free ("safe") softmax.

Masked logits are −inf; the row maximum is replaced by 0 where a row has no
allowed key, so ``exp(−inf − 0) = 0`` everywhere in it, and the denominator is
replaced by 1 there: a fully masked row is exactly 0 and its backward never
forms ``0/0`` or ``inf − inf`` (mutation 10 of specs/mhsa.md §6). Half inputs
run the softmax in float32 (statistics in float32, specs/README.md §2).
"""

from __future__ import annotations

import torch

import attnbench


def allowed_mask(
    key_padding_mask: torch.Tensor | None, causal: bool, L: int, S: int, device: torch.device
) -> torch.Tensor | None:
    """bool, broadcastable to [B, h, L, S]: True = attend; ``None`` when everything is allowed."""
    allowed = None
    if key_padding_mask is not None:
        allowed = ~key_padding_mask[:, None, None, :]  # [B, 1, 1, S]
    if causal:
        tril = torch.ones(L, S, dtype=torch.bool, device=device).tril()  # upper-left: j <= i
        allowed = tril if allowed is None else allowed & tril
    return allowed


def safe_softmax(logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim of the allowed entries; rows with none allowed are 0 (no NaN, fwd or bwd)."""
    if allowed is None:
        return torch.softmax(logits, dim=-1)
    logits = logits.masked_fill(~allowed, float("-inf"))
    row_max = logits.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros((), dtype=logits.dtype, device=logits.device))
    weights = torch.exp(logits - row_max)
    denom = weights.sum(dim=-1, keepdim=True)
    denom = torch.where(denom > 0, denom, torch.ones((), dtype=denom.dtype, device=denom.device))
    return weights / denom


@attnbench.register("mhsa", kind="vectorized", name="vectorized")
def attention_vectorized(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """q: [B, h, L, d], k: [B, h, S, d], v: [B, h, S, dv], mask bool [B, S] (True = ignore) -> [B, h, L, dv]."""
    L, d = q.shape[-2], q.shape[-1]
    S = k.shape[-2]
    s = scale if scale is not None else d**-0.5
    logits = (q @ k.transpose(-2, -1)) * s  # [B, h, L, S]
    half = logits.dtype in (torch.float16, torch.bfloat16)
    attn = safe_softmax(logits.float() if half else logits, allowed_mask(key_padding_mask, causal, L, S, q.device))
    return attn.to(v.dtype) @ v
