"""Equivalence of an impl's outputs and gradients with the float64 reference.

Both comparison rules of specs/README.md §3 are computed for every tensor; the
suite's tolerance decides which one is enforced, and ``detail`` names it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnbench.tolerances import EPS, Tolerance


@dataclass(frozen=True)
class Comparison:
    """One tensor of an impl judged against the reference.

    ``max_rel_err`` is elementwise ``|impl − ref| / |ref|`` over elements with
    ``|ref| > atol`` (relative error is meaningless near zero).
    """

    passed: bool
    max_abs_err: float
    max_rel_err: float
    atol: float
    rtol: float
    detail: str


def _index(flat_index: int, shape: torch.Size) -> tuple[int, ...]:
    idx = []
    for size in reversed(shape):
        idx.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(idx))


def nonfinite_detail(t: torch.Tensor, what: str) -> str | None:
    """Where the first NaN/Inf of ``t`` is, or ``None`` when all finite."""
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return None
    first = int(bad.flatten().nonzero()[0])
    value = float(t.flatten()[first])
    count = int(bad.sum())
    return f"non-finite {what}: {count} of {t.numel()} values, first {value} at index {_index(first, t.shape)}"


def compare(
    actual: torch.Tensor | None,
    ref: torch.Tensor,
    pt: torch.Tensor | None,
    dtype: str,
    tol: Tolerance,
    rule: str,
    k: float,
    what: str,
) -> Comparison:
    """Judges ``actual`` (any dtype/device) against float64 ``ref``.

    Args:
        actual: the impl's tensor; ``None`` when the impl returned no gradient.
        ref: the float64 reference.
        pt: the vectorized PyTorch impl's tensor in the same dtype (rule K), or None.
        dtype: the case dtype name.
        tol: rule F bounds.
        rule: the enforced rule, ``"F"`` or ``"K"``.
        k: the rule K factor.
        what: name used in messages (``"out"``, ``"grad q"``).
    """
    if actual is None:
        return Comparison(False, float("inf"), float("inf"), tol.atol, tol.rtol, f"{what}: no gradient returned")
    if tuple(actual.shape) != tuple(ref.shape):
        return Comparison(
            False,
            float("inf"),
            float("inf"),
            tol.atol,
            tol.rtol,
            f"{what}: shape {tuple(actual.shape)}, expected {tuple(ref.shape)}",
        )
    a = actual.detach().to(device="cpu", dtype=torch.float64)
    bad = nonfinite_detail(a, what)
    if bad:
        return Comparison(False, float("inf"), float("inf"), tol.atol, tol.rtol, bad)
    diff = (a - ref).abs()
    if diff.numel() == 0:
        return Comparison(True, 0.0, 0.0, tol.atol, tol.rtol, f"{what}: empty")
    max_abs = float(diff.max())
    big = ref.abs() > tol.atol
    max_rel = float((diff[big] / ref.abs()[big]).max()) if bool(big.any()) else 0.0

    excess = diff - (tol.atol + tol.rtol * ref.abs())
    pass_f = bool((excess <= 0).all())
    floor = 2 * EPS[dtype] * float(ref.abs().max())
    if pt is not None:
        pt_err = float((pt.detach().to(device="cpu", dtype=torch.float64) - ref).abs().max())
        bound_k = k * pt_err + floor
    else:
        pt_err = float("nan")
        bound_k = floor
    pass_k = max_abs <= bound_k
    passed = pass_f if rule == "F" else pass_k
    worst = _index(int(diff.flatten().argmax()), diff.shape)
    detail = (
        f"{what}: rule {rule} {'pass' if passed else 'FAIL'}; "
        f"F(rtol={tol.rtol:g}, atol={tol.atol:g}) {'pass' if pass_f else 'fail'}; "
        f"K(k={k:g}, pt_err={pt_err:.3g}, bound={bound_k:.3g}) {'pass' if pass_k else 'fail'}; "
        f"worst at {worst}"
    )
    return Comparison(passed, max_abs, max_rel, tol.atol, tol.rtol, detail)


def worst(comparisons: list[Comparison]) -> Comparison:
    """The failing comparison if any, else the one with the largest error."""
    failing = [c for c in comparisons if not c.passed]
    if failing:
        return failing[0]
    return max(comparisons, key=lambda c: c.max_abs_err)
