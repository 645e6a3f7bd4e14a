"""Statistical checks of the hard-attention cores (specs/hard_attention.md §5).

Each check is a function of the implementation(s) under test and a seed, so the
same code runs as a mechanism :class:`~attnbench.registry.Property` (seed from
the case id) and in the calibration study (many seeds; ``calibration.py``).

- REINFORCE unbiasedness, z-test per column on the toy problems: one batched
  call gives ``M`` per-sample estimates (``B = M`` copies of μ, ``T = 1``,
  rows of ``mu.grad`` times ``−M``); column x against the analytic gradient of
  the expected reward, column y against 0 (the reward ignores y).
- Policy moments: sampled ``loc_raw`` against mean μ and covariance σ²I.
- Gumbel-max frequencies: Pearson χ² against ``softmax(logits)``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
from scipy import integrate, stats

from attnbench.checks.statistical import ALPHA, chi2_gof, covariance_test, mean_test, z_test
from attnbench.registry import REGISTRY, PropertyOutcome

M_REINFORCE = 200_000
M_LOCATION = 200_000
M_GUMBEL = 20_000
M_NAIVE = 1_000
"""Naive (Python-loop) impls use this many draws: the quick profile stays fast and
every mutation of the spec is still far outside the acceptance region (docs/hard_attention.md)."""

GUMBEL_LOGITS = (0.0, 0.5, 1.0, 2.0)
LOCATION_MU = (0.3, -0.2)
LOCATION_SIGMA = 0.5


@dataclass(frozen=True)
class Toy:
    """A REINFORCE toy problem: reward ``−(l_x − target)²`` with ``l ~ N(μ, σ²)``.

    Attributes:
        name: ``toy1``, ``toy1_baseline`` or ``toy2``.
        mu: the x coordinate of μ (the y coordinate is ``mu_y``).
        sigma: policy standard deviation.
        target: reward target t.
        clamp: the reward reads the clamped location (toy 2).
        baseline: a constant baseline, or ``None``.
        mu_y: the y coordinate of μ (the reward ignores it).
    """

    name: str
    mu: float
    sigma: float
    target: float
    clamp: bool = False
    baseline: float | None = None
    mu_y: float = -0.1

    def expected_gradient(self) -> float:
        """∂E[reward]/∂μ_x: closed form without clamp, quadrature with it (scipy)."""
        if not self.clamp:
            return -2.0 * (self.mu - self.target)
        lo, hi = (-1 - self.mu) / self.sigma, (1 - self.mu) / self.sigma
        value, _ = integrate.quad(lambda e: -2 * (self.mu + self.sigma * e - self.target) * stats.norm.pdf(e), lo, hi)
        return float(value)


TOYS = {
    "toy1": Toy("toy1", 0.3, 0.5, -0.2),
    # constant baseline −(d² + σ²) = −E[reward]: same mean, lower variance
    "toy1_baseline": Toy("toy1_baseline", 0.3, 0.5, -0.2, baseline=-(0.5**2 + 0.5**2)),
    "toy2": Toy("toy2", 0.5, 1.0, -0.5, clamp=True),
}

Fn = Callable[..., Any]


def kind_of(fn: Fn, mechanism: str) -> str:
    """The registered kind of ``fn`` (``user`` when it is not registered)."""
    for impl in REGISTRY.impls.get(mechanism, {}).values():
        if impl.fn is fn:
            return impl.kind
    return "user"


def draws(fn: Fn, mechanism: str, full: int) -> int:
    return M_NAIVE if kind_of(fn, mechanism) == "naive" else full


def _generator(seed: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen


_estimates: OrderedDict[tuple[int, int, str, int, int, str], torch.Tensor] = OrderedDict()


def reinforce_estimates(sample_fn: Fn, loss_fn: Fn, toy: Toy, m: int, seed: int, device: str = "cpu") -> torch.Tensor:
    """``[m, 2]`` per-sample REINFORCE estimates ``−m · ∂loss/∂μ`` (cached per impls, toy, m, seed)."""
    key = (id(sample_fn), id(loss_fn), toy.name, m, seed, device)
    if key in _estimates:
        _estimates.move_to_end(key)
        return _estimates[key]
    noise = torch.randn(m, 2, generator=_generator(seed), dtype=torch.float64).to(device)
    mu = torch.tensor([toy.mu, toy.mu_y], dtype=torch.float64, device=device).expand(m, 2).clone().requires_grad_()
    loc, loc_raw, log_prob = sample_fn(mu, toy.sigma, noise)
    used = (loc if toy.clamp else loc_raw)[:, 0].detach()
    reward = -((used - toy.target) ** 2)
    baseline = None if toy.baseline is None else torch.full((m, 1), toy.baseline, dtype=torch.float64, device=device)
    loss = loss_fn(log_prob.reshape(m, 1), reward, baseline)
    (grad,) = torch.autograd.grad(loss, mu, allow_unused=True)
    est = (-m * grad if grad is not None else torch.zeros_like(mu)).detach().cpu()
    _estimates[key] = est
    while len(_estimates) > 8:
        _estimates.popitem(last=False)
    return est


@cache
def expected_gradient(toy_name: str) -> float:
    return TOYS[toy_name].expected_gradient()


def reinforce_check(
    sample_fn: Fn, loss_fn: Fn, toy_name: str, column: str, m: int, seed: int, alpha: float = ALPHA, device: str = "cpu"
) -> PropertyOutcome:
    """z-test of one column of the REINFORCE estimates on a toy problem."""
    toy = TOYS[toy_name]
    est = reinforce_estimates(sample_fn, loss_fn, toy, m, seed, device)
    col = 0 if column == "x" else 1
    expected = expected_gradient(toy_name) if column == "x" else 0.0
    what = f"the REINFORCE estimate of ∂E[reward]/∂μ_{column} on {toy_name} (μ={toy.mu}, σ={toy.sigma}, t={toy.target})"
    return z_test(est[:, col], expected, alpha, what)


_locations: OrderedDict[tuple[int, int, int, str], torch.Tensor] = OrderedDict()


def location_samples(sample_fn: Fn, m: int, seed: int, device: str = "cpu") -> torch.Tensor:
    """``[m, 2]`` loc_raw drawn by ``sample_fn`` at μ = LOCATION_MU, σ = LOCATION_SIGMA (cached)."""
    key = (id(sample_fn), m, seed, device)
    if key not in _locations:
        _locations[key] = _location_samples(sample_fn, m, seed, device)
        while len(_locations) > 4:
            _locations.popitem(last=False)
    return _locations[key]


def _location_samples(sample_fn: Fn, m: int, seed: int, device: str) -> torch.Tensor:
    noise = torch.randn(m, 2, generator=_generator(seed), dtype=torch.float64).to(device)
    mu = torch.tensor(LOCATION_MU, dtype=torch.float64, device=device).expand(m, 2).clone().requires_grad_()
    _, loc_raw, _ = sample_fn(mu, LOCATION_SIGMA, noise)
    return loc_raw.detach().cpu()


def location_mean_check(sample_fn: Fn, m: int, seed: int, alpha: float = ALPHA, device: str = "cpu") -> PropertyOutcome:
    """Mean of the sampled loc_raw against μ (known covariance σ²I)."""
    x = location_samples(sample_fn, m, seed, device)
    cov = np.eye(2) * LOCATION_SIGMA**2
    return mean_test(x, LOCATION_MU, cov, alpha, f"loc_raw ~ N(μ={LOCATION_MU}, σ²I), σ={LOCATION_SIGMA}")


def location_covariance_check(
    sample_fn: Fn, m: int, seed: int, alpha: float = ALPHA, device: str = "cpu"
) -> PropertyOutcome:
    """Covariance of the sampled loc_raw against σ²I (known mean μ)."""
    x = location_samples(sample_fn, m, seed, device)
    cov = np.eye(2) * LOCATION_SIGMA**2
    return covariance_test(x, LOCATION_MU, cov, alpha, f"loc_raw ~ N(μ={LOCATION_MU}, σ²I), σ={LOCATION_SIGMA}")


def gumbel_noise(m: int, n: int, seed: int) -> torch.Tensor:
    """``−ln(−ln U)``, U ~ Uniform(0, 1), as ``[m, n]`` float64."""
    u = torch.rand(m, n, generator=_generator(seed), dtype=torch.float64).clamp_min(torch.finfo(torch.float64).tiny)
    return -torch.log(-torch.log(u))


def gumbel_counts(select_fn: Fn, m: int, seed: int, device: str = "cpu") -> np.ndarray:
    n = len(GUMBEL_LOGITS)
    logits = torch.tensor(GUMBEL_LOGITS, dtype=torch.float64, device=device).expand(m, n).contiguous()
    values = torch.eye(n, dtype=torch.float64, device=device).expand(m, n, n).contiguous()
    with torch.no_grad():
        out = select_fn(logits, values, gumbel_noise(m, n, seed).to(device), 1.0, False)
    chosen = out.detach().cpu().argmax(-1)
    return np.bincount(chosen.numpy(), minlength=n)


def gumbel_check(select_fn: Fn, m: int, seed: int, alpha: float = ALPHA, device: str = "cpu") -> PropertyOutcome:
    """Pearson χ² of the Gumbel-max selection frequencies against softmax(logits), df = N − 1."""
    counts = gumbel_counts(select_fn, m, seed, device)
    probs = torch.softmax(torch.tensor(GUMBEL_LOGITS, dtype=torch.float64), 0).numpy()
    return chi2_gof(counts, probs, alpha, f"Gumbel-max selections, logits {GUMBEL_LOGITS}")


def z_for_power(shift: float, sd: float, m: int) -> float:
    """The z a mean shift produces with ``m`` draws (for documentation)."""
    return shift / (sd / math.sqrt(m))
