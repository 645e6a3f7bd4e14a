"""CCNet section of ``report.md``: ext speedups with reasons, fused-path memory.

Registered in :data:`attnbench.report.markdown.SECTIONS`; renders only when the
result folder has ccnet perf rows with an ``ext`` impl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.report import markdown

BASELINES = ("vectorized", "inf_masked", "sdpa_masked")
OVERHEAD_S = 200e-6  # below this per call, fixed costs (dispatch, padding copies, parallel region) dominate


def why_slower(pass_: str, ext_s: float, ext_min: float, best: str, best_min: float) -> str:
    """A short reason for a case where ext's median is not the fastest (see docs/ccnet.md, Known limits)."""
    if ext_min <= best_min:
        return (
            f"timing noise: ext's fastest run ({markdown.fmt_time(ext_min)}) beats {best}'s fastest "
            f"({markdown.fmt_time(best_min)}); the medians were disturbed by other load on the machine"
        )
    if ext_min < OVERHEAD_S:
        return (
            f"tiny case ({markdown.fmt_time(ext_min)} at best): fixed per-call costs dominate (op dispatch, input "
            "checks, padded input copies; for fwd+bwd also the Python autograd of three custom ops)"
        )
    if pass_ == "fwd+bwd":
        return (
            "fwd+bwd runs the two-op path: E and A (2·B·HW·(H+W−1) elements) are materialised and padded, "
            f"while {best} uses MKL GEMMs, which reach a higher FLOP rate than the hand-written kernels"
        )
    return f"{best} uses MKL GEMMs, which reach a higher FLOP rate than the hand-written kernels at this shape"


def fastest_sample(samples: Any, median: float) -> float:
    """The fastest timed run (``samples_s`` is ``;``-separated), or the median when absent."""
    try:
        values = [float(x) for x in str(samples).split(";") if x]
    except ValueError:
        values = []
    return min(values) if values else median


def section(out: Path, env: dict[str, Any]) -> list[str]:
    _, perf, _ = markdown.load(out)
    if perf.empty or "mechanism" not in perf:
        return []
    perf = perf[(perf["mechanism"] == "ccnet")]
    if perf.empty or "ext" not in set(perf["impl"]):
        return []
    lines = ["## CCNet: compiled extension", ""]
    lines += [
        "Speedup = other impl's median / ext median (> 1: ext is faster). `best` is the fastest of "
        + ", ".join(f"`{b}`" for b in BASELINES)
        + " by median; `min` columns are the fastest single runs (robust to other load on the machine). "
        "Inference (`fwd`) uses the fused op; `fwd+bwd` ca_weight, ca_softmax and ca_map. See docs/ccnet.md.",
        "",
    ]
    rows = []
    notes = []
    samples_col = "samples_s" if "samples_s" in perf else None
    for (device, dtype, pass_, case), g in perf.groupby(["device", "dtype", "pass", "case"], sort=True):
        med = dict(zip(g["impl"], g["median_s"], strict=True))
        if "ext" not in med or not med["ext"] > 0:
            continue
        mins = {
            impl: fastest_sample(sample, m)
            for impl, sample, m in zip(
                g["impl"], g[samples_col] if samples_col else g["median_s"], g["median_s"], strict=True
            )
        }
        ext_s = float(med["ext"])
        others = {b: float(med[b]) for b in BASELINES if b in med and med[b] > 0}
        best = min(others, key=lambda b: others[b]) if others else None
        row: dict[str, Any] = {
            "case": markdown.short_case(case),
            "device": device,
            "dtype": dtype,
            "pass": pass_,
            "ext": markdown.fmt_time(ext_s),
            "vs vectorized": f"{others['vectorized'] / ext_s:.2f}×" if "vectorized" in others else "–",
            "vs best": f"{others[best] / ext_s:.2f}× ({best})" if best else "–",
            "ext min": markdown.fmt_time(mins["ext"]),
            "best min": markdown.fmt_time(min(mins[b] for b in others)) if others else "–",
        }
        rows.append(row)
        if best is not None and others[best] < ext_s:
            reason = why_slower(pass_, ext_s, mins["ext"], best, mins[best])
            notes.append(f"- `{row['case']}` {dtype} {pass_}: slower than {best} — {reason}")
    lines += markdown.table(pd.DataFrame(rows))
    if notes:
        lines += ["**Why** (cases where ext's median is not the fastest):", "", *notes, ""]
    else:
        lines += ["ext is at least as fast as every other impl at every measured case.", ""]
    lines += memory_lines(perf)
    return lines


def memory_lines(perf: pd.DataFrame) -> list[str]:
    """Fused inference peak next to the attention map it never stores: O(B·C·H·W), not O(B·HW·(H+W))."""
    fwd = perf[(perf["pass"] == "fwd") & (perf["impl"].isin(["ext", "vectorized"]))]
    if fwd.empty or fwd["peak_bytes"].isna().all():
        return []
    lines = [
        "### Fused inference memory",
        "",
        "Peak extra bytes of one `fwd` call (output included; CPU numbers from allocator events) next to the "
        "analytic attention map [B, H+W−1, H, W] and the output [B, C, H, W]. The fused op keeps only one block "
        "of rows' energies per thread, so its peak follows the output (plus padded input copies), "
        "not the map.",
        "",
    ]
    rows = []
    for (device, dtype, case), g in fwd.groupby(["device", "dtype", "case"], sort=True):
        peak = dict(zip(g["impl"], g["peak_bytes"], strict=True))
        model = g["model_bytes"].dropna()
        shape = dict(kv.split("=") for kv in markdown.short_case(case).split(","))
        size = 8 if dtype == "float64" else 2 if dtype in ("float16", "bfloat16") else 4
        output = size * int(shape["B"]) * int(shape["C"]) * int(shape["H"]) * int(shape["W"])
        rows.append(
            {
                "case": markdown.short_case(case),
                "device": device,
                "dtype": dtype,
                "ext fused peak": markdown.fmt_bytes(peak.get("ext")),
                "vectorized peak": markdown.fmt_bytes(peak.get("vectorized")),
                "attention map": markdown.fmt_bytes(float(model.iloc[0]) if len(model) else None),
                "output": markdown.fmt_bytes(output),
                "ext peak / output": f"{peak['ext'] / output:.1f}" if peak.get("ext") == peak.get("ext") else "–",
            }
        )
    return lines + markdown.table(pd.DataFrame(rows))


def register() -> None:
    if section not in markdown.SECTIONS:
        markdown.SECTIONS.append(section)


register()
