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


# The default run keeps the cases whose naive loops stay small (and every gradcheck
# and module case); the slow set runs every quick case of every suite.
FAST_WORK = 20_000


def check_impl(mechanism: str, impl: str, max_work: int | None) -> None:
    if not suites_for(mechanism):
        pytest.skip(f"no suite in suites/ uses {mechanism}")
    entry = REGISTRY.impls[mechanism][impl]
    # An optional third-party peer (e.g. timm) may be absent; our own impls, the
    # compiled extension included, must run: a build failure fails here.
    unavailable = entry.available() if entry.kind == "peer" and entry.available else None
    if unavailable:
        pytest.skip(f"{mechanism}:{impl} is not available here: {unavailable}")
    rows = verify(mechanism, impl, max_work=max_work)
    assert rows, "no checks ran"
    ran = [r for r in rows if r.status != "skip"]
    assert ran, "every check was skipped: " + "; ".join(sorted({r.detail for r in rows}))
    assert any(r.check == "forward" and r.status == "pass" for r in rows), "no forward check passed"
    assert not failures(rows), describe(rows)


@pytest.mark.parametrize(("mechanism", "impl"), PARAMS)
def test_impl_matches_reference(mechanism: str, impl: str) -> None:
    check_impl(mechanism, impl, FAST_WORK)


@pytest.mark.slow
@pytest.mark.parametrize(("mechanism", "impl"), PARAMS)
def test_impl_matches_reference_on_every_quick_case(mechanism: str, impl: str) -> None:
    check_impl(mechanism, impl, None)


def test_every_mechanism_has_reference_and_vectorized() -> None:
    for mech in REGISTRY.all_mechanisms():
        kinds = {i.kind for i in REGISTRY.impls_for(mech.name) if i.builtin}
        assert {"naive", "vectorized"} <= kinds, f"{mech.name} has only {sorted(kinds)}"


def test_every_mechanism_has_a_suite() -> None:
    for mech in REGISTRY.all_mechanisms():
        assert suites_for(mech.name), f"no suite in suites/ uses {mech.name}"


def test_every_impls_package_imports() -> None:
    assert not REGISTRY.broken, f"impls packages failed to import: {REGISTRY.broken}"
