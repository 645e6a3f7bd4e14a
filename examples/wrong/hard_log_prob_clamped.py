"""A wrong location policy: log_prob evaluated at the *clamped* location.

Identical whenever the sample stays inside [−1, 1]; biased otherwise. Caught by
``forward`` (cases with samples outside) and by the REINFORCE z-test on the
clamped toy problem (``property:reinforce_toy2_x``, z ≈ 340)."""

import math

import torch

import attnbench


@attnbench.register("hard_attention.sample_location", kind="user", name="log_prob_clamped")
def sample_location_clamped(mu, sigma, noise):
    sigma = torch.as_tensor(sigma, dtype=mu.dtype, device=mu.device)
    loc_raw = (mu + sigma * noise).detach()
    loc = loc_raw.clamp(-1.0, 1.0)
    log_prob = (-((loc - mu) ** 2) / (2 * sigma**2) - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)  # bug
    return loc, loc_raw, log_prob
