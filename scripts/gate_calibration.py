"""Measures the regression gate's false-alarm rate (A/A) and its power on a 25 % slowdown.

    python scripts/gate_calibration.py --repeats 20 --out docs/gate_calibration.md

Each repeat runs suites/ccnet_gate twice with the same code (A/A: any SLOWER is
a false alarm) and once with examples/regressions/ccnet_25pct_slower.py, which
makes the built-in `vectorized` impl 25 % slower in each pass (a detection must
say SLOWER, exit 3). Runs are in-process and one after another, as in a CI job.
Both comparisons hold the baseline's code (the same code; the built-in that the
user file replaces), so their verdicts come from interleaved re-measurement
(docs/ci.md); the verdicts against the stored samples alone are counted too.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from scipy import stats

from attnbench import cli
from attnbench.registry import REGISTRY

ROOT = Path(__file__).resolve().parent.parent


def verdicts(folder: Path) -> tuple[list[str], list[str]]:
    """(final verdicts, verdicts against the stored baseline samples alone) of the vectorized rows."""
    with open(folder / "compare.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["impl"] == "vectorized"]
    stored = [r["note"].split(" ", 1)[0] if "interleaved" in r["note"] else r["verdict"] for r in rows]
    return [r["verdict"] for r in rows], stored


def ci(k: int, n: int) -> str:
    lo = stats.beta.ppf(0.025, k, n - k + 1) if k else 0.0
    hi = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return f"[{lo:.2f}, {hi:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--suite", default=str(ROOT / "suites" / "ccnet_gate"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "gate_calibration.md"))
    args = parser.parse_args()
    slower = ROOT / "examples" / "regressions" / "ccnet_25pct_slower.py"
    REGISTRY.discover()
    builtin = dict(REGISTRY.impls["ccnet"])
    aa_alarm = aa_exit = slow_hit = slow_exit = stored_aa_alarm = stored_slow_hit = 0
    rows = []
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        common = ["--only", "vectorized", "--quiet", "--isolate", "none"]
        for i in range(args.repeats):
            base, same, slow = t / f"base{i}", t / f"same{i}", t / f"slow{i}"
            cli.main(["run", args.suite, "--out", str(base), *common])
            code_aa = cli.main(["run", args.suite, "--out", str(same), "--baseline", str(base), *common])
            code_slow = cli.main(
                ["run", args.suite, "--out", str(slow), "--baseline", str(base), "--impl", str(slower), *common]
            )
            REGISTRY.impls["ccnet"] = dict(builtin)  # the slower file replaced `vectorized`: restore
            (v_aa, s_aa), (v_slow, s_slow) = verdicts(same), verdicts(slow)
            stored_aa_alarm += "SLOWER" in s_aa
            stored_slow_hit += all(v == "SLOWER" for v in s_slow)
            aa_alarm += "SLOWER" in v_aa
            aa_exit += code_aa == 3
            slow_hit += all(v == "SLOWER" for v in v_slow)
            slow_exit += code_slow == 3
            rows.append(
                f"| {i + 1} | {', '.join(v_aa)} (exit {code_aa}) | {', '.join(v_slow)} (exit {code_slow}) "
                f"| {', '.join(s_aa)} | {', '.join(s_slow)} |"
            )
    n = args.repeats
    lines = [
        "# Regression gate calibration",
        "",
        f"`python scripts/gate_calibration.py --repeats {n}` on this machine, suite `suites/ccnet_gate` "
        f"(vectorized impl, {int(time.time() - start)} s in all). A/A: the same code twice; slowdown: "
        "`examples/regressions/ccnet_25pct_slower.py` (+25 % spin in each pass). Final verdicts come from the "
        "interleaved re-measurement of baseline and new code (docs/ci.md); the last two columns show what the "
        "stored samples alone would have said.",
        "",
        "| measure | result | 95 % CI |",
        "|---|---|---|",
        f"| A/A false alarms (any SLOWER row) | {aa_alarm}/{n} | {ci(aa_alarm, n)} |",
        f"| A/A runs exiting 3 | {aa_exit}/{n} | {ci(aa_exit, n)} |",
        f"| 25 % slowdown detected on every case (SLOWER) | {slow_hit}/{n} | {ci(slow_hit, n)} |",
        f"| 25 % slowdown runs exiting 3 | {slow_exit}/{n} | {ci(slow_exit, n)} |",
        f"| *stored samples alone:* A/A false alarms | {stored_aa_alarm}/{n} | {ci(stored_aa_alarm, n)} |",
        f"| *stored samples alone:* slowdown SLOWER on every case | {stored_slow_hit}/{n} | {ci(stored_slow_hit, n)} |",
        "",
        "Targets: no SLOWER and exit 0 in at least 19 of 20 A/A repeats; SLOWER and exit 3 in at least 19 of 20 "
        "slowdown repeats.",
        "",
        "| repeat | A/A verdicts per case | slowdown verdicts per case | A/A, stored only | slowdown, stored only |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines[:14]))


if __name__ == "__main__":
    main()
