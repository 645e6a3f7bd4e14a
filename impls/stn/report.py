"""A report.md section for the spatial transformer: ext against vectorized and torch's own ops.

Registered in ``attnbench.report.markdown.SECTIONS``; renders only when the
results hold stn timing rows. Per case and pass (float32 first): the medians of
the vectorized impl, the ext and the torch peer (``F.grid_sample`` /
``F.affine_grid``), the ext's speed-up over vectorized and its time relative to
torch's (< 1: the ext is faster).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.report import markdown

PEERS = {"stn.bilinear_sample": "grid_sample", "stn.affine_grid": "affine_grid"}


def stn_section(out: Path, env: dict[str, Any]) -> list[str]:
    """Markdown lines: ext vs vectorized vs torch, per case, dtype and pass."""
    _, perf, _ = markdown.load(out)
    if perf.empty or "mechanism" not in perf:
        return []
    perf = perf[perf["mechanism"].isin(list(PEERS))]
    if perf.empty:
        return []
    rows = []
    for (mech, case, dtype, pass_), group in perf.groupby(["mechanism", "case", "dtype", "pass"], sort=False):
        median = dict(zip(group["impl"], group["median_s"], strict=False))
        vec, ext, peer = median.get("vectorized"), median.get("ext"), median.get(PEERS[mech])
        if ext is None:
            continue
        rows.append(
            {
                "core": mech.split(".", 1)[1],
                "case": case.split("/", 2)[-1],
                "dtype": dtype,
                "pass": pass_,
                "vectorized": markdown.fmt_time(vec) if vec is not None else "–",
                "ext": markdown.fmt_time(ext),
                "torch": markdown.fmt_time(peer) if peer is not None else "–",
                "ext speed-up vs vectorized": f"{vec / ext:.1f}×" if vec is not None and ext > 0 else "–",
                "ext / torch time": f"{ext / peer:.2f}" if peer is not None and peer > 0 else "–",
            }
        )
    if not rows:
        return []
    table = pd.DataFrame(rows)
    table["_order"] = table["dtype"].map(lambda d: 0 if d == "float32" else 1)
    table = table.sort_values(["_order", "core", "case", "pass"], kind="stable").drop(columns="_order")
    return [
        "## Spatial transformer: ext vs vectorized vs torch",
        "",
        "Median latency per case. `torch` is `F.grid_sample` (sampler) or `F.affine_grid`; "
        "`ext / torch time` < 1 means the compiled ext is faster than torch's own kernel.",
        "",
        *markdown.table(table),
    ]


if stn_section not in markdown.SECTIONS:
    markdown.SECTIONS.append(stn_section)
