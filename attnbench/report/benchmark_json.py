"""pytest-benchmark JSON interchange.

Export: ``attnbench report DIR --benchmark-json FILE`` writes perf.csv in
pytest-benchmark's saved-run format (statistics from ``pytest_benchmark.stats.Stats``
over the raw samples, which are kept in ``stats.data``), so a project already
using pytest-benchmark can put it in ``.benchmarks/`` and use
``pytest --benchmark-compare`` / ``pytest-benchmark compare``.

Import: ``attnbench compare`` accepts a pytest-benchmark JSON file as either
side; its benchmarks become perf rows (samples from ``stats.data`` when saved
with ``--benchmark-save-data``, else the median alone).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info
from pytest_benchmark.stats import Stats

from attnbench.errors import UsageError
from attnbench.report.csv import read_rows

NAME_SEP = "::"


def export(folder: Path, target: Path) -> Path:
    """perf.csv of ``folder`` as a pytest-benchmark saved run at ``target``."""
    perf = read_rows(folder / "perf.csv")
    if not perf:
        raise UsageError(f"{folder}: no perf.csv rows to export")
    env_path = folder / "env.json"
    env = json.loads(env_path.read_text()) if env_path.exists() else {}
    benchmarks = []
    for row in perf:
        values = [float(x) for x in (row.get("samples_s") or row["median_s"]).split(";") if x]
        stats = Stats()
        for v in values:
            stats.update(v)
        name = NAME_SEP.join((row["mechanism"], row["impl"], row["case"], row["dtype"], row["device"], row["pass"]))
        benchmarks.append(
            {
                "group": f"{row['mechanism']} {row['case']} {row['dtype']} {row['device']} {row['pass']}",
                "name": name,
                "fullname": f"attnbench::{name}",
                "params": {k: row[k] for k in ("mechanism", "impl", "kind", "case", "dtype", "device", "pass")},
                "param": row["impl"],
                "extra_info": {
                    "peak_bytes": row.get("peak_bytes"),
                    "saved_bytes": row.get("saved_bytes"),
                    "flops": row.get("flops"),
                    "fingerprint": row.get("fingerprint"),
                },
                "options": {
                    "disable_gc": False,
                    "timer": "perf_counter",
                    "min_rounds": len(values),
                    "max_time": None,
                    "min_time": None,
                    "warmup": True,
                },
                "stats": {**stats.as_dict(), "data": values, "iterations": 1},
            }
        )
    payload = {
        "machine_info": {**pytest_benchmark_generate_machine_info(), "attnbench_env": env},
        "commit_info": {
            "id": env.get("commit", ""),
            "dirty": str(env.get("commit", "")).endswith("-dirty"),
            "project": "attnbench",
        },
        "benchmarks": benchmarks,
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "version": "5.3.1",
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2))
    return target


def load(path: Path) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """A pytest-benchmark JSON file as (perf rows, env)."""
    try:
        data = json.loads(path.read_text())
        benches = data["benchmarks"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a pytest-benchmark JSON file ({exc})") from None
    rows = []
    for b in benches:
        params = b.get("params") or {}
        stats = b.get("stats") or {}
        data_s = stats.get("data") or []
        if params.get("mechanism"):
            mech, impl, case, dtype, device, pass_ = (
                params.get(k, "") for k in ("mechanism", "impl", "case", "dtype", "device", "pass")
            )
        else:  # a plain pytest-benchmark test: one row per test name
            mech, impl, case, dtype, device, pass_ = "pytest", b.get("name", "?"), b.get("group") or "", "", "", "fwd"
        extra = b.get("extra_info") or {}
        rows.append(
            {
                "mechanism": mech,
                "impl": impl,
                "kind": params.get("kind", "user"),
                "case": case,
                "dtype": dtype,
                "device": device,
                "pass": pass_,
                "median_s": str(stats.get("median", "")),
                "iqr_s": str(stats.get("iqr", "")),
                "runs": str(stats.get("rounds", len(data_s))),
                "peak_bytes": str(extra.get("peak_bytes") or ""),
                "saved_bytes": str(extra.get("saved_bytes") or ""),
                "flops": str(extra.get("flops") or ""),
                "samples_s": ";".join(repr(float(x)) for x in data_s),
            }
        )
    env = dict((data.get("machine_info") or {}).get("attnbench_env") or {})
    return rows, env
