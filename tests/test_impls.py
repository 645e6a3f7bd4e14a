"""Every registered impl equals the float64 naive reference, forward and backward.

Parametrized from the registry: a new impl (or mechanism with a suite) is tested
with no new test code. Cases are the quick profiles of the suites in suites/.
"""

from __future__ import annotations

import pytest

from attnbench.api import describe, failures, suites_for, verify
from attnbench.registry import REGISTRY

REGISTRY.discover()
PARAMS = [
    pytest.param(mech.name, impl.name, id=f"{mech.name}:{impl.name}")
    for mech in REGISTRY.all_mechanisms()
    for impl in REGISTRY.impls_for(mech.name)
]


@pytest.mark.parametrize(("mechanism", "impl"), PARAMS)
def test_impl_matches_reference(mechanism: str, impl: str) -> None:
    if not suites_for(mechanism):
        pytest.skip(f"no suite in suites/ uses {mechanism}")
    rows = verify(mechanism, impl)
    assert rows, "no checks ran"
    ran = [r for r in rows if r.status != "skip"]
    assert ran, "every check was skipped: " + "; ".join(sorted({r.detail for r in rows}))
    assert not failures(rows), describe(rows)


def test_every_mechanism_has_reference_and_vectorized() -> None:
    for mech in REGISTRY.all_mechanisms():
        kinds = {i.kind for i in REGISTRY.impls_for(mech.name) if i.builtin}
        assert {"naive", "vectorized"} <= kinds, f"{mech.name} has only {sorted(kinds)}"


def test_every_mechanism_has_a_suite() -> None:
    for mech in REGISTRY.all_mechanisms():
        assert suites_for(mech.name), f"no suite in suites/ uses {mech.name}"


def test_every_impls_package_imports() -> None:
    assert not REGISTRY.broken, f"impls packages failed to import: {REGISTRY.broken}"
