"""Interleaved A/B timing of two impls over a suite's grid (default: vectorized vs ext).

`attnbench run` times each (impl, case, pass) on its own, one after another. On a
shared VM whose speed drifts by up to 2x over seconds, the ratio of two such medians
at one shape can be off by that much (SE's full grid: ext/vectorized forward ratios
of 0.64-0.81 at shapes where interleaved timing gives 1.08-3.3). Here, for every
case and pass, the two impls run alternately on the same inputs (A B, B A, ...,
`attnbench.measure.timing.time_interleaved`, stopping on the suite profile's timing
rules), so a slow period hits both alike. Prints a Markdown table (medians and the
ratio A/B, > 1: B is faster) and a summary; `--csv` also writes the rows.

    taskset -c 1 .venv/bin/python scripts/bench_pairs.py suites/se --profile full --threads 1
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

from attnbench.cases import DTYPES
from attnbench.measure.timing import time_interleaved
from attnbench.registry import REGISTRY
from attnbench.runner import _pass_callable, case_inputs, core_function
from attnbench.suite import load_suite


def _fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", help="suite folder, e.g. suites/se")
    parser.add_argument("--profile", default="full")
    parser.add_argument("--a", default="vectorized", help="impl A (the baseline of the ratio)")
    parser.add_argument("--b", default="ext", help="impl B")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--passes", default="fwd,fwd+bwd")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--match", default="", help="only cases whose id contains this text")
    parser.add_argument("--min-runs", type=int, help="override the profile's min_runs (pairs per case and pass)")
    parser.add_argument("--csv", type=Path, help="also write the rows here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    REGISTRY.discover()
    suite = load_suite(args.suite)
    profile = suite.profile(args.profile)
    timing = profile.timing if args.min_runs is None else replace(profile.timing, min_runs=args.min_runs)
    passes = [p for p in args.passes.split(",") if p]
    rows: list[dict[str, object]] = []
    print(f"suite {suite.name}, profile {profile.name}, {args.dtype}, {args.threads} thread(s)", end="")
    print(f", A = {args.a}, B = {args.b}")
    print("\n| case | pass | A | B | A/B |\n|---|---|---|---|---|")
    for case in profile.cases:
        if args.match not in case.shape_id:
            continue
        impls = REGISTRY.impls[case.mechanism]
        a, b = impls[args.a], impls[args.b]
        skip = a.unsupported_reason(case, args.dtype, "cpu") or b.unsupported_reason(case, args.dtype, "cpu")
        if skip:
            print(f"| {case.param_str} | – | skipped: {skip} | | |")
            continue
        inputs = case_inputs(case).to(DTYPES[args.dtype], "cpu")
        for pass_ in passes:
            fa, fb = (_pass_callable(pass_, core_function(impl, case), inputs, case, impl.name) for impl in (a, b))
            ta, tb = time_interleaved((fa, fb), timing)
            ma, mb = statistics.median(ta.samples), statistics.median(tb.samples)
            rows.append(
                {"case": case.shape_id, "pass": pass_, "a_s": ma, "b_s": mb, "ratio": ma / mb, "runs": len(ta.samples)}
            )
            print(f"| {case.param_str} | {pass_} | {_fmt(ma)} | {_fmt(mb)} | {ma / mb:.2f} |", flush=True)
    print()
    for pass_ in passes:
        ratios = [float(r["ratio"]) for r in rows if r["pass"] == pass_]  # type: ignore[arg-type]
        if ratios:
            print(
                f"- {pass_}: B ≥ A at {sum(r >= 1 for r in ratios)}/{len(ratios)} cases, "
                f"≥ 0.95 at {sum(r >= 0.95 for r in ratios)}, min {min(ratios):.2f}, "
                f"median {statistics.median(ratios):.2f}"
            )
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["case", "pass", "a_s", "b_s", "ratio", "runs"])
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
