"""Peers: other formulations of the hard-attention cores.

- ``normal_log_prob`` (sample_location): ``torch.distributions.Normal(mu, σ)
  .log_prob(loc_raw).sum(-1)``, the exact peer for log_prob (specs §8).
- ``pad_slice_pool`` (glimpse): what RAM re-implementations do, one batch
  element at a time: ``F.pad`` + slicing + ``F.avg_pool2d`` (no torch built-in
  glimpse exists).

``torch.distributions.Categorical`` and ``F.gumbel_softmax`` draw their own
noise, so they are distributional peers only: they are not registered as impls
(they cannot match a given ``gumbel`` input); tests compare their frequencies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import attnbench


@attnbench.register("hard_attention.sample_location", kind="peer", name="normal_log_prob")
def sample_location_normal(
    mu: torch.Tensor, sigma: float | torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """loc_raw = detach(mu + σ·noise); log_prob from ``torch.distributions.Normal``."""
    sigma_t = torch.as_tensor(sigma, dtype=mu.dtype, device=mu.device)
    loc_raw = (mu + sigma_t * noise).detach()
    log_prob = torch.distributions.Normal(mu, sigma_t).log_prob(loc_raw).sum(-1)
    return loc_raw.clamp(-1.0, 1.0), loc_raw, log_prob


@attnbench.register("hard_attention.glimpse", kind="peer", name="pad_slice_pool")
def glimpse_pad_slice_pool(x: torch.Tensor, loc: torch.Tensor, size: int, scales: int) -> torch.Tensor:
    """Per batch element and scale: pad by half a patch, slice ``size·2^s`` pixels, average-pool."""
    B, C, H, W = x.shape
    out = []
    for b in range(B):
        lx, ly = (float(v) for v in loc[b].detach().to(torch.float64))
        cx = min(max(math.floor((lx + 1) / 2 * W), 0), W - 1)
        cy = min(max(math.floor((ly + 1) / 2 * H), 0), H - 1)
        per_scale = []
        for s in range(scales):
            f = 2**s
            side = size * f
            pad = side
            img = F.pad(x[b : b + 1], (pad, pad, pad, pad))
            r0, c0 = cy - side // 2 + pad, cx - side // 2 + pad
            patch = img[:, :, r0 : r0 + side, c0 : c0 + side]
            per_scale.append(F.avg_pool2d(patch, f, divisor_override=f * f))
        out.append(torch.cat(per_scale, dim=1))
    return torch.cat(out, dim=0)
