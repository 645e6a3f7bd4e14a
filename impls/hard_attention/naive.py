"""Naive hard attention: explicit loops over output elements, float64-friendly.

Obviously correct and slow; the float64 ground truth for every other impl.
Tensors are split into Python lists of scalars with ``unbind`` (one autograd
node per tensor), so the backward of the loops stays linear in the input size.
"""

from __future__ import annotations

import math
from typing import Any

import torch

import attnbench


def scalars(t: torch.Tensor) -> Any:
    """Nested Python lists of 0-d tensors (``unbind`` recursively; differentiable)."""
    if t.dim() == 0:
        return t
    return [scalars(s) for s in t.unbind(0)]


def center(l: float, n: int) -> int:
    """Centre pixel of a normalised coordinate: ``clamp(⌊(l + 1)/2 · n⌋, 0, n − 1)``."""
    return min(max(math.floor((l + 1) / 2 * n), 0), n - 1)


@attnbench.register("hard_attention.glimpse", kind="naive", name="naive")
def glimpse_naive(x: torch.Tensor, loc: torch.Tensor, size: int, scales: int) -> torch.Tensor:
    """x: [B, C, H, W]; loc: [B, 2] as (x, y) -> [B, scales·C, size, size]."""
    B, C, H, W = x.shape
    pix = scalars(x)
    zero = x.new_zeros(())
    rows = []
    for b in range(B):
        cx = center(float(loc[b, 0]), W)
        cy = center(float(loc[b, 1]), H)
        channels = []
        for s in range(scales):
            f = 2**s
            side = size * f
            row0 = cy - side // 2  # even sides extend one pixel further up/left
            col0 = cx - side // 2
            for c in range(C):
                pixels = []
                for i in range(size):
                    for j in range(size):
                        acc = zero
                        for di in range(f):
                            for dj in range(f):
                                r = row0 + i * f + di
                                q = col0 + j * f + dj
                                if 0 <= r < H and 0 <= q < W:  # zero padding outside
                                    acc = acc + pix[b][c][r][q]
                        pixels.append(acc / (f * f))  # f², padding included
                channels.append(torch.stack(pixels).reshape(size, size))
        rows.append(torch.stack(channels))
    return torch.stack(rows)


@attnbench.register("hard_attention.sample_location", kind="naive", name="naive")
def sample_location_naive(
    mu: torch.Tensor, sigma: float | torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mu, noise: [B, 2]; sigma: float or 0-d tensor -> (loc [B, 2], loc_raw [B, 2], log_prob [B])."""
    B = mu.shape[0]
    sigma = float(sigma)
    m, e = scalars(mu), scalars(noise)
    locs, raws, log_probs = [], [], []
    for b in range(B):
        lp = mu.new_zeros(())
        raw_b, loc_b = [], []
        for d in range(2):
            raw = (m[b][d] + sigma * e[b][d]).detach()  # the sample is a constant for autograd
            lp = lp - (raw - m[b][d]) ** 2 / (2 * sigma * sigma) - math.log(sigma) - 0.5 * math.log(2 * math.pi)
            raw_b.append(raw)
            loc_b.append(torch.clamp(raw, -1.0, 1.0))
        raws.append(torch.stack(raw_b))
        locs.append(torch.stack(loc_b))
        log_probs.append(lp)
    return torch.stack(locs), torch.stack(raws), torch.stack(log_probs)


@attnbench.register("hard_attention.reinforce_loss", kind="naive", name="naive")
def reinforce_loss_naive(
    log_prob: torch.Tensor, reward: torch.Tensor, baseline: torch.Tensor | None = None
) -> torch.Tensor:
    """log_prob: [B, T]; reward: [B]; baseline: [B, T] or None -> scalar."""
    B, T = log_prob.shape
    lp, r = scalars(log_prob), scalars(reward)
    bl = scalars(baseline) if baseline is not None else None
    total = log_prob.new_zeros((), dtype=torch.float64)  # float64 accumulation, rounded once
    for b in range(B):
        for t in range(T):
            advantage = r[b].double() - (bl[b][t].double() if bl is not None else 0.0)
            total = total + lp[b][t].double() * advantage.detach()
    return (-total / B).to(log_prob.dtype)


@attnbench.register("hard_attention.hard_select", kind="naive", name="naive")
def hard_select_naive(
    logits: torch.Tensor,
    values: torch.Tensor,
    gumbel: torch.Tensor,
    tau: float = 1.0,
    straight_through: bool = False,
) -> torch.Tensor:
    """logits, gumbel: [B, N]; values: [B, N, D] -> [B, D]."""
    B, N, _ = values.shape
    lg, gu, vals = logits.unbind(0), gumbel.unbind(0), values.unbind(0)
    outs = []
    for b in range(B):
        score = [lg[b][n] + gu[b][n] for n in range(N)]  # rounded in the input dtype, as every impl
        best, best_score = 0, float(score[0].detach())
        for n in range(1, N):
            if float(score[n].detach()) > best_score:  # strict: the lowest index wins ties
                best, best_score = n, float(score[n].detach())
        rows = vals[b].unbind(0)
        out = rows[best]
        if straight_through:
            scaled = [(s / tau).double() for s in score]
            top = max(float(s.detach()) for s in scaled)
            weights = [torch.exp(s - top) for s in scaled]
            norm = weights[0]
            for w in weights[1:]:
                norm = norm + w
            soft = weights[0] / norm * rows[0].detach().double()
            for n in range(1, N):
                soft = soft + weights[n] / norm * rows[n].detach().double()
            out = out + (soft - soft.detach()).to(out.dtype)
        outs.append(out)
    return torch.stack(outs)
