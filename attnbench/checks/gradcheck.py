"""``torch.autograd.gradcheck`` on tiny float64 cases (specs/README.md §4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.autograd.gradcheck import GradcheckError

from attnbench.registry import Inputs


def run_gradcheck(
    fn: Callable[..., Any], inputs: Inputs, nondet_tol: float = 0.0, fast_mode: bool = False
) -> tuple[bool, str]:
    """Runs gradcheck w.r.t. the differentiable inputs; returns (passed, detail).

    Inputs must already be float64; non-differentiable tensors are held fixed.
    """
    names = list(inputs.tensors)
    diff = [n for n in names if n in inputs.differentiable]

    def f(*args: torch.Tensor) -> Any:
        tensors = dict(inputs.tensors)
        tensors.update(zip(diff, args, strict=True))
        return fn(*tensors.values(), **inputs.kwargs)

    args = tuple(inputs.tensors[n].detach().requires_grad_(True) for n in diff)
    try:
        ok = torch.autograd.gradcheck(f, args, nondet_tol=nondet_tol, raise_exception=True, fast_mode=fast_mode)
    except GradcheckError as exc:  # a wrong gradient; any other exception is the impl crashing
        msg = str(exc).strip().splitlines()
        return False, " ".join(msg[:6])[:600]
    sizes = ", ".join(f"{n}{tuple(inputs.tensors[n].shape)}" for n in diff)
    return bool(ok), f"gradcheck{' (fast mode)' if fast_mode else ''} w.r.t. {sizes}"
