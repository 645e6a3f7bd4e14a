"""Robust runs (issue 8): isolation, budgets, non-finite values, resume, sharding, hostile input."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnbench.errors import SuiteError
from attnbench.suite import parse_suite

from .conftest import EXAMPLES, ROOT, TINY_CCNET

ONE_CASE = """
    name = "one"
    mechanisms = ["ccnet"]
    [checks]
    properties = false
    gradcheck = false
    modules = false
    [timing]
    warmup = 1
    min_runs = 2
    max_runs = 2
    min_time_s = 0.0
    max_time_s = 0.5
    [profiles.quick]
    dtypes = ["float64"]
    [[profiles.quick.cases]]
    B = 2
    Cq = 2
    C = 3
    H = 3
    W = 4
"""


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def row_keys(folder: Path) -> Counter[tuple[str, ...]]:
    checks = Counter((r["task"], r["check"], r["status"]) for r in read(folder / "checks.csv"))
    perf = Counter((r["task"], r["pass"]) for r in read(folder / "perf.csv"))
    return checks + perf


def test_segfault_hang_and_hog_become_error_rows(
    run_cli: Callable[..., int], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    suite = write_suite(ONE_CASE)
    out = tmp_path / "out"
    hostile = EXAMPLES / "hostile"
    code = run_cli(
        "run",
        suite,
        "--impl",
        hostile / "segfault.py",
        "--impl",
        hostile / "hang.py",
        "--impl",
        hostile / "hog.py",
        "--only",
        "vectorized,inf_masked,segfaults,hangs,hog",
        "--timeout",
        "20",
        "--out",
        out,
        "--quiet",
    )
    assert code == 4
    rows = read(out / "checks.csv")
    detail = {r["impl"]: r["detail"] for r in rows if r["status"] == "error"}
    assert "SIGSEGV" in detail["segfaults"]
    assert "timed out after 20 s" in detail["hangs"]
    assert "out of memory" in detail["hog"]
    good = [r for r in rows if r["impl"] in ("vectorized", "inf_masked")]
    assert good and all(r["status"] == "pass" for r in good)
    assert {r["impl"] for r in read(out / "perf.csv")} == {"vectorized", "inf_masked"}


def test_nonfinite_output_is_a_failure_with_its_location(
    run_cli: Callable[..., int], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code = run_cli(
        "run",
        write_suite(ONE_CASE),
        "--impl",
        EXAMPLES / "hostile" / "nan.py",
        "--only",
        "nan_at_corner",
        "--out",
        out,
        "--quiet",
    )
    assert code == 1
    fwd = [r for r in read(out / "checks.csv") if r["check"] == "forward"]
    assert fwd[0]["status"] == "fail"
    assert "non-finite out: 1 of 72 values, first nan at index (1, 2, 2, 3)" in fwd[0]["detail"]


def test_memory_budget_skips_with_the_reason(
    run_cli: Callable[..., int], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert run_cli("run", write_suite(ONE_CASE), "--max-memory", "1KiB", "--out", out, "--quiet") == 0
    rows = read(out / "checks.csv")
    assert rows and all(r["status"] == "skip" and "> budget 1,024 B" in r["detail"] for r in rows)


def _slow_impl(tmp_path: Path) -> Path:
    slow = tmp_path / "slow.py"
    slow.write_text(
        "import time\nimport attnbench\nfrom impls.ccnet.vectorized import cca_vectorized\n"
        "@attnbench.register('ccnet', kind='user', name='slow')\n"
        "def slow(q, k, v):\n    time.sleep(0.05)\n    return cca_vectorized(q, k, v)\n"
    )
    return slow


def test_kill_9_then_resume_gives_the_rows_of_a_clean_run(
    run_cli: Callable[..., int], tiny_suite: Path, tmp_path: Path
) -> None:
    slow = _slow_impl(tmp_path)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    args = ["run", str(tiny_suite), "--impl", str(slow), "--only", "slow,vectorized", "--quiet", "--isolate", "none"]
    assert run_cli(*args, "--out", clean) == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "attnbench.cli", *args, "--out", str(killed)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done = killed / "tasks.done"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if done.exists() and len(done.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(done.read_text().splitlines())
    assert 4 <= partial < len(row_keys(clean))
    assert run_cli(*args, "--out", killed, "--resume") == 0
    assert row_keys(killed) == row_keys(clean)


def test_resume_drops_rows_of_a_task_cut_short(run_cli: Callable[..., int], tiny_suite: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("run", tiny_suite, "--only", "vectorized", "--out", out, "--quiet") == 0
    full = row_keys(out)
    lines = (out / "tasks.done").read_text().splitlines()
    (out / "tasks.done").write_text("\n".join(lines[:2]) + "\n")  # as if killed after the third task's rows
    with open(out / "checks.csv", "a") as f:
        f.write("ccnet,vectorized,vectorized,half-written")  # and in the middle of a row
    assert run_cli("run", tiny_suite, "--only", "vectorized", "--out", out, "--quiet", "--resume") == 0
    assert row_keys(out) == full


def test_shards_together_equal_the_unsharded_run(run_cli: Callable[..., int], tiny_suite: Path, tmp_path: Path) -> None:
    whole, s1, s2, merged = (tmp_path / n for n in ("whole", "s1", "s2", "merged"))
    base = ["run", tiny_suite, "--only", "vectorized,inf_masked", "--quiet"]
    assert run_cli(*base, "--out", whole) == 0
    assert run_cli(*base, "--shard", "1/2", "--out", s1) == 0
    assert run_cli(*base, "--shard", "2/2", "--out", s2) == 0
    a, b = row_keys(s1), row_keys(s2)
    assert a and b and not (set(a) & set(b))
    assert a + b == row_keys(whole)
    assert run_cli("report", s1, s2, "--out", merged) == 0
    assert row_keys(merged) == row_keys(whole)
    assert "**PASS**" in (merged / "report.md").read_text()


def test_sharding_is_deterministic_and_balanced() -> None:
    from attnbench import runner
    from attnbench.suite import load_suite

    suite = load_suite(ROOT / "suites" / "ccnet")
    profile = suite.profile("quick")
    tasks = runner.plan(suite, profile, runner.Options())
    parts = [runner.shard(tasks, i, 3) for i in (1, 2, 3)]
    assert parts == [runner.shard(tasks, i, 3) for i in (1, 2, 3)]
    assert sorted(t.key for p in parts for t in p) == sorted(t.key for t in tasks)
    weights = [sum(t.weight for t in p) for p in parts]
    assert max(weights) - min(weights) <= max(t.weight for t in tasks) * 12


toml_scalars = st.one_of(
    st.integers(-5, 50),
    st.floats(-1e3, 1e3, allow_nan=False),
    st.booleans(),
    st.text(max_size=8),
    st.lists(st.integers(-2, 9), max_size=4),
)
keys = st.sampled_from(
    [
        "B",
        "C",
        "Cq",
        "H",
        "W",
        "Hh",
        "name",
        "tags",
        "mechanism",
        "module",
        "dtypes",
        "devices",
        "warmup",
        "min_runs",
        "passes",
        "rule",
        "k",
        "x",
    ]
)
tables = st.dictionaries(keys, toml_scalars, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    top=st.dictionaries(
        st.sampled_from(["name", "mechanisms", "checks", "timing", "tolerances", "profiles", "max_memory", "bogus"]),
        st.one_of(toml_scalars, tables),
        max_size=5,
    ),
    case=tables,
    timing=tables,
)
def test_suite_loader_fuzz_never_crashes(top: dict, case: dict, timing: dict) -> None:
    """Whatever the file holds, loading either works or raises SuiteError: never another exception."""
    raw = dict(top)
    raw.setdefault("mechanisms", ["ccnet"])
    raw["profiles"] = {"quick": {"timing": timing, "cases": [case]}}
    try:
        parse_suite(raw, "fuzz/suite.toml")
    except SuiteError as exc:
        assert str(exc).startswith("fuzz/suite.toml")


def test_tiny_suite_constant_is_valid() -> None:
    import textwrap

    import tomllib

    parse_suite(tomllib.loads(textwrap.dedent(TINY_CCNET)), "tiny")
    with pytest.raises(SuiteError):
        parse_suite(tomllib.loads(textwrap.dedent(TINY_CCNET).replace("B = 2", "B = 0", 1)), "tiny")
