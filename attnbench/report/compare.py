"""Regression verdicts between two result sets (``attnbench compare``, ``run --baseline``).

Rows match by (mechanism, impl, case, dtype, device, pass). For each pair:

- **time**: the two runs' per-call samples are compared with a Mann-Whitney U
  test (two-sided) and the ratio of medians. SLOWER / FASTER need both a
  significant test (p < alpha) and an effect beyond ``min_effect``; an effect
  within ``min_effect`` is SAME whatever the p-value (a real but negligible
  difference); a large effect without significance is AMBIGUOUS, and
  ``run --baseline`` re-measures those rows before the verdict is final.
  Where both runs carry callgrind instruction counts, those decide instead
  (deterministic; threshold ``instr_threshold``).
- **memory**: peak bytes grown by more than ``memory_threshold`` is a memory
  regression.
- **correctness**: any check that passed in the baseline and fails now is
  always reported and makes the exit code 1, even when the impl got faster.

Timings from different machines, torch versions or thread counts are not
comparable: the gate warns and refuses perf verdicts unless forced.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import stats

from attnbench.errors import UsageError
from attnbench.measure.env import COMPARABLE_KEYS
from attnbench.report.csv import read_rows

DEFAULTS = {"min_effect": 0.10, "alpha": 0.01, "memory_threshold": 0.10, "remeasure": 2, "instr_threshold": 0.01}
KEY = ("mechanism", "impl", "case", "dtype", "device", "pass")
VERDICTS = ("FASTER", "SLOWER", "SAME", "AMBIGUOUS", "NEW", "GONE", "INCOMPARABLE")


@dataclass
class PerfVerdict:
    mechanism: str
    impl: str
    case: str
    dtype: str
    device: str
    pass_: str
    verdict: str
    base_median_s: float
    new_median_s: float
    ratio: float
    p_value: float
    base_runs: int
    new_runs: int
    base_peak_bytes: float
    new_peak_bytes: float
    memory_verdict: str
    basis: str
    note: str = ""


@dataclass(frozen=True)
class Results:
    checks: list[dict[str, str]]
    perf: list[dict[str, str]]
    env: dict[str, Any]
    where: str


def load_results(path: Path) -> Results:
    """A result folder, a single perf.csv / checks.csv, or a pytest-benchmark JSON file."""
    if path.is_file() and path.suffix == ".json":
        from attnbench.report import benchmark_json

        perf, env = benchmark_json.load(path)
        return Results([], perf, env, str(path))
    if path.is_dir():
        folder = path
        checks, perf = read_rows(folder / "checks.csv"), read_rows(folder / "perf.csv")
    elif path.is_file() and path.suffix == ".csv":
        folder = path.parent
        rows = read_rows(path)
        is_perf = bool(rows) and "median_s" in rows[0]
        checks = [] if is_perf else rows
        perf = rows if is_perf else []
    else:
        raise UsageError(f"{path}: not a result folder or CSV file")
    if not checks and not perf:
        raise UsageError(f"{path}: no results (expected checks.csv and/or perf.csv)")
    env_path = folder / "env.json"
    env = json.loads(env_path.read_text()) if env_path.exists() else {}
    return Results(checks, perf, env, str(path))


def samples(row: dict[str, str]) -> list[float]:
    text = row.get("samples_s") or ""
    values = [float(x) for x in text.split(";") if x]
    return values or [float(row["median_s"])]


def _num(row: dict[str, str] | None, key: str) -> float:
    if row is None:
        return math.nan
    try:
        return float(row.get(key) or "nan")
    except ValueError:
        return math.nan


def time_verdict(
    base: Sequence[float], new: Sequence[float], min_effect: float, alpha: float
) -> tuple[str, float, float]:
    """(verdict, ratio of medians new/base, Mann-Whitney p-value)."""
    mb, mn = float(sorted(base)[len(base) // 2]), float(sorted(new)[len(new) // 2])
    ratio = mn / mb if mb > 0 else math.inf
    if len(base) >= 2 and len(new) >= 2:
        p = float(stats.mannwhitneyu(new, base, alternative="two-sided").pvalue)
    else:
        p = math.nan
    if abs(math.log(ratio)) <= math.log1p(min_effect):
        return "SAME", ratio, p
    if p == p and p < alpha:
        return ("SLOWER" if ratio > 1 else "FASTER"), ratio, p
    return "AMBIGUOUS", ratio, p


def environment_mismatch(base_env: dict[str, Any], new_env: dict[str, Any]) -> list[str]:
    """Keys of the fingerprint that differ (timings across them are not comparable)."""
    out = []
    for k in COMPARABLE_KEYS:
        a, b = base_env.get(k), new_env.get(k)
        if a is not None and b is not None and a != b:
            out.append(f"{k}: {a} → {b}")
    return out


def compare_perf(base: Results, new: Results, settings: dict[str, float], comparable: bool) -> list[PerfVerdict]:
    def index(rows: list[dict[str, str]]) -> dict[tuple[str, ...], dict[str, str]]:
        return {tuple(r.get(k, "") for k in KEY): r for r in rows}

    b_idx, n_idx = index(base.perf), index(new.perf)
    verdicts = []
    for key in sorted(set(b_idx) | set(n_idx)):
        b, n = b_idx.get(key), n_idx.get(key)
        mech, impl, case, dtype, device, pass_ = key
        if b is None or n is None:
            verdict, ratio, p, basis = ("NEW" if b is None else "GONE"), math.nan, math.nan, "-"
        elif not comparable:
            verdict, ratio, p, basis = "INCOMPARABLE", _num(n, "median_s") / _num(b, "median_s"), math.nan, "-"
        elif b.get("instructions") and n.get("instructions"):
            ib, inn = float(b["instructions"]), float(n["instructions"])
            ratio, p, basis = inn / ib, 0.0, "callgrind instructions"
            thr = settings["instr_threshold"]
            verdict = "SAME" if abs(ratio - 1) <= thr else ("SLOWER" if ratio > 1 else "FASTER")
        else:
            verdict, ratio, p = time_verdict(samples(b), samples(n), settings["min_effect"], settings["alpha"])
            basis = "Mann-Whitney U on per-call samples"
        mem_b, mem_n = _num(b, "peak_bytes"), _num(n, "peak_bytes")
        mem_verdict = ""
        if mem_b == mem_b and mem_n == mem_n and b is not None and n is not None:
            grew = mem_n > mem_b * (1 + settings["memory_threshold"]) and mem_n - mem_b > 4096
            mem_verdict = "MEMORY REGRESSION" if grew else "ok"
        verdicts.append(
            PerfVerdict(
                mech,
                impl,
                case,
                dtype,
                device,
                pass_,
                verdict,
                _num(b, "median_s"),
                _num(n, "median_s"),
                ratio,
                p,
                len(samples(b)) if b else 0,
                len(samples(n)) if n else 0,
                mem_b,
                mem_n,
                mem_verdict,
                basis,
            )
        )
    return verdicts


def correctness_changes(base: Results, new: Results) -> list[dict[str, str]]:
    """Checks that passed in the baseline and fail (or error) now, and those fixed."""
    key = ("mechanism", "impl", "case", "dtype", "device", "check")
    b_idx = {tuple(r.get(k, "") for k in key): r for r in base.checks}
    changes = []
    for r in new.checks:
        k = tuple(r.get(x, "") for x in key)
        old = b_idx.get(k)
        if old is None:
            continue
        if old["status"] == "pass" and r["status"] in ("fail", "error"):
            changes.append({**dict(zip(key, k, strict=True)), "change": f"pass→{r['status']}", "detail": r["detail"]})
        elif old["status"] in ("fail", "error") and r["status"] == "pass":
            changes.append({**dict(zip(key, k, strict=True)), "change": f"{old['status']}→pass", "detail": ""})
    return changes


@dataclass
class GateResult:
    verdicts: list[PerfVerdict]
    correctness: list[dict[str, str]]
    mismatch: list[str]
    forced: bool

    @property
    def regressed(self) -> list[PerfVerdict]:
        return [v for v in self.verdicts if v.verdict == "SLOWER" or v.memory_verdict == "MEMORY REGRESSION"]

    @property
    def broke(self) -> list[dict[str, str]]:
        return [c for c in self.correctness if c["change"].startswith("pass→")]

    def exit_code(self) -> int:
        if self.broke:
            return 1
        return 3 if self.regressed else 0


Interleave = Callable[[PerfVerdict, dict[str, str]], tuple[list[float], list[float]] | None]


def _row_of(rows: list[dict[str, str]], v: PerfVerdict) -> dict[str, str]:
    key = (v.mechanism, v.impl, v.case, v.dtype, v.device, v.pass_)
    return next(r for r in rows if tuple(r.get(k, "") for k in KEY) == key)


def evaluate(
    base: Results,
    new: Results,
    settings: dict[str, float] | None = None,
    force: bool = False,
    remeasure: Callable[[PerfVerdict], list[float] | None] | None = None,
    interleave: Interleave | None = None,
) -> GateResult:
    """Compares two result sets.

    ``interleave(verdict, base_row)`` re-measures the baseline's code and the new code
    alternately, or returns ``None`` when this process does not hold the baseline's code
    (its ``code`` hash). Where it can, the interleaved samples decide every row: a
    shared machine drifts by more than the effects sought between two runs, never
    within one alternation. ``remeasure`` adds samples of the new code to
    rows still AMBIGUOUS (up to ``remeasure`` rounds).
    """
    s = {**DEFAULTS, **(settings or {})}
    mismatch = environment_mismatch(base.env, new.env)
    comparable = force or not mismatch
    verdicts = compare_perf(base, new, s, comparable)
    for v in verdicts:
        if v.verdict not in ("AMBIGUOUS", "SLOWER", "FASTER", "SAME") or v.basis == "callgrind instructions":
            continue
        if interleave is not None:
            pair = interleave(v, _row_of(base.perf, v))
            if pair:
                old, now = list(pair[0]), list(pair[1])
                first = f"{v.verdict} ({_pct(v.ratio)}) against the stored samples"
                v.verdict, v.ratio, v.p_value = time_verdict(old, now, s["min_effect"], s["alpha"])
                rounds = 1
                while v.verdict == "AMBIGUOUS" and rounds <= int(s["remeasure"]):  # pool more alternations
                    more = interleave(v, _row_of(base.perf, v))
                    if not more:
                        break
                    old += more[0]
                    now += more[1]
                    rounds += 1
                    v.verdict, v.ratio, v.p_value = time_verdict(old, now, s["min_effect"], s["alpha"])
                v.base_median_s, v.new_median_s = float(np.median(old)), float(np.median(now))
                v.base_runs, v.new_runs = len(old), len(now)
                v.basis = "Mann-Whitney U on baseline code and new code measured interleaved"
                v.note = f"{first}; re-measured interleaved with the baseline's code ({rounds} round(s))"
                continue
        rounds = int(s["remeasure"])
        while remeasure is not None and v.verdict == "AMBIGUOUS" and rounds > 0:
            rounds -= 1
            extra = remeasure(v)
            if not extra:
                break
            b_row, n_row = _row_of(base.perf, v), _row_of(new.perf, v)
            n_row["samples_s"] = ";".join(f"{x:.6g}" for x in samples(n_row) + extra)
            v.verdict, v.ratio, v.p_value = time_verdict(samples(b_row), samples(n_row), s["min_effect"], s["alpha"])
            v.new_runs = len(samples(n_row))
            v.note = "re-measured"
    return GateResult(verdicts, correctness_changes(base, new), mismatch, force)


def write_outputs(result: GateResult, out: Path, base_where: str) -> None:
    """compare.csv and compare.md in ``out``; report.md gets a section if present."""
    out.mkdir(parents=True, exist_ok=True)
    fields = [f if f != "pass_" else "pass" for f in PerfVerdict.__dataclass_fields__]
    with open(out / "compare.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for v in result.verdicts:
            d = asdict(v)
            d["pass"] = d.pop("pass_")
            w.writerow(d)
    md = markdown(result, base_where)
    (out / "compare.md").write_text("\n".join(md), encoding="utf-8")
    report = out / "report.md"
    if report.exists():
        text = report.read_text(encoding="utf-8")
        marker = "## Comparison with baseline"
        if marker in text:
            text = text[: text.index(marker)]
        report.write_text(text.rstrip() + "\n\n" + "\n".join(md), encoding="utf-8")


def _pct(ratio: float) -> str:
    return "–" if ratio != ratio or math.isinf(ratio) else f"{(ratio - 1) * 100:+.1f}%"


def markdown(result: GateResult, base_where: str) -> list[str]:
    counts = {v: sum(1 for x in result.verdicts if x.verdict == v) for v in VERDICTS}
    lines = [
        "## Comparison with baseline",
        "",
        f"Baseline: `{base_where}`. " + ", ".join(f"{n} {v}" for v, n in counts.items() if n),
        "",
    ]
    if result.mismatch:
        lines += [
            "**Warning: the runs come from different environments** ("
            + "; ".join(result.mismatch)
            + "). "
            + (
                "Perf verdicts given anyway (--force)."
                if result.forced
                else "Perf verdicts refused (INCOMPARABLE); rerun both on one machine or pass --force."
            ),
            "",
        ]
    if result.broke:
        lines += [
            "### Correctness regressions",
            "",
            "| impl | case | dtype | check | change | detail |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {c['impl']} | {c['case']} | {c['dtype']} | {c['check']} | {c['change']} | {c['detail'][:120]} |"
            for c in result.broke
        ]
        lines.append("")
    if result.regressed:
        lines += [
            "### Regressions",
            "",
            "| impl | case | dtype | pass | time | p-value | peak memory | basis |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for v in result.regressed:
            mem = f"{_pct(v.new_peak_bytes / v.base_peak_bytes) if v.base_peak_bytes else '–'} ({v.memory_verdict})"
            lines.append(
                f"| {v.impl} | {v.case} | {v.dtype} | {v.pass_} | {v.verdict} {_pct(v.ratio)} | "
                f"{v.p_value:.2g} | {mem} | {v.basis} |"
            )
        lines.append("")
    lines += [
        "Verdicts: SLOWER/FASTER need p < alpha (Mann-Whitney U, two-sided) and a change beyond the minimum "
        "effect; SAME = change within it; AMBIGUOUS = large but not significant (re-measured by "
        "`run --baseline`). All rows in compare.csv.",
        "",
    ]
    return lines


def print_table(result: GateResult, console: Console) -> None:
    if result.mismatch:
        console.print(
            "[bold yellow]WARNING: baseline and new run come from different environments:[/] "
            + "; ".join(result.mismatch)
            + ("" if result.forced else " — perf verdicts refused (use --force to override)"),
            soft_wrap=True,
        )
    for c in result.broke:
        console.print(
            f"[red]correctness {c['change']}[/] {c['impl']} {c['case']} {c['dtype']} {c['check']}: {c['detail'][:160]}",
            soft_wrap=True,
        )
    counts = ", ".join(f"{n} {v}" for v in VERDICTS if (n := sum(1 for x in result.verdicts if x.verdict == v)))
    console.print(f"comparison: {counts or 'no perf rows'}")
    if result.regressed:
        t = Table(title="regressions", title_justify="left")
        for col in ("impl", "case", "dtype", "pass", "verdict", "change", "p-value", "memory"):
            t.add_column(col)
        for v in result.regressed:
            mem = v.memory_verdict if v.memory_verdict != "ok" else ""
            t.add_row(
                v.impl, v.case.split("/", 2)[-1], v.dtype, v.pass_, v.verdict, _pct(v.ratio), f"{v.p_value:.2g}", mem
            )
        console.print(t)


def gate(
    baseline: Path,
    out: Path,
    suite: Any,
    force: bool,
    console: Console,
    remeasure: Callable[[PerfVerdict], list[float] | None] | None = None,
    interleave: Interleave | None = None,
) -> tuple[bool, bool]:
    """``run --baseline``: returns (perf or memory regression, correctness regression)."""
    base = load_results(baseline)
    new = load_results(out)
    result = evaluate(base, new, dict(getattr(suite, "regression", {}) or {}), force, remeasure, interleave)
    write_outputs(result, out, str(baseline))
    print_table(result, console)
    return bool(result.regressed), bool(result.broke)


# -- attnbench compare BASE NEW ---------------------------------------------------------


def add_command(sub: Any) -> None:
    p = sub.add_parser("compare", help="regression verdict between two result sets (exit 3 on regression)")
    p.add_argument("base", help="baseline result folder or CSV")
    p.add_argument("new", help="new result folder or CSV")
    p.add_argument(
        "--min-effect",
        type=float,
        default=DEFAULTS["min_effect"],
        help="smallest relative time change that counts (default 0.10 = 10%%)",
    )
    p.add_argument("--alpha", type=float, default=DEFAULTS["alpha"], help="significance of the rank test")
    p.add_argument(
        "--memory-threshold",
        type=float,
        default=DEFAULTS["memory_threshold"],
        help="relative peak-memory growth that counts as a regression (default 0.10)",
    )
    p.add_argument("--force", action="store_true", help="give perf verdicts across different environments")
    p.add_argument("--out", metavar="DIR", help="where to write compare.csv/compare.md (default: NEW if a folder)")


def cmd_compare(args: argparse.Namespace) -> int:
    from attnbench.cli import console

    for name in ("min_effect", "alpha", "memory_threshold"):
        value = getattr(args, name)
        if not 0 <= value < 1:
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be in [0, 1)")
    base, new = load_results(Path(args.base)), load_results(Path(args.new))
    settings = {"min_effect": args.min_effect, "alpha": args.alpha, "memory_threshold": args.memory_threshold}
    result = evaluate(base, new, settings, args.force)
    out = Path(args.out) if args.out else (Path(args.new) if Path(args.new).is_dir() else Path(args.new).parent)
    write_outputs(result, out, args.base)
    print_table(result, console)
    console.print(f"details: {out}/compare.csv, {out}/compare.md")
    return result.exit_code()
