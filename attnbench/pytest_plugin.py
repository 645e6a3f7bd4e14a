"""pytest plugin: check your own attention implementation in your own test suite.

Installed with attnbench (entry point ``pytest11``), it provides the fixture
``attnbench_check``::

    def test_my_attention(attnbench_check):
        attnbench_check("ccnet", my_cca)                  # quick cases of the shipped suites
        attnbench_check("ccnet", my_cca, dtypes=["float64"], checks=["forward", "backward"])

The call runs the same checks as ``attnbench run`` (forward and gradients
against the float64 naive reference, gradcheck, properties, modules) and fails
the test with one line per failing check; it returns the rows otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest

from attnbench.report.csv import CheckRow


def _check(
    mechanism: str,
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    dtypes: Iterable[str] = ("float64", "float32"),
    device: str = "cpu",
    checks: Iterable[str] = ("forward", "backward", "properties", "gradcheck", "modules"),
) -> list[CheckRow]:
    from attnbench.api import describe, failures, verify

    rows = verify(mechanism, fn, name=name, dtypes=dtypes, device=device, checks=checks)
    if not rows or all(r.status == "skip" for r in rows):
        pytest.fail(
            f"attnbench: no check ran for {mechanism} ({'; '.join(sorted({r.detail for r in rows}))})", pytrace=False
        )
    if failures(rows):
        pytest.fail("attnbench found problems:\n" + describe(rows), pytrace=False)
    return rows


@pytest.fixture
def attnbench_check() -> Callable[..., list[CheckRow]]:
    """``attnbench_check(mechanism, fn, **options)``: fails the test if ``fn`` is not the mechanism."""
    return _check
