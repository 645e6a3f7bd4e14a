"""The "Scaling" report section, scaling.csv and the log–log plots.

Recomputed from perf.csv (rows whose ``case_name`` is ``scaling:<axis>:<value>``)
with the suite's axis settings, so ``attnbench report`` rebuilds it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from attnbench.checks.scaling import SCALING_COLUMNS, fits_for
from attnbench.report.csv import read_rows
from attnbench.suite import ScalingAxis


def _axes(env: dict[str, Any]) -> dict[tuple[str, str], ScalingAxis]:
    try:
        from attnbench.suite import load_suite

        suite = load_suite((env.get("suite") or {}).get("path", ""))
        profile = suite.profile((env.get("suite") or {}).get("profile", "quick"))
        return {(a.mechanism, a.name): a for a in profile.scaling}
    except Exception:
        return {}


def collect(out: Path, env: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per (mechanism, axis, impl, dtype, device, pass) with its points and fits."""
    axes = _axes(env)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    kinds: dict[str, str] = {}
    for r in read_rows(out / "perf.csv"):
        name = r.get("case_name", "")
        if not name.startswith("scaling:"):
            continue
        _, axis_name, value = name.split(":", 2)
        key: tuple[str, ...] = (r["mechanism"], axis_name, r["impl"], r["dtype"], r["device"], r["pass"])
        kinds[r["impl"]] = r["kind"]
        groups.setdefault(key, []).append(
            {
                "value": int(value),
                "median_s": float(r["median_s"]),
                "peak_bytes": float(r["peak_bytes"]) if r.get("peak_bytes") else 0.0,
                "flops": float(r["flops"]) if r.get("flops") else None,
            }
        )
    records = []
    for key, points in sorted(groups.items()):
        mech, axis_name = key[0], key[1]
        axis = axes.get((mech, axis_name)) or ScalingAxis(axis_name, mech, axis_name, (), {})
        points.sort(key=lambda p: p["value"])
        records.append(
            {"key": key, "kind": kinds.get(key[2], ""), "axis": axis, "points": points, "fits": fits_for(points, axis)}
        )
    return records


def write_csv(out: Path, records: list[dict[str, Any]]) -> None:
    with open(out / "scaling.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(SCALING_COLUMNS))
        w.writeheader()
        for rec in records:
            mech, axis_name, impl, dtype, device, pass_ = rec["key"]
            fits, axis = rec["fits"], rec["axis"]
            for quantity in ("time", "memory"):
                fit = fits.get(quantity)
                if fit is None:
                    continue
                theory = fits["theory"] if quantity == "time" else math.nan
                ok = abs(fit.exponent - theory) <= axis.tolerance if theory == theory else None
                w.writerow(
                    {
                        "mechanism": mech,
                        "impl": impl,
                        "kind": rec["kind"],
                        "axis": axis.axis or axis_name,
                        "dtype": dtype,
                        "device": device,
                        "pass": pass_,
                        "quantity": quantity,
                        "exponent": fit.exponent,
                        "ci_low": fit.ci_low,
                        "ci_high": fit.ci_high,
                        "theory_exponent": theory,
                        "tolerance": axis.tolerance,
                        "verdict": "" if ok is None else ("pass" if ok else "fail"),
                        "fit_from": fit.fit_from,
                        "fit_to": fit.fit_to,
                        "points": fit.points,
                        "coef": fits.get("coef", "") if quantity == "time" else "",
                        "t0": fits.get("t0", "") if quantity == "time" else "",
                        "r2": fits.get("r2", "") if quantity == "time" else "",
                    }
                )


def plot(out: Path, records: list[dict[str, Any]]) -> list[Path]:
    """One log–log figure per (mechanism, axis, pass): time and peak memory, theory lines dashed."""
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    by_fig: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for rec in records:
        mech, axis_name, _impl, dtype, _device, pass_ = rec["key"]
        by_fig.setdefault((mech, axis_name, dtype, pass_), []).append(rec)
    paths = []
    for (mech, axis_name, dtype, pass_), recs in by_fig.items():
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
        for rec in recs:
            xs = [p["value"] for p in rec["points"]]
            ts = [p["median_s"] for p in rec["points"]]
            fit = rec["fits"]["time"]
            label = rec["key"][2] + (f" (b={fit.exponent:.2f})" if fit else "")
            line = ax_t.loglog(xs, ts, "o-", label=label)[0]
            flops = [p["flops"] for p in rec["points"]]
            if all(flops):
                scale = ts[-1] / flops[-1]
                ax_t.loglog(xs, [f * scale for f in flops], "--", color=line.get_color(), alpha=0.5)
            mem = [p["peak_bytes"] for p in rec["points"]]
            if any(mem):
                ax_m.loglog(xs, [max(m, 1.0) for m in mem], "o-", color=line.get_color(), label=rec["key"][2])
        axis = recs[0]["axis"]
        for ax, ylabel in ((ax_t, "median time per call [s]"), (ax_m, "peak extra memory [bytes]")):
            ax.set_xlabel(f"{axis.axis or axis_name} (log)")
            ax.set_ylabel(ylabel + " (log)")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        theory = recs[0]["fits"]["theory"]
        ax_t.set_title(
            f"{mech} {axis_name}: time ({dtype}, {pass_}); dashed = cost model"
            + (f", slope {theory:.2f}" if theory == theory else ""),
            fontsize=9,
        )
        ax_m.set_title(f"{mech} {axis_name}: peak memory", fontsize=9)
        fig.tight_layout()
        path = folder / f"scaling_{mech}_{axis_name}_{dtype}_{pass_}.png".replace("+", "_").replace("=", "")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def section(out: Path, env: dict[str, Any]) -> list[str]:
    records = collect(out, env)
    if not records:
        return []
    write_csv(out, records)
    pngs = plot(out, records)
    verdicts = {
        (r["impl"], r["check"]): (r["status"], r["detail"])
        for r in read_rows(out / "checks.csv")
        if r["check"].startswith("scaling:")
    }
    lines = [
        "## Scaling",
        "",
        "Exponent b of time ∝ x^b fitted in log–log space on the upper part of each sweep (where the "
        "asymptotic term dominates constant overheads; range in the table), with its 95 % CI, against "
        "the cost model's own slope over the same range; model fit: time = c·FLOPs + t0 over all points.",
        "",
        "| mechanism | axis | impl | pass | time exponent [95% CI] | theory | memory exponent | fit range | "
        "R² (model) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        mech, axis_name, impl, _dtype, _device, pass_ = rec["key"]
        fits = rec["fits"]
        t, m = fits["time"], fits["memory"]
        status = verdicts.get((impl, f"scaling:{axis_name}"), ("", ""))[0]
        lines.append(
            f"| {mech} | {rec['axis'].axis or axis_name} | {impl} | {pass_} | "
            + (f"{t.exponent:.2f} [{t.ci_low:.2f}, {t.ci_high:.2f}]" if t else "–")
            + f" | {fits['theory']:.2f} | "
            + (f"{m.exponent:.2f}" if m else "–")
            + (f" | {t.fit_from}–{t.fit_to} ({t.points} pts)" if t else " | –")
            + (f" | {fits['r2']:.3f}" if "r2" in fits else " | –")
            + f" | {status or '–'} |"
        )
    lines.append("")
    for png in pngs:
        lines += [f"![{png.stem}](plots/{png.name})", ""]
    failed = [f"{impl}: {d}" for (impl, _c), (st, d) in verdicts.items() if st == "fail"]
    lines.append(
        "Verdict: "
        + (
            "every impl scales as the theory says."
            if not failed
            else "**does not scale as the theory says** — " + "; ".join(failed)
        )
    )
    lines.append("")
    return lines
