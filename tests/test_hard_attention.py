"""Hard attention: statistical helpers, ext ops, gradcheck, mutations (specs/hard_attention.md)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnbench import build
from attnbench.cases import Case
from attnbench.checks import statistical
from impls.hard_attention import ext, mechanism, naive, statistics, vectorized

from .conftest import MutationRun

EXT_REASON = None


def ext_unavailable() -> str | None:
    global EXT_REASON
    if EXT_REASON is None:
        EXT_REASON = build.unavailable_reason("hard_attention") or ""
    return EXT_REASON or None


needs_ext = pytest.mark.skipif("ext_unavailable() is not None", reason="hard_attention extension does not build here")


# -- statistical helpers on known distributions ---------------------------------------------


def test_z_test_accepts_the_true_mean_and_rejects_a_shift() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(100_000, generator=gen, dtype=torch.float64) * 2 + 0.5
    ok = statistical.z_test(x, 0.5)
    assert ok.passed and ok.p_value is not None and ok.p_value > 0.001 and ok.statistic is not None
    assert "z-test" in ok.detail and "α=0.001" in ok.detail and "n=100000" in ok.detail
    bad = statistical.z_test(x, 0.55)  # 0.05 / (2/316) ≈ 7.9 SE away
    assert not bad.passed and abs(bad.statistic or 0) > 3.29


def test_z_critical_value() -> None:
    assert statistical.z_critical(0.001) == pytest.approx(3.2905, abs=1e-4)


def test_chi2_gof_on_a_multinomial() -> None:
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    counts = np.random.default_rng(3).multinomial(20_000, probs)
    ok = statistical.chi2_gof(counts, probs)
    assert ok.passed and "df=3" in ok.detail and "16.27" in ok.detail
    assert not statistical.chi2_gof(counts, [0.25, 0.25, 0.25, 0.25]).passed


def test_mean_and_covariance_tests() -> None:
    rng = np.random.default_rng(5)
    cov = np.array([[0.25, 0.0], [0.0, 0.25]])
    x = rng.multivariate_normal([0.3, -0.2], cov, size=50_000)
    assert statistical.mean_test(x, [0.3, -0.2], cov).passed
    assert not statistical.mean_test(x, [0.31, -0.2], cov).passed
    assert statistical.covariance_test(x, [0.3, -0.2], cov).passed
    assert not statistical.covariance_test(x, [0.3, -0.2], cov * 1.05).passed


def test_non_finite_samples_fail() -> None:
    out = statistical.z_test([1.0, float("nan"), 2.0], 0.0)
    assert not out.passed and "non-finite" in out.detail


def test_binomial_ci_and_calibrate() -> None:
    lo, hi = statistical.binomial_ci(5, 100)
    assert lo == pytest.approx(0.0164, abs=1e-3) and hi == pytest.approx(0.1128, abs=1e-3)
    assert statistical.binomial_ci(0, 10)[0] == 0.0
    cal = statistical.calibrate(
        lambda s: statistical.z_test(torch.randn(2000, generator=torch.Generator().manual_seed(s)), 0.0),
        range(40),
        alphas=(0.5, 0.001),
    )
    assert cal.runs == 40 and 5 <= cal.rejections[0.5] <= 35 and len(cal.p_values) == 40


# -- the spec's toy numbers -------------------------------------------------------------------


def test_toy_expected_gradients() -> None:
    assert statistics.TOYS["toy1"].expected_gradient() == pytest.approx(-1.0)
    assert statistics.TOYS["toy1_baseline"].expected_gradient() == pytest.approx(-1.0)
    assert statistics.TOYS["toy2"].expected_gradient() == pytest.approx(-0.8042, abs=5e-5)


def test_toy2_catches_log_prob_at_the_clamped_location() -> None:
    def clamped(mu: torch.Tensor, sigma: float, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loc, loc_raw, _ = vectorized.sample_location(mu, sigma, noise)
        lp = (-((loc - mu) ** 2) / (2 * sigma**2)).sum(-1)
        return loc, loc_raw, lp

    out = statistics.reinforce_check(clamped, vectorized.reinforce_loss, "toy2", "x", 200_000, seed=7)
    assert not out.passed and abs(out.statistic or 0) > 100
    ok = statistics.reinforce_check(vectorized.sample_location, vectorized.reinforce_loss, "toy2", "x", 200_000, seed=7)
    assert ok.passed


def test_gumbel_chi2_on_correct_and_wrong_noise() -> None:
    assert statistics.gumbel_check(vectorized.hard_select, 20_000, seed=11).passed

    def negated(logits: torch.Tensor, values: torch.Tensor, gumbel: torch.Tensor, *a: object) -> torch.Tensor:
        return vectorized.hard_select(logits, values, -gumbel)

    wrong = statistics.gumbel_check(negated, 20_000, seed=11)
    assert not wrong.passed and (wrong.statistic or 0) > 100


def test_distributional_peers_follow_softmax() -> None:
    """F.gumbel_softmax(hard=True) draws its own noise: compare frequencies, not samples."""
    torch.manual_seed(0)
    logits = torch.tensor(statistics.GUMBEL_LOGITS, dtype=torch.float64).expand(20_000, 4)
    counts = F.gumbel_softmax(logits, tau=1.0, hard=True).sum(0).numpy()
    probs = torch.softmax(logits[0], 0).numpy()
    assert statistical.chi2_gof(counts, probs).passed


# -- exact behaviour ---------------------------------------------------------------------------


def test_glimpse_corner_and_padding() -> None:
    x = torch.arange(1.0, 13.0, dtype=torch.float64).reshape(1, 1, 3, 4)
    loc = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    out = naive.glimpse_naive(x, loc, 2, 2)
    # scale 0: rows -1..0, cols -1..0 -> [[0, 0], [0, 1]]; scale 1: 4x4 at (-2, -2), pooled 2x2
    assert out[0, 0].tolist() == [[0.0, 0.0], [0.0, 1.0]]
    assert out[0, 1].tolist() == [[0.0, 0.0], [0.0, (1 + 2 + 5 + 6) / 4]]
    for fn in (vectorized.glimpse,):
        assert torch.equal(fn(x, loc, 2, 2), out)


def test_hard_select_ties_lowest_index() -> None:
    logits = torch.zeros(2, 4, dtype=torch.float64)
    values = torch.arange(8.0, dtype=torch.float64).reshape(2, 4, 1)
    gumbel = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    for fn in (naive.hard_select_naive, vectorized.hard_select):
        assert fn(logits, values, gumbel).flatten().tolist() == [1.0, 4.0]


@pytest.mark.parametrize("fn", [naive.hard_select_naive, vectorized.hard_select], ids=["naive", "vectorized"])
def test_straight_through_equals_surrogate_gradient(fn: Callable[..., torch.Tensor]) -> None:
    case = Case(
        "hard_attention.hard_select",
        "hard_select",
        {"B": 3, "N": 5, "D": 4, "tau": 0.5, "straight_through": True, "ties": False},
    )
    assert mechanism.prop_straight_through(fn, case, torch.float64, "cpu").passed


def test_surrogate_gradcheck() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    values = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    gumbel = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda lg, v: mechanism.surrogate(lg, v, gumbel, 0.5), (logits, values))


def test_log_prob_matches_normal_peer_and_score() -> None:
    case = Case("hard_attention.sample_location", "sample_location", {"B": 7, "sigma": 0.5})
    for fn in (naive.sample_location_naive, vectorized.sample_location):
        assert mechanism.prop_score(fn, case, torch.float64, "cpu").passed
        assert mechanism.prop_log_prob_gradcheck(fn, case, torch.float64, "cpu").passed


# -- ext ops ------------------------------------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ext_opcheck(dtype: torch.dtype) -> None:
    case = Case("hard_attention.glimpse", "glimpse", {"B": 1})
    for op, args, kwargs in ext._glimpse_samples(case, dtype, "cpu") + ext._select_samples(case, dtype, "cpu"):
        torch.library.opcheck(op, args, kwargs)


@needs_ext
def test_ext_gradcheck_glimpse_and_select() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    loc = torch.tensor([[0.1, -0.3]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: ext.glimpse_ext(t, loc, 2, 2), (x,), nondet_tol=1e-12)
    logits = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    values = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    gumbel = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: ext.hard_select_ext(logits, v, gumbel, 1.0, True), (values,))


@needs_ext
def test_ext_errors_name_op_and_argument() -> None:
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"glimpse_forward: loc must have shape \[B, 2\]"):
        ext.glimpse_ext(x, torch.zeros(3, 2, dtype=torch.float64), 2, 1)
    with pytest.raises(RuntimeError, match="hard_select_forward: logits must have shape"):
        ext.hard_select_ext(torch.zeros(2, 3), torch.zeros(2, 4, 1), torch.zeros(2, 3))


# -- mutations through the command line --------------------------------------------------------

TINY = """
    name = "tiny_hard"
    mechanisms = ["hard_attention.glimpse", "hard_attention.sample_location",
                  "hard_attention.reinforce_loss", "hard_attention.hard_select"]
    [checks]
    timing = false
    memory = false
    [profiles.quick]
    dtypes = ["float64"]
    [[profiles.quick.cases]]
    mechanism = "hard_attention.glimpse"
    B = 2
    C = 3
    H = 9
    W = 13
    size = 3
    scales = 3
    lx = 0.37
    ly = -0.81
    [[profiles.quick.cases]]
    mechanism = "hard_attention.glimpse"
    B = 3
    C = 2
    H = 7
    W = 11
    size = 4
    scales = 3
    [[profiles.quick.cases]]
    mechanism = "hard_attention.sample_location"
    tags = ["statistical"]
    B = 40
    [[profiles.quick.cases]]
    mechanism = "hard_attention.reinforce_loss"
    tags = ["statistical"]
    B = 7
    T = 3
    [[profiles.quick.cases]]
    mechanism = "hard_attention.hard_select"
    tags = ["statistical"]
    B = 5
    N = 6
    D = 3
    tau = 0.5
    straight_through = true
    [[profiles.quick.cases]]
    mechanism = "hard_attention.hard_select"
    B = 6
    N = 5
    D = 3
    ties = true
"""


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    ("file", "name", "caught_by"),
    [
        ("hard_reinforce_baseline_sign.py", "baseline_sign", {"forward"}),
        ("hard_reinforce_baseline_attached.py", "baseline_attached", {"property:advantage_detached"}),
        ("hard_reinforce_loss_sign.py", "loss_sign", {"forward", "property:reinforce_toy1_x"}),
        ("hard_log_prob_clamped.py", "log_prob_clamped", {"forward", "property:reinforce_toy2_x"}),
        ("hard_score_no_sigma.py", "score_no_sigma", {"backward:mu", "property:reinforce_toy1_x"}),
        ("hard_gumbel_wrong_sign.py", "gumbel_wrong_sign", {"forward", "property:gumbel_max_frequencies"}),
        ("hard_glimpse_off_by_one.py", "glimpse_off_by_one", {"forward"}),
        ("hard_glimpse_linear_growth.py", "glimpse_linear_growth", {"forward"}),
        ("hard_straight_through_no_tau.py", "straight_through_no_tau", {"backward:logits"}),
        ("hard_select_ties_highest.py", "ties_highest", {"forward"}),
    ],
)
def test_wrong_hard_attention_impl_is_caught(
    run_mutation: Callable[[str, str, str], MutationRun], file: str, name: str, caught_by: set[str]
) -> None:
    run = run_mutation(TINY, file, name)
    assert run.code == 1
    rows = run.rows
    failed = run.failed
    assert caught_by <= failed, failed
    assert run.vectorized_clean
    stats_rows = [r for r in rows if r["check"].startswith("property:reinforce") or "gumbel" in r["check"]]
    assert all(r["p_value"] != "" for r in stats_rows)


# -- calibration (slow) -------------------------------------------------------------------------


@pytest.mark.slow
def test_small_calibration() -> None:
    from impls.hard_attention import calibration

    result = calibration.run(seeds=60, power_seeds=10, checks=("reinforce_toy1_x", "gumbel_max_frequencies"))
    for row in result["false_alarm"]:
        lo, hi = row["ci95"]["0.05"]
        assert lo <= 0.05 <= hi or row["rejections"]["0.05"] <= 10, row
    for row in result["power"]:
        assert row["rates"]["0.001"] >= 0.9, row
