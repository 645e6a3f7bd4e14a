"""Peers: other people's formulations of the same core, written against their layout.

- ``inf_masked``: the widely used pure-PyTorch form (CCNet's pure-python branch,
  ``mmcv.ops.CrissCrossAttention`` ≥ 1.3.13): energies ``[B, H, W, H+W]`` with the
  duplicated self position masked by −inf (specs/ccnet.md §2.2).
- ``sdpa_masked``: ``F.scaled_dot_product_attention`` over all HW keys with the
  criss-cross boolean mask and ``scale=1``: exact, O((HW)²) memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import attnbench
from attnbench.cases import Case

SDPA_MAX_PIXELS = 4096


@attnbench.register("ccnet", kind="peer", name="inf_masked")
def cca_inf_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, H, W, H+W] energies, −inf on the column's self entry, one softmax."""
    B, _, H, W = q.shape
    self_mask = torch.diag(torch.full((H,), float("-inf"), device=q.device, dtype=q.dtype))
    energy_col = torch.einsum("bcyx,bczx->byxz", q, k) + self_mask[:, None, :]  # [B, H, W, H]
    energy_row = torch.einsum("bcyx,bcyz->byxz", q, k)  # [B, H, W, W]
    attn = torch.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)
    attn_col, attn_row = attn[..., :H], attn[..., H:]
    out_col = torch.einsum("byxz,bczx->bcyx", attn_col, v)
    out_row = torch.einsum("byxz,bcyz->bcyx", attn_row, v)
    return out_col + out_row


def criss_cross_mask(H: int, W: int, device: torch.device) -> torch.Tensor:
    """[HW, HW] bool, True = attend: same row or same column."""
    y = torch.arange(H, device=device).repeat_interleave(W)
    x = torch.arange(W, device=device).repeat(H)
    return (y[:, None] == y[None, :]) | (x[:, None] == x[None, :])


def _sdpa_supports(case: Case, dtype: str, device: str) -> str | None:
    pixels = case["H"] * case["W"]
    if pixels > SDPA_MAX_PIXELS:
        return f"sdpa_masked builds an (HW)² mask; H·W = {pixels} > {SDPA_MAX_PIXELS}"
    return None


@attnbench.register("ccnet", kind="peer", name="sdpa_masked", supports=_sdpa_supports)
def cca_sdpa_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with the criss-cross mask, scale 1."""
    B, _, H, W = q.shape
    mask = criss_cross_mask(H, W, q.device)
    qf, kf, vf = (t.flatten(2).transpose(1, 2)[:, None] for t in (q, k, v))  # [B, 1, HW, ·]
    out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask, scale=1.0)
    return out[:, 0].transpose(1, 2).reshape(B, -1, H, W)
