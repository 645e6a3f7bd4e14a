"""Cost models and the scaling check (issue 6)."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attnbench.cases import Case
from attnbench.checks.scaling import model_fit, power_fit, predict, verdict
from attnbench.registry import REGISTRY
from attnbench.report.ccnet_vs_nonlocal import analytic

from .conftest import EXAMPLES


def test_power_fit_recovers_exponent_with_ci() -> None:
    xs = [8, 12, 16, 24, 32, 48, 64]
    fit = power_fit(xs, [2e-9 * x**3 * (1 + 0.01 * (-1) ** i) for i, x in enumerate(xs)])
    assert fit is not None and abs(fit.exponent - 3) < 0.05
    assert fit.ci_low < 3 < fit.ci_high and fit.fit_from == 24 and fit.points == 4


def test_model_fit_and_prediction() -> None:
    model = [1e6, 4e6, 9e6, 16e6]
    c, t0, r2, cov, sigma2 = model_fit(model, [1e-9 * m + 1e-4 for m in model])
    assert math.isclose(c, 1e-9, rel_tol=1e-6) and math.isclose(t0, 1e-4, rel_tol=1e-4) and r2 > 0.999999
    value, half = predict(c, t0, cov, sigma2, 25e6, 2)
    assert math.isclose(value, 0.0251, rel_tol=1e-6) and half < 1e-6


def test_verdict_tolerance() -> None:
    fit = power_fit([16, 24, 32, 48, 64], [x**4 for x in [16, 24, 32, 48, 64]])
    assert verdict(fit, 2.96, 0.35)[0] == "fail"  # more work than the model: the defect sought
    assert verdict(fit, 4.0, 0.35)[0] == "pass"
    status, detail = verdict(fit, 5.0, 0.35)  # flatter than the model: overheads, growing efficiency
    assert status == "pass" and "below theory" in detail


def test_ccnet_flops_model_matches_flop_counter() -> None:
    """FlopCounterMode counts the matmuls of the vectorized impl; it computes the
    column including the pixel itself (H keys) and drops it, the model counts H+W−1."""
    mech = REGISTRY.mechanism("ccnet")
    case = Case("ccnet", "cca", {"B": 2, "Cq": 8, "C": 16, "H": 9, "W": 12})
    inputs = mech.make_inputs(case).to(torch.float32, "cpu")
    with FlopCounterMode(display=False) as counter:
        REGISTRY.impls["ccnet"]["vectorized"].fn(*inputs.tensors.values())
    B, Cq, C, H, W = 2, 8, 16, 9, 12
    assert counter.get_total_flops() == 2 * B * H * W * (H + W) * (Cq + C)
    assert mech.flops is not None
    softmax = 4 * B * H * W * (H + W - 1)
    assert mech.flops(case) - softmax == 2 * B * H * W * (H + W - 1) * (Cq + C)


def test_nonlocal_flops_model_matches_flop_counter() -> None:
    mech = REGISTRY.mechanism("nonlocal")
    params = {"B": 2, "Ck": 3, "Cv": 4, "H": 6, "W": 7, "Hk": 3, "Wk": 3, "mode": "dot", "scaled": False}
    case = Case("nonlocal", mech.core, params)
    inputs = mech.make_inputs(case).to(torch.float32, "cpu")
    with FlopCounterMode(display=False) as counter:
        inputs.call(REGISTRY.impls["nonlocal"]["vectorized"].fn)
    assert mech.flops is not None
    assert counter.get_total_flops() == mech.flops(case)


def test_paper_numbers_follow_from_the_cost_model() -> None:
    a = analytic()
    assert round(a["nonlocal_gflops"], 1) == 108.2
    assert round(a["rcca_gflops"], 1) == 16.5
    assert round(a["nonlocal_map_mib"], 1) == 337.7


SCALING_SUITE = """
    mechanisms = ["ccnet"]
    [checks]
    gradcheck = false
    properties = false
    modules = false
    [timing]
    warmup = 1
    min_runs = 5
    max_runs = 7
    min_time_s = 0.0
    passes = ["fwd"]
    threads = 1          # no OpenMP barriers: on a loaded machine they make time track regions, not work
    [profiles.quick]
    dtypes = ["float32"]
    [[profiles.quick.cases]]
    B = 1
    Cq = 2
    C = 3
    H = 3
    W = 4
    [[profiles.quick.scaling]]
    name = "square"
    axis = "H=W"
    # A wide sweep fitted from its first point: local slopes of memory-bound code
    # jump with cache sizes (a quadratic impl measured 2.3 on 40→48 and 6.4 on
    # 48→64 here), the slope over a factor of 4 in S does not.
    values = [16, 32, 48, 64]
    fit_from = 16
    fixed = { B = 1, Cq = 8, C = 32 }
    tolerance = 0.5
"""


def test_secretly_quadratic_impl_fails_scaling_but_passes_equivalence(
    run_cli: Callable[..., int], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code = run_cli(
        "run",
        write_suite(SCALING_SUITE, "scaling"),
        "--impl",
        EXAMPLES / "wrong" / "ccnet_secretly_quadratic.py",
        "--only",
        "secretly_quadratic",
        "--out",
        out,
        "--quiet",
    )
    assert code == 1
    with open(out / "checks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["status"] for r in rows if r["check"] == "forward"} == {"pass"}
    scaling = [r for r in rows if r["check"] == "scaling:square"]
    assert [r["status"] for r in scaling] == ["fail"], scaling
    assert float(scaling[0]["statistic"]) > 3.5
    assert (out / "scaling.csv").exists()
    assert list((out / "plots").glob("scaling_ccnet_square_*.png"))
    assert "## Scaling" in (out / "report.md").read_text()


@pytest.mark.slow
def test_vectorized_ccnet_scales_as_theory(
    run_cli: Callable[..., int], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert run_cli("run", write_suite(SCALING_SUITE, "scaling"), "--only", "vectorized", "--out", out, "--quiet") == 0


TWO_MECHANISMS = """
    mechanisms = ["ccnet", "nonlocal"]
    [checks]
    gradcheck = false
    properties = false
    modules = false
    opcheck = false
    memory = false
    [timing]
    warmup = 0
    min_runs = 1
    max_runs = 1
    min_time_s = 0.0
    passes = ["fwd"]
    threads = 1
    [profiles.quick]
    dtypes = ["float32"]
    [[profiles.quick.cases]]
    mechanism = "ccnet"
    B = 1
    Cq = 2
    C = 3
    H = 3
    W = 4
    [[profiles.quick.scaling]]
    name = "square"
    mechanism = "ccnet"
    axis = "H=W"
    values = [4, 6, 8]
    impls = ["vectorized"]
    fixed = { B = 1, Cq = 2, C = 4 }
    [[profiles.quick.scaling]]
    name = "square"
    mechanism = "nonlocal"
    axis = "H=W=Hk=Wk"
    values = [4, 6, 8]
    impls = ["vectorized"]
    fixed = { B = 1, Ck = 2, Cv = 4, mode = "embedded_gaussian" }
"""


def test_sweeps_of_two_mechanisms_may_share_a_name(
    run_cli: Callable[..., int], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    """Each sweep runs on its own mechanism's cases (a lookup by name alone ran ccnet's twice)."""
    out = tmp_path / "out"
    run_cli("run", write_suite(TWO_MECHANISMS, "two"), "--out", out, "--quiet")
    with open(out / "checks.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["check"] == "scaling:square"]
    assert sorted(r["mechanism"] for r in rows) == ["ccnet", "nonlocal"], rows
    assert all(r["status"] != "error" and r["case"].startswith(r["mechanism"] + "/") for r in rows), rows


def test_two_sweeps_of_one_mechanism_need_different_names(
    run_cli: Callable[..., int], write_suite: Callable[..., Path]
) -> None:
    twice = TWO_MECHANISMS.replace(
        'mechanism = "nonlocal"\n    axis = "H=W=Hk=Wk"', 'mechanism = "ccnet"\n    axis = "H"'
    )
    twice = twice.replace(
        'fixed = { B = 1, Ck = 2, Cv = 4, mode = "embedded_gaussian" }', "fixed = { B = 1, Cq = 2, C = 4, W = 4 }"
    )
    assert run_cli("run", write_suite(twice, "twice"), "--quiet") == 2


def test_expected_scaling_failure_is_reported_but_does_not_fail_the_run(
    run_cli: Callable[..., int], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    suite = SCALING_SUITE + (
        '    [[expected_failures]]\n    impl = "secretly_quadratic"\n    check = "scaling"\n'
        '    reason = "builds the full (HW)² map on purpose"\n'
    )
    out = tmp_path / "out"
    code = run_cli(
        "run",
        write_suite(suite, "xfail"),
        "--impl",
        EXAMPLES / "wrong" / "ccnet_secretly_quadratic.py",
        "--only",
        "secretly_quadratic",
        "--out",
        out,
        "--quiet",
    )
    with open(out / "checks.csv", newline="") as f:
        scaling = [r for r in csv.DictReader(f) if r["check"] == "scaling:square"]
    assert [(r["status"], r["expected"]) for r in scaling] == [("fail", "builds the full (HW)² map on purpose")]
    assert code == 0
