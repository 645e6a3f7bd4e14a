"""Vectorized hard attention: idiomatic PyTorch, autograd provides every backward.

- ``glimpse``: ``F.pad`` once by the largest half-patch, then per scale a slice
  of ``size·2^s`` pixels per batch element (gathered with index tensors) and
  ``F.avg_pool2d`` (which divides by f² including the zero padding).
- ``sample_location`` / ``reinforce_loss``: the formulas of specs §2.2.
- ``hard_select``: ``argmax`` (lowest index on ties) and ``gather``; the
  straight-through estimator as ``hard + (soft − detach(soft))`` with the
  surrogate ``soft = Σ_n p_n · detach(values_n)`` so values keep the one-hot
  gradient and logits get the surrogate's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import attnbench


def center_index(loc: torch.Tensor, n: int) -> torch.Tensor:
    """``clamp(⌊(l + 1)/2 · n⌋, 0, n − 1)`` computed in float64 (loc: [B]) -> int64 [B]."""
    idx = torch.floor((loc.detach().to(torch.float64) + 1) / 2 * n).to(torch.int64)
    return idx.clamp(0, n - 1)


@attnbench.register("hard_attention.glimpse", kind="vectorized", name="vectorized")
def glimpse(x: torch.Tensor, loc: torch.Tensor, size: int, scales: int) -> torch.Tensor:
    """x: [B, C, H, W]; loc: [B, 2] as (x, y) in [−1, 1] -> [B, scales·C, size, size]."""
    B, C, H, W = x.shape
    cx = center_index(loc[:, 0], W).to(x.device)
    cy = center_index(loc[:, 1], H).to(x.device)
    largest = size * 2 ** (scales - 1)
    pad = largest  # every patch lies inside [c − side/2, c + side/2) ⊂ [−pad, n + pad)
    padded = F.pad(x, (pad, pad, pad, pad))
    batch = torch.arange(B, device=x.device)[:, None, None]
    patches = []
    for s in range(scales):
        f = 2**s
        side = size * f
        offsets = torch.arange(side, device=x.device)
        rows = (cy - side // 2 + pad)[:, None] + offsets  # [B, side]
        cols = (cx - side // 2 + pad)[:, None] + offsets
        patch = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, side, side, C]
        patch = patch.permute(0, 3, 1, 2)
        patches.append(F.avg_pool2d(patch, f) if f > 1 else patch)
    return torch.cat(patches, dim=1)


@attnbench.register("hard_attention.sample_location", kind="vectorized", name="vectorized")
def sample_location(
    mu: torch.Tensor, sigma: float | torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mu, noise: [B, 2]; sigma: float or 0-d tensor -> (loc [B, 2], loc_raw [B, 2], log_prob [B])."""
    sigma_t = torch.as_tensor(sigma, dtype=mu.dtype, device=mu.device)
    loc_raw = (mu + sigma_t * noise).detach()
    loc = loc_raw.clamp(-1.0, 1.0)
    log_prob = (-((loc_raw - mu) ** 2) / (2 * sigma_t**2) - torch.log(sigma_t) - 0.5 * math.log(2 * math.pi)).sum(-1)
    return loc, loc_raw, log_prob


@attnbench.register("hard_attention.reinforce_loss", kind="vectorized", name="vectorized")
def reinforce_loss(log_prob: torch.Tensor, reward: torch.Tensor, baseline: torch.Tensor | None = None) -> torch.Tensor:
    """log_prob: [B, T]; reward: [B]; baseline: [B, T] or None -> scalar loss."""
    advantage = reward[:, None].expand_as(log_prob)
    if baseline is not None:
        advantage = advantage - baseline
    return -(log_prob * advantage.detach()).sum() / log_prob.shape[0]


@attnbench.register("hard_attention.hard_select", kind="vectorized", name="vectorized")
def hard_select(
    logits: torch.Tensor,
    values: torch.Tensor,
    gumbel: torch.Tensor,
    tau: float = 1.0,
    straight_through: bool = False,
) -> torch.Tensor:
    """logits, gumbel: [B, N]; values: [B, N, D] -> [B, D]."""
    perturbed = logits + gumbel
    index = perturbed.argmax(dim=-1)  # lowest index on ties
    hard = values.gather(1, index[:, None, None].expand(-1, 1, values.shape[2])).squeeze(1)
    if not straight_through:
        return hard
    p = torch.softmax(perturbed / tau, dim=-1)
    soft = (p[:, :, None] * values.detach()).sum(1)
    return hard + (soft - soft.detach())
