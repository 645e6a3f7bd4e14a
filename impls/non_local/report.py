"""Report section for the non-local and DANet suites: ext vs vectorized, speed and memory.

Appended to ``attnbench.report.markdown.SECTIONS``; renders only when the result
folder's perf.csv has ext and vectorized rows of ``nonlocal``, ``danet.pam`` or
``danet.cam``. For each shape and pass it shows both medians, the speed-up, the
peak extra memory of each (``fwd`` runs under ``torch.no_grad()``, where the ext
takes its memory-lean path) and their ratio, then one line per shape where the
ext is slower, with the likely reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.report import markdown
from attnbench.report.markdown import fmt_bytes, fmt_time, short_case, table

MECHANISMS = ("nonlocal", "danet.pam", "danet.cam")
SMALL_S = 2e-4  # below this, per-call overhead (op dispatch, casts, tile loop) dominates
SMALL_FLOPS = 2e7  # below this (the cost model's count), so does it: ~1 ms of fwd+bwd overhead vs <0.5 ms of math


def _why_slower(mech: str, case: str, flops: float, vec_s: float, pass_: str) -> str:
    if vec_s < SMALL_S or flops < SMALL_FLOPS:
        return "tiny problem: fixed per-call overhead (op dispatch, flattening, tile loop) dominates"
    if "mode=dot" in case or "mode=concat" in case:
        return (
            "the ext's dot (associative) and concat (sorted sweep) forms do O((N+M)·C) work and never form N×M; "
            "slower only where that work is small next to the per-call overhead"
        )
    if mech == "danet.cam":
        return (
            "same two BLAS products as vectorized; the C×C row softmax between them uses scalar exp "
            "(C² exps against C²·HW multiply-adds), so the two differ by noise and that softmax"
        )
    if pass_ == "fwd+bwd":
        if mech == "nonlocal" and _keeps_scores(case):
            return (
                "with autograd the ext keeps the scores for the backward here, so both do the same products; "
                "what is left is the tiled forward's per-tile calls against one batched matmul (parity, noise)"
            )
        return (
            "the flash-style backward recomputes the scores θᵀφ tile by tile instead of keeping the N×M matrix: "
            "4·Ck + 3·Cv multiply-adds per (query, key) pair against 3·Ck + 3·Cv (7/6 at Ck = Cv); it pays off "
            "once N×M no longer fits in cache"
        )
    return (
        "small map: the memory-lean forward makes one BLAS call per key tile plus an online-softmax rescale, "
        "where the vectorized impl makes one batched matmul on a matrix that still fits in cache"
    )


def _keeps_scores(case: str) -> bool:
    """Whether the non-local ext keeps its scores for the backward at this case (float32, CPU)."""
    from impls.non_local.ext import KEEP_SCORES_MAX_BYTES, KEEP_SCORES_MIN_CK

    params = dict(kv.split("=", 1) for kv in short_case(case).split(",") if "=" in kv)
    try:
        B, Ck, H, W, Hk, Wk = (int(params[k]) for k in ("B", "Ck", "H", "W", "Hk", "Wk"))
    except (KeyError, ValueError):
        return False
    return Ck >= KEEP_SCORES_MIN_CK and B * H * W * Hk * Wk * 4 <= KEEP_SCORES_MAX_BYTES


def _flops(row: pd.Series) -> float:
    """The cost model's flop count of the row (inf when perf.csv has none)."""
    for impl in ("vectorized", "ext"):
        v = row.get(("flops", impl))
        if v is not None and v == v:
            return float(v)
    return float("inf")


def section(out: Path, env: dict[str, Any]) -> list[str]:
    path = out / "perf.csv"
    if not path.exists():
        return []
    perf = pd.read_csv(path)
    if perf.empty or "mechanism" not in perf:
        return []
    perf = perf[perf["mechanism"].isin(MECHANISMS) & perf["impl"].isin(["ext", "vectorized"])]
    if perf.empty or set(perf["impl"]) != {"ext", "vectorized"}:
        return []
    keys = ["mechanism", "case", "dtype", "device", "pass"]
    values = ["median_s", "peak_bytes"] + (["flops"] if "flops" in perf else [])
    wide = perf.pivot_table(index=keys, columns="impl", values=values, aggfunc="first")
    wide = wide.dropna(subset=[("median_s", "ext"), ("median_s", "vectorized")])
    if wide.empty:
        return []
    rows, misses = [], []
    for key, r in wide.iterrows():
        mech, case, dtype, device, pass_ = key  # type: ignore[misc]
        vec_s, ext_s = float(r[("median_s", "vectorized")]), float(r[("median_s", "ext")])
        vec_b, ext_b = r.get(("peak_bytes", "vectorized")), r.get(("peak_bytes", "ext"))
        ratio = (
            f"{float(vec_b) / float(ext_b):.1f}×"
            if vec_b == vec_b and ext_b == ext_b and ext_b and float(ext_b) > 0
            else "–"
        )
        rows.append(
            {
                "mechanism": mech,
                "case": short_case(case),
                "dtype": dtype,
                "pass": pass_,
                "vectorized": fmt_time(vec_s),
                "ext": fmt_time(ext_s),
                "speed-up": f"{vec_s / ext_s:.2f}×" if ext_s > 0 else "–",
                "peak vectorized": fmt_bytes(vec_b),
                "peak ext": fmt_bytes(ext_b),
                "memory saved": ratio,
            }
        )
        if ext_s > vec_s and dtype == "float32":
            misses.append(
                f"- `{mech}` {short_case(case)} {dtype} {pass_}: ext {fmt_time(ext_s)} vs vectorized "
                f"{fmt_time(vec_s)} — {_why_slower(mech, case, _flops(r), vec_s, pass_)}"
            )
    lines = [
        "## Non-local / DANet: ext vs vectorized",
        "",
        "Peak extra memory of the `fwd` pass (run under `torch.no_grad()`): the ext's softmax paths tile the keys "
        "with an online softmax and never hold the N×M attention matrix (extra memory linear in H·W); the "
        "vectorized impls hold scores and probabilities (2·B·N·M). `fwd+bwd` peaks include the backward. "
        "CPU peaks count allocations through c10's allocator (a lower bound).",
        "",
    ]
    lines += table(pd.DataFrame(rows))
    if misses:
        lines += ["### Where the ext is slower (float32)", "", *misses, ""]
    else:
        lines += ["The ext is at least as fast as the vectorized impl at every float32 shape measured.", ""]
    return lines


if section not in markdown.SECTIONS:
    markdown.SECTIONS.append(section)
