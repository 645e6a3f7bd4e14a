"""PNG plots for report.md (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def latency_plot(perf: pd.DataFrame, folder: Path, stem: str) -> Path | None:
    """Grouped bars: median latency per case and impl, IQR as error bars, log scale."""
    if perf.empty:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    cases = list(dict.fromkeys(perf["case"]))
    impls = list(dict.fromkeys(perf.sort_values("kind")["impl"]))
    width = 0.8 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cases) + 2), 4.2))
    x = np.arange(len(cases))
    for i, impl in enumerate(impls):
        sub = perf[perf["impl"] == impl].set_index("case")
        med = [float(sub.loc[c, "median_s"]) if c in sub.index else np.nan for c in cases]
        iqr = [float(sub.loc[c, "iqr_s"]) if c in sub.index else 0.0 for c in cases]
        ax.bar(x + (i - (len(impls) - 1) / 2) * width, med, width, yerr=[[0] * len(iqr), iqr], label=impl, capsize=2)
    ax.set_yscale("log")
    ax.set_ylabel("median latency per call [s] (log)")
    labels = [c.split("/", 2)[-1] for c in cases]
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
    ax.set_xlabel("case")
    ax.set_title(stem.replace("_", " "))
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path = folder / f"latency_{stem}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
