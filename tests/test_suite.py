"""Suite files: strict validation with messages naming file, key and what is allowed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from attnbench.errors import SuiteError, UsageError
from attnbench.suite import load_suite

from .conftest import ROOT, TINY_CCNET


def test_shipped_suites_load() -> None:
    for path in sorted((ROOT / "suites").glob("*/suite.toml")):
        suite = load_suite(path)
        assert suite.profile("quick").cases or suite.profile("quick").modules


def test_tiny_suite_expands(tiny_suite: Path) -> None:
    suite = load_suite(tiny_suite)
    quick = suite.profile("quick")
    assert [c.shape_id for c in quick.cases] == ["ccnet/cca/B=2,C=4,Cq=3,H=4,W=5", "ccnet/cca/B=2,C=3,Cq=2,H=3,W=2"]
    assert quick.timing.min_runs == 3
    assert quick.dtypes == ("float64", "float32")


def test_grid_zips_comma_keys(write_suite: Callable[..., Path]) -> None:
    folder = write_suite("""
        mechanisms = ["ccnet"]
        [profiles.quick]
        [[profiles.quick.grids]]
        B = [1, 2]
        "Cq,C" = [[1, 2], [3, 4]]
        H = [3]
        W = [5]
    """)
    cases = load_suite(folder).profile("quick").cases
    assert len(cases) == 4
    assert {(c["B"], c["Cq"], c["C"]) for c in cases} == {(1, 1, 2), (1, 3, 4), (2, 1, 2), (2, 3, 4)}


@pytest.mark.parametrize(
    ("broken", "fragment"),
    [
        (TINY_CCNET.replace("    H = 4\n", "    Hh = 4\n", 1), "profiles.quick.cases[0].Hh: unknown key"),
        (TINY_CCNET.replace("warmup = 1", "warmpu = 1"), "timing.warmpu: unknown key; allowed: warmup"),
        (TINY_CCNET.replace("warmup = 1", 'warmup = "one"'), "timing.warmup: must be int"),
        (TINY_CCNET.replace("    B = 2\n", "    B = -2\n", 1), "B = -2 must be int >= 1"),
        (TINY_CCNET.replace("    C = 4\n", "    C = 0\n", 1), "C = 0 must be int >= 1"),
        (TINY_CCNET.replace('dtypes = ["float64", "float32"]', 'dtypes = ["float128"]'), "'float128' is not allowed"),
        (TINY_CCNET.replace('mechanisms = ["ccnet"]', 'mechanisms = ["ccnett"]'), "unknown mechanism 'ccnett'"),
        (TINY_CCNET.replace("[profiles.quick]", "[profiles.quik]"), "profiles"),
        (TINY_CCNET + "\nunexpected = 1\n", "unexpected: unknown key"),
        ("mechanisms = [\n", "malformed TOML"),
    ],
)
def test_bad_suites_name_the_key(write_suite: Callable[..., Path], broken: str, fragment: str) -> None:
    folder = write_suite(broken)
    with pytest.raises(SuiteError) as info:
        load_suite(folder)
    message = str(info.value)
    assert str(folder / "suite.toml") in message
    assert fragment in message


def test_missing_suite_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no suite\.toml found"):
        load_suite(tmp_path / "nowhere")
