"""Report section for hard attention: statistical checks and what applies to what.

Registered into :data:`attnbench.report.markdown.SECTIONS` when the package is
imported; renders only when a result folder has hard_attention rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.report import markdown as md
from attnbench.report.csv import read_rows
from impls.hard_attention import statistics as st

STATISTICAL_PREFIXES = ("property:reinforce_", "property:location_", "property:gumbel_")

APPLICABILITY = [
    ("glimpse", "x", "yes (linear in x)", "exact, 1e-12 in float64 (naive, vectorized, ext, peer)", "–"),
    ("glimpse", "loc", "no: piecewise constant, the op returns no gradient", "forward only", "–"),
    (
        "sample_location",
        "mu → log_prob",
        "yes, with the sample held fixed (property log_prob_gradcheck); not on the sampling call itself",
        "exact (naive, vectorized, Normal peer); ∂log_prob/∂mu = noise/σ",
        "location_mean (χ², df=2), location_covariance (LR χ², df=3), REINFORCE z-tests",
    ),
    ("sample_location", "sampling (noise → loc)", "no", "loc, loc_raw exact", "as above"),
    (
        "reinforce_loss",
        "log_prob",
        "yes (linear)",
        "exact; reward/baseline get no gradient (advantage_detached)",
        "REINFORCE z-tests on toys 1, 1+baseline, 2 (columns x and y)",
    ),
    ("hard_select", "values", "yes (linear one-hot gather)", "exact", "–"),
    (
        "hard_select",
        "logits",
        "no: piecewise constant (finite differences 0 ≠ straight-through); gradcheck of the smooth surrogate instead",
        "straight-through gradient = autograd of Σ softmax((l+g)/τ)·v (straight_through_surrogate)",
        "gumbel_max_frequencies (Pearson χ², df=N−1)",
    ),
]


def section(out: Path, env: dict[str, Any]) -> list[str]:
    path = out / "checks.csv"
    if not path.exists():
        return []
    checks = pd.DataFrame(read_rows(path))
    if checks.empty or "mechanism" not in checks:
        return []
    ours = checks[checks["mechanism"].astype(str).str.startswith("hard_attention.")]
    if ours.empty:
        return []
    lines = ["## Hard attention: statistical checks", ""]
    stat = ours[ours["check"].astype(str).str.startswith(STATISTICAL_PREFIXES)]
    if len(stat):
        view = stat[["mechanism", "impl", "check", "status", "statistic", "p_value"]].copy()
        view["mechanism"] = view["mechanism"].str.replace("hard_attention.", "", regex=False)
        view["check"] = view["check"].str.replace("property:", "", regex=False)
        for col in ("statistic", "p_value"):
            view[col] = pd.to_numeric(view[col], errors="coerce").map(lambda v: "–" if v != v else f"{v:.4g}")
        lines += [
            "Each row is a hypothesis test at α = 0.001 with a seed derived from the case id (rerun = same draws); "
            "`detail` in checks.csv states the test, n, estimate and expected value. Naive impls use "
            f"{st.M_NAIVE:,} draws instead of {st.M_REINFORCE:,}/{st.M_GUMBEL:,}.",
            "",
        ]
        lines += md.table(view.sort_values(["mechanism", "check", "impl"]))
    lines += ["### What applies to what", ""]
    lines += md.table(
        pd.DataFrame(
            APPLICABILITY,
            columns=["core", "input / step", "gradcheck", "exact comparison", "statistical check"],
        )
    )
    from impls.hard_attention import calibration

    result = calibration.load()
    if result is not None:
        lines += ["### Calibration (docs/hard_attention_calibration.md)", ""]
        lines += calibration.markdown(result)
    return lines


if section not in md.SECTIONS:
    md.SECTIONS.append(section)
