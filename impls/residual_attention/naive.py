"""Naive residual attention: explicit loops over every element and its statistics.

Obviously correct and slow; the float64 ground truth for every other impl.
"""

from __future__ import annotations

import math

import torch

import attnbench
from impls.residual_attention.mechanism import NORM_EPS, VAR_EPS, check_kind


def _sigmoid(v: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-v))


@attnbench.register("residual_attention", kind="naive", name="naive")
def ran_naive(trunk: torch.Tensor, mask_logits: torch.Tensor, kind: str = "mixed") -> torch.Tensor:
    """trunk, mask_logits: [B, C, H, W] -> (1 + f(mask_logits)) ⊙ trunk, [B, C, H, W]."""
    check_kind(kind)
    B, C, H, W = trunk.shape
    # every element as its own 0-d tensor (one autograd node instead of one per index)
    m_flat, t_flat = mask_logits.reshape(-1).unbind(0), trunk.reshape(-1).unbind(0)

    class _Grid:
        def __init__(self, flat: tuple[torch.Tensor, ...]) -> None:
            self.flat = flat

        def __getitem__(self, i: tuple[int, int, int, int]) -> torch.Tensor:
            b, c, y, x = i
            return self.flat[((b * C + c) * H + y) * W + x]

    m, t = _Grid(m_flat), _Grid(t_flat)
    f: dict[tuple[int, int, int, int], torch.Tensor] = {}
    for b in range(B):
        if kind == "mixed":
            for c in range(C):
                for y in range(H):
                    for x in range(W):
                        f[b, c, y, x] = _sigmoid(m[b, c, y, x])
        elif kind == "channel":
            # L2 norm over the C channels at each position, clamped at 1e-12
            for y in range(H):
                for x in range(W):
                    sumsq = mask_logits.new_zeros(())
                    for c in range(C):
                        sumsq = sumsq + m[b, c, y, x] * m[b, c, y, x]
                    norm = torch.clamp_min(torch.sqrt(sumsq), NORM_EPS)
                    for c in range(C):
                        f[b, c, y, x] = m[b, c, y, x] / norm
        else:
            # mean and biased variance over the H·W positions of each channel
            for c in range(C):
                total = mask_logits.new_zeros(())
                for y in range(H):
                    for x in range(W):
                        total = total + m[b, c, y, x]
                mean = total / (H * W)
                sq = mask_logits.new_zeros(())
                for y in range(H):
                    for x in range(W):
                        sq = sq + (m[b, c, y, x] - mean) ** 2
                var = sq / (H * W)
                denom = torch.sqrt(var + VAR_EPS)
                for y in range(H):
                    for x in range(W):
                        f[b, c, y, x] = _sigmoid((m[b, c, y, x] - mean) / denom)
    values = [
        (1.0 + f[b, c, y, x]) * t[b, c, y, x] for b in range(B) for c in range(C) for y in range(H) for x in range(W)
    ]
    assert math.prod((B, C, H, W)) == len(values)
    return torch.stack(values).reshape(B, C, H, W)
