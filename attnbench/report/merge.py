"""Merge result folders (shards of one suite, or runs on several machines) into one.

Rows are keyed by their task and check, so a task present in two folders (a
retried shard) is kept once; the merged files equal an unsharded run's rows.
Every shard's env.json is kept under ``shards`` in the merged env.json, and a
warning is recorded when their fingerprints differ (timings not comparable).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnbench.errors import UsageError
from attnbench.report.csv import CHECK_HEADER, PERF_HEADER, read_rows

DONE_LOG = "tasks.done"


def _key(row: dict[str, str], perf: bool) -> tuple[str, ...]:
    extra = row.get("pass", "") if perf else row.get("check", "")
    task = row.get("task") or "|".join(row.get(k, "") for k in ("mechanism", "impl", "case", "dtype", "device"))
    return (task, extra)


def merge(dirs: Sequence[Path], out: Path) -> dict[str, Any]:
    """Writes checks.csv, perf.csv, env.json and tasks.done of the union of ``dirs`` into ``out``."""
    if not dirs:
        raise UsageError("report: no result folders given")
    out.mkdir(parents=True, exist_ok=True)
    envs: list[dict[str, Any]] = []
    for d in dirs:
        env_path = d / "env.json"
        envs.append(json.loads(env_path.read_text()) if env_path.exists() else {"folder": str(d)})
    suites = {(e.get("suite") or {}).get("path") for e in envs}
    profiles = {(e.get("suite") or {}).get("profile") for e in envs}
    if len(suites) > 1 or len(profiles) > 1:
        raise UsageError(
            "report: the folders come from different suites/profiles: "
            + ", ".join(
                f"{d} ({(e.get('suite') or {}).get('path')}, {(e.get('suite') or {}).get('profile')})"
                for d, e in zip(dirs, envs, strict=True)
            )
        )
    for name, header, perf in (("checks.csv", CHECK_HEADER, False), ("perf.csv", PERF_HEADER, True)):
        seen: dict[tuple[str, ...], dict[str, str]] = {}
        for d in dirs:
            for row in read_rows(d / name):
                seen.setdefault(_key(row, perf), row)
        rows = sorted(seen.values(), key=lambda r: _key(r, perf))
        with open(out / name, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(header))
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in header})
    done: set[str] = set()
    for d in dirs:
        if (d / DONE_LOG).exists():
            done |= {ln.strip() for ln in (d / DONE_LOG).read_text().splitlines() if ln.strip()}
    (out / DONE_LOG).write_text("".join(f"{k}\n" for k in sorted(done)))
    merged = dict(envs[0])
    merged["shards"] = [{"folder": str(d), **e} for d, e in zip(dirs, envs, strict=True)]
    fingerprints = sorted({str(e.get("fingerprint", "")) for e in envs})
    merged["fingerprints"] = fingerprints
    if len(fingerprints) > 1:
        merged["warning"] = (
            f"merged results come from {len(fingerprints)} different machines/software setups "
            f"({', '.join(fingerprints)}): perf rows are grouped by fingerprint and not comparable across them"
        )
    if merged.get("suite"):
        merged["suite"] = dict(merged["suite"], shard="merged")
    (out / "env.json").write_text(json.dumps(merged, indent=2))
    return merged
