"""Library use: check an implementation against a mechanism's reference from Python.

    from attnbench.api import verify, failures

    rows = verify("ccnet", my_cca)           # quick cases of every suite using "ccnet"
    assert not failures(rows), failures(rows)

The same runner code as ``attnbench run`` does the work, without timing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from attnbench import runner
from attnbench.cases import Case
from attnbench.errors import UsageError
from attnbench.registry import REGISTRY, Impl
from attnbench.report.csv import CheckRow
from attnbench.suite import Profile, Suite, load_suite

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"


def suites_for(mechanism: str) -> list[Suite]:
    """Every suite under ``suites/`` whose mechanisms include ``mechanism``."""
    REGISTRY.discover()
    found = []
    for path in sorted(SUITES_DIR.glob("*/suite.toml")):
        try:
            suite = load_suite(path)
        except UsageError as exc:
            if mechanism in path.read_text(encoding="utf-8", errors="replace"):
                raise  # a broken suite of this mechanism is this mechanism's problem
            warnings.warn(f"skipping broken suite: {exc}", stacklevel=2)
            continue
        if mechanism in suite.mechanisms:
            found.append(suite)
    return found


def _as_impl(mechanism: str, impl: Impl | Callable[..., Any] | str, name: str | None) -> Impl:
    REGISTRY.discover()
    if isinstance(impl, Impl):
        return impl
    if isinstance(impl, str):
        return REGISTRY.impls[mechanism][impl]
    return Impl(
        mechanism=mechanism, name=str(name or getattr(impl, "__name__", "user")), kind="user", fn=impl, source="<api>"
    )


def verify(
    mechanism: str,
    impl: Impl | Callable[..., Any] | str,
    *,
    name: str | None = None,
    cases: Sequence[Case] | None = None,
    dtypes: Iterable[str] = ("float64", "float32"),
    device: str = "cpu",
    checks: Iterable[str] = ("forward", "backward", "properties", "gradcheck", "modules", "opcheck"),
    profile: str = "quick",
    max_work: int | None = None,
) -> list[CheckRow]:
    """Runs the correctness checks of ``impl`` and returns the rows (no timing).

    Args:
        mechanism: the core's registry key (``"ccnet"``).
        impl: a registered impl, its name, or any callable with the canonical signature.
        name: a name for a bare callable.
        cases: shape cases (default: the profile's cases of every suite using the mechanism).
        dtypes: dtypes to check in.
        device: ``"cpu"`` or ``"cuda"``.
        checks: which checks to run.
        profile: suite profile that provides the default cases.
        max_work: keep only cases whose naive reference does at most this many
            inner-loop iterations (the mechanism's ``naive_work``), e.g. for a fast
            test run; module and gradcheck cases are kept.

    A task that several suites share (same shape, dtype and check) runs once.
    """
    the_impl = _as_impl(mechanism, impl, name)
    table = REGISTRY.impls.setdefault(mechanism, {})
    previous = table.get(the_impl.name)
    table[the_impl.name] = the_impl
    try:
        rows: list[CheckRow] = []
        done: set[str] = set()
        for suite in suites_for(mechanism):
            prof = suite.profile(profile) if profile in suite.profiles else suite.profile("quick")
            chosen = [c for c in (cases if cases is not None else prof.cases) if c.mechanism == mechanism]
            mech = REGISTRY.mechanism(mechanism)
            if max_work is not None and mech.naive_work is not None:
                chosen = [c for c in chosen if mech.naive_work(c) <= max_work]
            gradcheck = tuple(c for c in prof.gradcheck if c.mechanism == mechanism) if cases is None else ()
            modules = tuple(c for c in prof.modules if c.mechanism == mechanism) if cases is None else ()
            narrowed = Profile(prof.name, tuple(dtypes), (device,), tuple(chosen), gradcheck, modules, (), prof.timing)
            narrowed_suite = replace(suite, checks=frozenset(checks) - {"timing", "memory"})
            ctx = runner.Context(narrowed_suite, narrowed, runner.Options(only=(the_impl.name,), timing=False))
            for task in runner.plan(narrowed_suite, narrowed, ctx.options):
                if task.key in done:
                    continue
                done.add(task.key)
                rows.extend(r for r in runner.execute(task, ctx) if isinstance(r, CheckRow))
            if cases is not None:
                break
        return rows
    finally:
        if previous is None:
            table.pop(the_impl.name, None)
        else:
            table[the_impl.name] = previous


def failures(rows: Iterable[CheckRow]) -> list[CheckRow]:
    """Rows that failed or errored (skips are not failures)."""
    return [r for r in rows if r.status in ("fail", "error") and not r.expected]


def describe(rows: Iterable[CheckRow]) -> str:
    """One line per failing row: what to look at and how to rerun it."""
    lines = [f"{r.status}: {r.impl} {r.check} on {r.case} [{r.dtype}, {r.device}]: {r.detail}" for r in failures(rows)]
    return "\n".join(lines) if lines else "all checks passed"
