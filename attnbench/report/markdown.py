"""``report.md``: is it right, how fast, how much memory, how does it scale.

Built only from the CSV files and env.json of a result folder, so
``attnbench report DIR`` rebuilds it (and merges shards) without rerunning.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.report import plots
from attnbench.report.csv import read_rows

SECTIONS: list[Callable[[Path, dict[str, Any]], list[str]]] = []
"""Extra report sections (scaling, comparison, ...) appended by other modules."""


def fmt_time(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(n: float | None) -> str:
    if n is None or n != n:
        return "–"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def table(df: pd.DataFrame) -> list[str]:
    """A DataFrame as a Markdown table (index not included)."""
    if df.empty:
        return ["(none)", ""]
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        cells = [str(v).replace("|", "\\|").replace("\n", " ") for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


PERF_KEY = ("mechanism", "impl", "case", "dtype", "device", "pass")


def guarded(section: Callable[..., list[str]], *args: Any) -> list[str]:
    """A report section, or a visible note if it failed: measured rows are already in the
    CSV files and a bug in one section must not cost the rest of the report."""
    try:
        return section(*args)
    except Exception as exc:
        name = getattr(section, "__qualname__", repr(section))
        warnings.warn(f"report section {name} failed: {type(exc).__name__}: {exc}", stacklevel=2)
        return [f"> **Report section `{name}` failed** ({type(exc).__name__}: {exc}); the CSV files are complete.", ""]


def load(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    checks = pd.DataFrame(read_rows(out / "checks.csv"))
    perf = pd.DataFrame(read_rows(out / "perf.csv"))
    env: dict[str, Any] = {}
    if (out / "env.json").exists():
        env = json.loads((out / "env.json").read_text())
    if not perf.empty:
        for col in (
            "median_s",
            "iqr_s",
            "peak_bytes",
            "saved_bytes",
            "flops",
            "gflops_per_s",
            "model_bytes",
            "bytes_moved",
            "runs",
        ):
            if col in perf:
                perf[col] = pd.to_numeric(perf[col], errors="coerce")
    if not checks.empty:
        for col in ("max_abs_err", "max_rel_err"):
            checks[col] = pd.to_numeric(checks[col], errors="coerce")
    return checks, perf, env


def verdict(checks: pd.DataFrame) -> tuple[str, dict[str, int]]:
    counts = {s: 0 for s in ("pass", "fail", "skip", "error")}
    if checks.empty:
        return "NO RESULTS", counts
    unexpected = checks[(checks["status"] == "fail") & (checks["expected"].fillna("") == "")]
    for s in counts:
        counts[s] = int((checks["status"] == s).sum())
    if len(unexpected):
        return "FAIL", counts
    if counts["error"]:
        return "ERROR", counts
    return "PASS", counts


def short_case(case: str) -> str:
    """``ccnet/cca/B=2,...`` -> ``B=2,...`` (the mechanism is in its own column)."""
    return case.split("/", 2)[-1]


def write_report(out: Path) -> Path:
    from attnbench.registry import REGISTRY

    REGISTRY.discover()  # mechanism packages may append to SECTIONS
    checks, perf, env = load(out)
    lines: list[str] = []
    suite = env.get("suite", {})
    title = suite.get("name", out.name)
    lines += [f"# attnbench report: {title}", ""]
    lines += [
        f"- suite: `{suite.get('path', '?')}`, profile **{suite.get('profile', '?')}**, "
        f"mechanisms: {', '.join(suite.get('mechanisms', [])) or '?'}",
        f"- machine: {env.get('cpu_model', '?')} ({env.get('cpu_count', '?')} cores), "
        f"{env.get('threads', '?')} threads, torch {env.get('torch', '?')}"
        + (f", GPU {env['cuda_device']}" if env.get("cuda_device") else ", no GPU"),
        f"- load average at start: {env.get('load_average_1m', '?')} "
        f"(≫ {env.get('cpu_count', '?')} cores means other work competed: timings are noisy)",
        f"- commit `{env.get('commit', '?') or 'unknown'}`, run at {env.get('time', '?')}; "
        f"command: `{env.get('command', '')}`",
        "",
    ]
    if env.get("warning"):
        lines += [f"> **Warning:** {env['warning']}", ""]
    status, counts = verdict(checks)
    lines += ["## Verdict", "", f"**{status}** — " + ", ".join(f"{v} {k}" for k, v in counts.items()), ""]
    if not checks.empty:
        bad = checks[checks["status"].isin(["fail", "error"])]
        if len(bad):
            lines += ["### Failures and errors", ""]
            view = bad[["impl", "case", "dtype", "device", "check", "status", "expected", "detail"]].copy()
            view["case"] = view["case"].map(short_case)
            view["expected"] = view["expected"].fillna("").map(lambda s: f"expected: {s}" if s else "")
            lines += table(view.head(60))
            if len(bad) > 60:
                lines += [f"... and {len(bad) - 60} more in checks.csv", ""]
        lines += correctness_section(checks)
    if not perf.empty:
        # a shape measured both as a suite case and as a scaling point: the case row
        # here, every point in the Scaling section
        perf = perf.drop_duplicates(subset=[c for c in PERF_KEY if c in perf], keep="first")
        lines += guarded(performance_section, perf, out)
        lines += guarded(memory_section, perf)
        lines += guarded(bandwidth_section, perf, env)
    from attnbench.report import ccnet_vs_nonlocal, scaling_section

    lines += guarded(scaling_section.section, out, env)
    lines += guarded(ccnet_vs_nonlocal.section, out, env)
    for section in SECTIONS:
        lines += guarded(section, out, env)
    if not checks.empty:
        skips = checks[checks["status"] == "skip"]
        if len(skips):
            lines += ["## Skipped (with reasons)", ""]
            grouped = skips.groupby(["impl", "detail"]).size().reset_index(name="rows").sort_values(["impl", "detail"])
            lines += table(grouped)
    lines += [
        "## Reading this report",
        "",
        "- Every impl is compared with the float64 reference (the naive loops; the vectorized impl in float64 "
        "where the naive one is over its work budget, column `reference` in checks.csv) on seeded inputs, "
        "forward and gradients, before any time is reported; `detail` names the enforced rule (F: fixed "
        "tolerance, K: within k× the same-precision PyTorch error).",
        "- Latency: median of repeated runs after warm-up, IQR as spread; `fwd` runs under `torch.no_grad()` "
        "(inference), `fwd+bwd` is forward plus backward with a fixed upstream gradient. Raw samples are in "
        "perf.csv (`samples_s`).",
        "- Memory: peak extra bytes allocated during the pass (CUDA allocator on GPU; profiler allocation "
        "events on CPU, which miss scratch memory kept outside PyTorch's allocator) and bytes saved for "
        "backward (distinct storages, inputs excluded).",
        "- Rerun one impl: `attnbench run SUITE --only IMPL`; seeds derive from the case id, so a failure "
        "reproduces exactly.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def correctness_section(checks: pd.DataFrame) -> list[str]:
    lines = ["## Correctness", ""]
    df = checks.copy()
    df["family"] = df["check"].str.split(":").str[0]
    for mech, sub in df.groupby("mechanism", sort=True):
        lines += [f"### {mech}", ""]
        rows = []
        for (impl, kind), g in sub.groupby(["impl", "kind"], sort=False):
            row: dict[str, Any] = {"impl": impl, "kind": kind}
            for fam in ("forward", "backward", "gradcheck", "property", "module", "opcheck"):
                part = g[g["family"] == fam]
                if part.empty:
                    row[fam] = "–"
                    continue
                ran = part[part["status"].isin(["pass", "fail", "error"])]
                npass = int((ran["status"] == "pass").sum())
                cell = f"{npass}/{len(ran)}" if len(ran) else "skip"
                if fam in ("forward", "backward") and len(ran):
                    err = ran["max_abs_err"].replace(float("inf"), float("nan")).max()
                    if err == err:
                        cell += f" (≤{err:.1e})"
                if (part["status"] == "error").any():
                    cell += " ⚠"
                row[fam] = cell
            rows.append(row)
        lines += table(pd.DataFrame(rows))
    lines += [
        "Cells: passed/run (largest max-abs error over the cases); `skip` = not applicable, see below; "
        "⚠ = an error (crash, contract violation).",
        "",
    ]
    return lines


def performance_section(perf: pd.DataFrame, out: Path) -> list[str]:
    lines = ["## Performance", ""]
    for (mech, device, dtype, pass_), sub in perf.groupby(["mechanism", "device", "dtype", "pass"], sort=True):
        lines += [f"### {mech} — {device}, {dtype}, {pass_}", ""]
        impls = list(dict.fromkeys(sub.sort_values("kind")["impl"]))
        baseline = "vectorized" if "vectorized" in impls else None
        rows = []
        for case, g in sub.groupby("case", sort=False):
            med = dict(zip(g["impl"], g["median_s"], strict=True))
            iqr = dict(zip(g["impl"], g["iqr_s"], strict=True))
            row: dict[str, Any] = {"case": short_case(case)}
            for impl in impls:
                row[impl] = f"{fmt_time(med[impl])} ± {fmt_time(iqr[impl])}" if impl in med else "–"
            if baseline and baseline in med:
                for impl in impls:
                    if impl != baseline and impl in med and med[impl] > 0:
                        row[f"{impl} speedup"] = f"{med[baseline] / med[impl]:.2f}×"
            if med:
                row["fastest"] = min(med, key=lambda i: med[i])
            rows.append(row)
        lines += table(pd.DataFrame(rows))
        png = plots.latency_plot(sub, out / "plots", f"{mech}_{device}_{dtype}_{pass_}".replace("+", "_"))
        if png:
            lines += [f"![latency {mech} {dtype} {pass_}](plots/{png.name})", ""]
    lines += ["Median ± IQR per call; speedup = vectorized median / impl median (> 1: faster than vectorized).", ""]
    return lines


def memory_section(perf: pd.DataFrame) -> list[str]:
    lines = ["## Memory", ""]
    cols = ["mechanism", "case", "impl", "dtype", "pass", "peak_bytes", "saved_bytes", "model_bytes"]
    df = perf[[c for c in cols if c in perf]].copy()
    if df["peak_bytes"].isna().all():
        return lines + ["(memory not measured)", ""]
    df["case"] = df["case"].map(short_case)
    for c in ("peak_bytes", "saved_bytes", "model_bytes"):
        if c in df:
            df[c] = df[c].map(fmt_bytes)
    df = df.rename(
        columns={"peak_bytes": "peak extra", "saved_bytes": "saved for bwd", "model_bytes": "attention map (analytic)"}
    )
    lines += table(df)
    return lines


def bandwidth_section(perf: pd.DataFrame, env: dict[str, Any]) -> list[str]:
    """Achieved bytes/s (mechanism traffic model / median) next to the measured copy bandwidth."""
    peaks = env.get("copy_bandwidth_bytes_per_s") or {}
    if not peaks or "bytes_moved" not in perf or perf["bytes_moved"].isna().all():
        return []
    lines = ["## Bandwidth", ""]
    lines += [
        "Achieved = bytes an ideal kernel must move (the mechanism's traffic model, or inputs + outputs) "
        "/ median time; copy = a large `copy_` on this machine (read + write). "
        + ", ".join(f"{d}: {v / 1e9:.1f} GB/s" for d, v in peaks.items()),
        "",
    ]
    df = perf.copy()
    df["GB/s"] = df["bytes_moved"] / df["median_s"] / 1e9
    df["% of copy"] = [
        100.0 * gbs * 1e9 / peaks[d] if peaks.get(d) else float("nan")
        for gbs, d in zip(df["GB/s"], df["device"], strict=True)
    ]
    # the largest case per mechanism/dtype/pass is where bandwidth matters
    df["size"] = df["bytes_moved"]
    rows = []
    for (_mech, _dtype, _pass), g in df.groupby(["mechanism", "dtype", "pass"], sort=True):
        biggest = g[g["size"] == g["size"].max()]
        for _, r in biggest.iterrows():
            rows.append(
                {
                    "mechanism": r["mechanism"],
                    "case": short_case(r["case"]),
                    "impl": r["impl"],
                    "dtype": r["dtype"],
                    "pass": r["pass"],
                    "moved": fmt_bytes(r["bytes_moved"]),
                    "GB/s": f"{r['GB/s']:.2f}",
                    "% of copy": f"{r['% of copy']:.0f}%",
                }
            )
    lines += table(pd.DataFrame(rows))
    return lines
