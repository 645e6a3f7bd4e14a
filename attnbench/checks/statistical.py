"""Checks whose verdict comes from a hypothesis test (stochastic mechanisms).

A statistical check draws its randomness from a fixed seed derived from the
case id (``case.generator(role)``), computes a test statistic, and passes iff
the p-value is at least the stated significance ``alpha``. The outcome carries
``statistic`` and ``p_value`` into ``checks.csv``; ``detail`` states the test,
``alpha``, the sample size and the estimate against the expected value, so a
failing row can be judged (and rerun: same case id, same draws) without code.

A correct implementation fails such a check with probability ``alpha`` (the
false-alarm rate); :func:`calibrate` measures that rate over many seeds with
its binomial confidence interval, and the power against wrong implementations.

Helpers:

- :func:`z_test`: mean of i.i.d. samples against an expected value, standard
  error from the sample (two-sided; ``alpha = 0.001`` ⇔ ``|z| < 3.29``).
- :func:`chi2_gof`: Pearson χ² of category counts against probabilities,
  ``df = k − 1``.
- :func:`mean_test` / :func:`covariance_test`: multivariate samples against a
  known mean and covariance (χ² with ``p`` and ``p(p+1)/2`` degrees of freedom).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

from attnbench.cases import Case
from attnbench.registry import PropertyOutcome

ALPHA = 0.001
"""Default significance of statistical checks (two-sided z: |z| < 3.29)."""

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]


def _np(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to(torch.float64).cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def generator(case: Case, role: str) -> torch.Generator:
    """The fixed CPU generator of a statistical check: seeded from the case id and ``role``."""
    return case.generator(f"stat:{role}")


def z_critical(alpha: float = ALPHA) -> float:
    """Two-sided critical value: ``z_critical(0.001) ≈ 3.29``."""
    return float(stats.norm.isf(alpha / 2))


def _nonfinite(test: str, n: int, alpha: float) -> PropertyOutcome:
    return PropertyOutcome(
        False, float("inf"), float("nan"), f"{test}: non-finite samples (n={n}, α={alpha:g})", float("nan"), 0.0
    )


def _ratio(diff: float, se: float) -> float:
    """``diff / se``; a degenerate ``se = 0`` gives 0 for no difference, ±inf otherwise."""
    if se > 0.0:
        return diff / se
    return 0.0 if diff == 0.0 else math.copysign(math.inf, diff)


def z_test(samples: ArrayLike, expected: float, alpha: float = ALPHA, what: str = "mean") -> PropertyOutcome:
    """Two-sided z-test of the mean of i.i.d. ``samples`` against ``expected``.

    ``z = (mean − expected) / (sd / √n)`` with the sample standard deviation;
    passes iff ``p ≥ alpha``. ``max_abs_err`` is ``|mean − expected|`` and
    ``atol`` the largest deviation that would pass (critical value × SE).
    """
    x = _np(samples).ravel()
    n = x.size
    test = f"z-test (two-sided, α={alpha:g}, pass iff |z| < {z_critical(alpha):.2f}) of {what}"
    if n < 2 or not np.isfinite(x).all():
        return _nonfinite(test, n, alpha)
    mean = float(x.mean())
    se = float(x.std(ddof=1)) / math.sqrt(n)
    z = _ratio(mean - expected, se)
    p = float(2 * stats.norm.sf(abs(z)))
    detail = f"{test}: n={n}, estimate {mean:.6g} vs expected {expected:.6g} (SE {se:.3g}), z={z:.3f}, p={p:.3g}"
    return PropertyOutcome(p >= alpha, abs(mean - expected), z_critical(alpha) * se, detail, z, p)


def chi2_gof(counts: ArrayLike, probs: ArrayLike, alpha: float = ALPHA, what: str = "frequencies") -> PropertyOutcome:
    """Pearson χ² goodness of fit of category ``counts`` to ``probs`` (df = k − 1).

    ``max_abs_err`` is the largest ``|observed − expected|`` frequency (a
    proportion) and ``atol`` the statistic's critical value.
    """
    obs = _np(counts).ravel()
    p = _np(probs).ravel()
    p = p / p.sum()
    n = float(obs.sum())
    df = obs.size - 1
    crit = float(stats.chi2.isf(alpha, df)) if df > 0 else float("nan")
    test = f"Pearson χ² (df={df}, α={alpha:g}, pass iff χ² < {crit:.2f}) of {what}"
    if not np.isfinite(obs).all():
        return _nonfinite(test, int(n), alpha)
    expected = n * p
    stat = float(((obs - expected) ** 2 / expected).sum())
    pval = float(stats.chi2.sf(stat, df)) if df > 0 else 1.0
    worst = float(np.abs(obs - expected).max() / n) if n else 0.0
    freq = ", ".join(f"{o / n:.4f}/{q:.4f}" for o, q in zip(obs, p, strict=True)) if obs.size <= 8 else "…"
    detail = f"{test}: n={int(n)}, observed/expected frequency {freq}; χ²={stat:.3f}, p={pval:.3g}"
    return PropertyOutcome(pval >= alpha, worst, crit, detail, stat, pval)


def mean_test(
    samples: ArrayLike, mean: ArrayLike, cov: ArrayLike, alpha: float = ALPHA, what: str = "mean"
) -> PropertyOutcome:
    """Multivariate mean test with known covariance: ``n (x̄ − μ)ᵀ Σ⁻¹ (x̄ − μ) ~ χ²_p``.

    Args:
        samples: ``[n, p]`` i.i.d. draws.
        mean: ``[p]`` expected mean μ.
        cov: ``[p, p]`` known covariance Σ.
    """
    x = _np(samples)
    mu = _np(mean)
    sigma = _np(cov)
    n, dim = x.shape
    crit = float(stats.chi2.isf(alpha, dim))
    test = f"χ² mean test, known covariance (df={dim}, α={alpha:g}, pass iff T < {crit:.2f}) of {what}"
    if not np.isfinite(x).all():
        return _nonfinite(test, n, alpha)
    diff = x.mean(0) - mu
    stat = float(n * diff @ np.linalg.solve(sigma, diff))
    pval = float(stats.chi2.sf(stat, dim))
    est = ", ".join(f"{v:.5g}" for v in x.mean(0))
    exp = ", ".join(f"{v:.5g}" for v in mu)
    detail = f"{test}: n={n}, estimate ({est}) vs expected ({exp}); T={stat:.3f}, p={pval:.3g}"
    return PropertyOutcome(pval >= alpha, float(np.abs(diff).max()), crit, detail, stat, pval)


def covariance_test(
    samples: ArrayLike, mean: ArrayLike, cov: ArrayLike, alpha: float = ALPHA, what: str = "covariance"
) -> PropertyOutcome:
    """Likelihood-ratio test of ``Cov = Σ₀`` for Gaussian draws with known mean.

    With ``S = (1/n) Σ (x − μ)(x − μ)ᵀ`` and ``A = Σ₀⁻¹ S``:
    ``n (tr A − ln det A − p) ~ χ²_{p(p+1)/2}`` (asymptotically; n is large here).
    """
    x = _np(samples)
    mu = _np(mean)
    sigma0 = _np(cov)
    n, dim = x.shape
    df = dim * (dim + 1) // 2
    crit = float(stats.chi2.isf(alpha, df))
    test = f"χ² likelihood-ratio covariance test (df={df}, α={alpha:g}, pass iff LR < {crit:.2f}) of {what}"
    if not np.isfinite(x).all():
        return _nonfinite(test, n, alpha)
    centred = x - mu
    s = centred.T @ centred / n
    a = np.linalg.solve(sigma0, s)
    sign, logdet = np.linalg.slogdet(a)
    if sign <= 0:
        return PropertyOutcome(False, float("inf"), crit, f"{test}: singular sample covariance", math.inf, 0.0)
    stat = float(n * (np.trace(a) - logdet - dim))
    pval = float(stats.chi2.sf(stat, df))
    est = np.array2string(s, precision=5, separator=", ").replace("\n", "")
    exp = np.array2string(sigma0, precision=5, separator=", ").replace("\n", "")
    detail = f"{test}: n={n}, estimate {est} vs expected {exp}; LR={stat:.3f}, p={pval:.3g}"
    return PropertyOutcome(pval >= alpha, float(np.abs(s - sigma0).max()), crit, detail, stat, pval)


# -- calibration: false-alarm rate and power ----------------------------------------------


def binomial_ci(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson (exact) confidence interval of a binomial proportion ``k/n``."""
    if n == 0:
        return 0.0, 1.0
    a = 1 - confidence
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


@dataclass
class Calibration:
    """Rejection counts of one check over many seeds, at several significance levels.

    Attributes:
        check: the check's name.
        subject: what was checked (an impl, or a mutation).
        runs: number of seeds.
        rejections: ``alpha -> number of seeds with p < alpha``.
        p_values: every p-value, in seed order.
    """

    check: str
    subject: str
    runs: int
    rejections: dict[float, int] = field(default_factory=dict)
    p_values: list[float] = field(default_factory=list)

    def rate(self, alpha: float) -> float:
        return self.rejections[alpha] / self.runs if self.runs else float("nan")

    def ci(self, alpha: float, confidence: float = 0.95) -> tuple[float, float]:
        return binomial_ci(self.rejections[alpha], self.runs, confidence)

    def consistent(self, alpha: float, confidence: float = 0.99) -> bool:
        """Whether the observed rejection rate is compatible with ``alpha`` (α inside the CI)."""
        lo, hi = self.ci(alpha, confidence)
        return lo <= alpha <= hi

    def as_dict(self) -> dict[str, object]:
        return {
            "check": self.check,
            "subject": self.subject,
            "runs": self.runs,
            "rejections": {str(a): k for a, k in self.rejections.items()},
            "rates": {str(a): self.rate(a) for a in self.rejections},
            "ci95": {str(a): list(self.ci(a)) for a in self.rejections},
        }


def calibrate(
    check: Callable[[int], PropertyOutcome],
    seeds: Iterable[int],
    alphas: Sequence[float] = (0.05, ALPHA),
    name: str = "",
    subject: str = "",
) -> Calibration:
    """Runs ``check(seed)`` for every seed and counts ``p < alpha`` for each alpha.

    On a correct implementation the rate estimates the false-alarm rate (it
    should be near ``alpha``); on a wrong one it estimates the power.

    Args:
        check: ``seed -> PropertyOutcome`` with ``p_value`` set.
        seeds: independent seeds (e.g. ``range(1000)``).
        alphas: significance levels to count rejections at.
        name: the check's name (for the report).
        subject: the impl or mutation checked.
    """
    result = Calibration(name, subject, 0, {a: 0 for a in alphas})
    for s in seeds:
        outcome = check(s)
        p = outcome.p_value if outcome.p_value is not None else (1.0 if outcome.passed else 0.0)
        result.p_values.append(float(p))
        result.runs += 1
        for a in alphas:
            result.rejections[a] += int(p < a)
    return result


def calibrate_together(
    checks: Mapping[str, Callable[[int], PropertyOutcome]],
    seeds: Iterable[int],
    alphas: Sequence[float] = (0.05, ALPHA),
    subject: str = "",
) -> dict[str, Calibration]:
    """:func:`calibrate` for several checks, seed-major (checks sharing draws can cache them)."""
    results = {name: Calibration(name, subject, 0, {a: 0 for a in alphas}) for name in checks}
    for s in seeds:
        for name, check in checks.items():
            outcome = check(s)
            p = outcome.p_value if outcome.p_value is not None else (1.0 if outcome.passed else 0.0)
            result = results[name]
            result.p_values.append(float(p))
            result.runs += 1
            for a in alphas:
                result.rejections[a] += int(p < a)
    return results
