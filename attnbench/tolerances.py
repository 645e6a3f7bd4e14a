"""Comparison tolerances and rules, in one place (specs/README.md §3).

Rule F (fixed): ``|impl − ref| ≤ atol + rtol·|ref|`` elementwise.
Rule K (relative to a same-precision PyTorch run):
``max|impl − ref| ≤ k · max|pt − ref| + floor`` with
``floor = 2 · eps(dtype) · max|ref|``.
"""

from __future__ import annotations

from dataclasses import dataclass

# torch.testing.assert_close defaults
RULE_F: dict[str, tuple[float, float]] = {  # dtype -> (rtol, atol)
    "float64": (1e-7, 1e-7),
    "float32": (1.3e-6, 1e-5),
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
}
EPS: dict[str, float] = {
    "float64": 2.0**-52,
    "float32": 2.0**-23,
    "float16": 2.0**-10,
    "bfloat16": 2.0**-7,
}
DEFAULT_K = 2.0


@dataclass(frozen=True)
class Tolerance:
    """How one dtype is judged.

    Attributes:
        rtol, atol: rule F bounds.
        k: rule K factor (``None``: the mechanism's, default 2).
        rule: ``"F"``, ``"K"`` or ``"auto"`` (F for float64 and for float32 on
            the quick profile, K otherwise).
    """

    rtol: float
    atol: float
    k: float | None = None
    rule: str = "auto"

    def enforced(self, dtype: str, profile: str) -> str:
        if self.rule != "auto":
            return self.rule
        if dtype == "float64" or (dtype == "float32" and profile == "quick"):
            return "F"
        return "K"


def default_tolerance(dtype: str) -> Tolerance:
    rtol, atol = RULE_F[dtype]
    return Tolerance(rtol=rtol, atol=atol)
