"""A wrong location policy: the score lacks the 1/σ² (the log-density of a
unit-variance Gaussian around mu). At σ = 0.5 the REINFORCE mean is −0.25
instead of −1 on toy 1: caught by ``property:reinforce_toy1_x`` (and by
``forward``/``backward:mu``, since log_prob itself differs)."""

import math

import torch

import attnbench


@attnbench.register("hard_attention.sample_location", kind="user", name="score_no_sigma")
def sample_location_no_sigma(mu, sigma, noise):
    sigma = torch.as_tensor(sigma, dtype=mu.dtype, device=mu.device)
    loc_raw = (mu + sigma * noise).detach()
    log_prob = (-((loc_raw - mu) ** 2) / 2 - 0.5 * math.log(2 * math.pi)).sum(-1)  # bug: N(mu, 1)
    return loc_raw.clamp(-1.0, 1.0), loc_raw, log_prob
