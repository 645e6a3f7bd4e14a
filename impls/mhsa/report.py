"""The mhsa sections of report.md: how the peers differ, and the fused ext's cost.

Rendered only when the results hold mhsa rows. The peer behaviour is probed
when the report is written (torch version stated), the cost table comes from
perf.csv: at the largest float32 shapes, the fused ext's time against SDPA and
the vectorized impl (ratios < 1: the ext is faster) and each one's peak extra
memory of the forward pass (the vectorized impl keeps B·h·L·S logits and
probabilities; the ext only O(B·h·L·dv)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from attnbench.report import markdown
from impls.mhsa import peers


def peer_lines() -> list[str]:
    """Markdown table of what each peer does on a fully masked row, probed now."""
    rows = []
    for dtype in (torch.float64, torch.float32):
        name = str(dtype).replace("torch.", "")
        for call, label, need_weights in (
            ("sdpa", "F.scaled_dot_product_attention (attn_mask True = attend)", False),
            ("nn_mha", "nn.MultiheadAttention, need_weights=False", False),
            ("nn_mha", "nn.MultiheadAttention, need_weights=True (its default)", True),
        ):
            b = peers.probe(call, "cpu", dtype, need_weights=need_weights)
            rows.append({"peer": label, "dtype": name, "output": b.output, "gradient": b.gradient})
        nan = peers.causal_zero_scale_nan("cpu", dtype)
        rows.append(
            {
                "peer": "F.scaled_dot_product_attention, is_causal=True, scale=0",
                "dtype": name,
                "output": "NaN rows" if nan else "finite",
                "gradient": "–",
            }
        )
    lines = [
        "## mhsa: how the peers differ",
        "",
        f"Probed on the CPU with torch {torch.__version__} when this report was written (canonical: a fully "
        "masked row gives output 0 and gradient exactly 0). The adapters pass SDPA the combined *allowed* mask "
        "(`~key_padding_mask & tril`, its polarity is the opposite of ours, and it refuses `attn_mask` together "
        "with `is_causal`) and the scale explicitly; nn.MultiheadAttention gets identity projections, our mask "
        "polarity, `need_weights=False`, q pre-scaled by `scale·√d` for a non-default scale, and no case with "
        "dv ≠ d. Where a probe shows anything but 0/0 the adapter un-masks those rows and zeroes them after "
        "the peer; SDPA's `is_causal` is replaced by an explicit mask where `scale=0` gives NaN.",
        "",
    ]
    return lines + markdown.table(pd.DataFrame(rows))


def cost_lines(perf: pd.DataFrame, largest: int = 3) -> list[str]:
    """ext vs sdpa vs vectorized at the ``largest`` float32 CPU shapes (by FLOPs), both passes."""
    mine = perf[(perf["mechanism"] == "mhsa") & (perf["dtype"] == "float32") & (perf["device"] == "cpu")]
    mine = mine[mine["impl"].isin(["ext", "sdpa", "vectorized"])]
    if mine.empty or "ext" not in set(mine["impl"]):
        return []
    by_case = mine.groupby("case")["flops"].max().sort_values(ascending=False)
    rows = []
    for case in by_case.index[:largest]:
        for pass_ in ("fwd", "fwd+bwd"):
            sel = mine[(mine["case"] == case) & (mine["pass"] == pass_)].set_index("impl")
            if "ext" not in sel.index:
                continue

            def get(impl: str, col: str, sel: pd.DataFrame = sel) -> float:
                return float(sel.loc[impl, col]) if impl in sel.index else float("nan")

            ext_t, sdpa_t, vec_t = get("ext", "median_s"), get("sdpa", "median_s"), get("vectorized", "median_s")
            rows.append(
                {
                    "case": markdown.short_case(case),
                    "pass": pass_,
                    "ext": markdown.fmt_time(ext_t),
                    "sdpa": markdown.fmt_time(sdpa_t),
                    "vectorized": markdown.fmt_time(vec_t),
                    "ext/sdpa": f"{ext_t / sdpa_t:.2f}" if sdpa_t == sdpa_t else "–",
                    "ext/vectorized": f"{ext_t / vec_t:.2f}" if vec_t == vec_t else "–",
                    "peak ext": markdown.fmt_bytes(get("ext", "peak_bytes")),
                    "peak sdpa": markdown.fmt_bytes(get("sdpa", "peak_bytes")),
                    "peak vectorized": markdown.fmt_bytes(get("vectorized", "peak_bytes")),
                }
            )
    if not rows:
        return []
    return [
        "## mhsa: fused ext vs SDPA vs vectorized (float32, CPU, largest shapes)",
        "",
        "Median latency; ratios below 1 mean the fused ext is faster. Peak = extra bytes allocated through "
        "c10's allocator during the pass (CPU: a lower bound, scratch kept in std::vector is not seen).",
        "",
        *markdown.table(pd.DataFrame(rows)),
    ]


def section(out_dir: Path, env: dict[str, Any]) -> list[str]:
    checks, perf, _ = markdown.load(out_dir)
    if checks.empty or "mhsa" not in set(checks["mechanism"]):
        return []
    lines = peer_lines()
    if not perf.empty:
        lines += cost_lines(perf)
    return lines


if section not in markdown.SECTIONS:
    markdown.SECTIONS.append(section)
