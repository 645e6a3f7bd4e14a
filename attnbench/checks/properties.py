"""Helpers for writing mechanism properties (invariants from specs/<mech>.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from attnbench.registry import PropertyOutcome


def first_output(result: Any) -> torch.Tensor:
    """The first tensor of an impl's result (a tensor or a tuple of them)."""
    if isinstance(result, torch.Tensor):
        return result
    return next(t for t in result if isinstance(t, torch.Tensor))


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str = "") -> PropertyOutcome:
    """Passes when ``max|actual − expected| ≤ atol`` and both are finite and equally shaped."""
    if actual.shape != expected.shape:
        return PropertyOutcome(
            False, float("inf"), atol, f"{what} shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        )
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    if not torch.isfinite(a).all():
        return PropertyOutcome(False, float("inf"), atol, f"{what} non-finite values")
    err = float((a - e).abs().max()) if a.numel() else 0.0
    detail = what if err <= atol else f"{what} max|err| {err:.3g} > {atol:.3g}"
    return PropertyOutcome(err <= atol, err, atol, detail)


def property_atol(dtype: torch.dtype, scale: float = 1.0) -> float:
    """A tolerance for invariants that hold up to rounding in ``dtype``."""
    eps = torch.finfo(dtype).eps
    return max(64 * eps, 1e-12) * max(scale, 1.0)


def all_of(outcomes: list[PropertyOutcome]) -> PropertyOutcome:
    """Combines several outcomes: fails with the first failure, else the worst error."""
    for o in outcomes:
        if not o.passed:
            return o
    worst = max(outcomes, key=lambda o: o.max_abs_err if o.max_abs_err == o.max_abs_err else -1.0)
    return worst


PropertyFn = Callable[[Callable[..., Any], Any, torch.dtype, str], PropertyOutcome]
