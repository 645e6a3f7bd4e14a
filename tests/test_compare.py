"""Regression gates (issue 7): verdicts, exit codes, fingerprints, pytest-benchmark JSON, pytest plugin."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from attnbench.registry import REGISTRY
from attnbench.report import benchmark_json
from attnbench.report.compare import Results, evaluate, load_results, time_verdict

from .conftest import EXAMPLES


def noisy(median: float, n: int, spread: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [median * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


def test_same_distribution_is_same() -> None:
    verdict, ratio, _ = time_verdict(noisy(1.0, 30, 0.1, 1), noisy(1.0, 30, 0.1, 2), 0.10, 0.01)
    assert verdict == "SAME" and abs(ratio - 1) < 0.1


def test_25_percent_slower_is_slower_and_faster_is_faster() -> None:
    assert time_verdict(noisy(1.0, 20, 0.05, 1), noisy(1.25, 20, 0.05, 2), 0.10, 0.01)[0] == "SLOWER"
    assert time_verdict(noisy(1.25, 20, 0.05, 1), noisy(1.0, 20, 0.05, 2), 0.10, 0.01)[0] == "FASTER"


def test_big_but_unsupported_change_is_ambiguous() -> None:
    assert time_verdict([1.0, 3.0], [2.5, 1.9], 0.10, 0.01)[0] == "AMBIGUOUS"


def test_small_significant_change_is_same() -> None:
    assert time_verdict(noisy(1.0, 200, 0.01, 1), noisy(1.03, 200, 0.01, 2), 0.10, 0.01)[0] == "SAME"


def perf_row(impl: str, samples: list[float], peak: int = 1000) -> dict[str, str]:
    return {
        "mechanism": "ccnet",
        "impl": impl,
        "kind": "vectorized",
        "case": "c",
        "dtype": "float32",
        "device": "cpu",
        "pass": "fwd",
        "median_s": str(sorted(samples)[len(samples) // 2]),
        "samples_s": ";".join(map(str, samples)),
        "peak_bytes": str(peak),
    }


def check_row(status: str) -> dict[str, str]:
    return {
        "mechanism": "ccnet",
        "impl": "x",
        "case": "c",
        "dtype": "float32",
        "device": "cpu",
        "check": "forward",
        "status": status,
        "detail": "out: rule F FAIL",
    }


ENV = {"machine": "x86_64", "cpu_model": "A", "cpu_count": 2, "threads": 2, "torch": "2.13.0", "cuda_device": ""}


def test_correctness_regression_exits_1_even_if_faster() -> None:
    base = Results([check_row("pass")], [perf_row("x", noisy(1.0, 20, 0.02, 1))], ENV, "base")
    new = Results([check_row("fail")], [perf_row("x", noisy(0.5, 20, 0.02, 2))], ENV, "new")
    result = evaluate(base, new)
    assert result.verdicts[0].verdict == "FASTER"
    assert result.broke and result.exit_code() == 1


def test_memory_regression_has_its_own_threshold() -> None:
    same = noisy(1.0, 20, 0.02, 1)
    base = Results([], [perf_row("x", same, peak=1_000_000)], ENV, "base")
    grown = Results([], [perf_row("x", same, peak=1_200_000)], ENV, "new")
    assert evaluate(base, grown).exit_code() == 3
    assert evaluate(base, grown, {"memory_threshold": 0.5}).exit_code() == 0


def test_different_machines_refuse_perf_verdicts_unless_forced() -> None:
    base = Results([], [perf_row("x", noisy(1.0, 20, 0.02, 1))], ENV, "base")
    new = Results([], [perf_row("x", noisy(2.0, 20, 0.02, 2))], {**ENV, "cpu_model": "B"}, "new")
    refused = evaluate(base, new)
    assert refused.mismatch == ["cpu_model: A → B"]
    assert refused.verdicts[0].verdict == "INCOMPARABLE" and refused.exit_code() == 0
    assert evaluate(base, new, force=True).exit_code() == 3


def test_ambiguous_rows_are_remeasured() -> None:
    base = Results([], [perf_row("x", [1.0, 1.01, 0.99])], ENV, "base")
    new = Results([], [perf_row("x", [1.3, 0.9, 1.6])], ENV, "new")
    calls = []

    def more(v: object) -> list[float]:
        calls.append(v)
        return noisy(1.3, 30, 0.02, len(calls))

    result = evaluate(base, new, remeasure=more)
    assert calls and result.verdicts[0].verdict == "SLOWER" and result.verdicts[0].note == "re-measured"


def test_stored_verdict_is_replaced_by_interleaved_measurement_of_baseline_code() -> None:
    """A drifting machine made the stored samples look 2x slower; re-measuring the
    baseline's code next to the new code shows they are the same."""
    base = Results([], [{**perf_row("x", noisy(1.0, 30, 0.02, 1)), "code": "abc"}], ENV, "base")
    new = Results([], [perf_row("x", noisy(2.0, 30, 0.02, 2))], ENV, "new")
    asked: list[str] = []

    def interleave(v: object, base_row: dict[str, str]) -> tuple[list[float], list[float]]:
        asked.append(base_row["code"])
        return noisy(2.0, 30, 0.02, 3), noisy(2.0, 30, 0.02, 4)

    assert evaluate(base, new).verdicts[0].verdict == "SLOWER"
    result = evaluate(base, new, interleave=interleave)
    v = result.verdicts[0]
    assert asked == ["abc"] and v.verdict == "SAME" and result.exit_code() == 0
    assert "interleaved" in v.basis and v.note.startswith("SLOWER (+")


def test_without_the_baseline_code_the_stored_samples_decide() -> None:
    base = Results([], [perf_row("x", noisy(1.0, 30, 0.02, 1))], ENV, "base")
    new = Results([], [perf_row("x", noisy(1.3, 30, 0.02, 2))], ENV, "new")
    result = evaluate(base, new, interleave=lambda v, row: None)
    assert result.verdicts[0].verdict == "SLOWER" and "per-call samples" in result.verdicts[0].basis


def test_time_interleaved_alternates_and_counts_per_callable() -> None:
    from attnbench.measure.timing import time_interleaved
    from attnbench.suite import Timing

    calls: list[str] = []
    a, b = time_interleaved(
        (lambda: calls.append("a"), lambda: calls.append("b")), Timing(warmup=1, min_runs=4, max_runs=4, min_time_s=0)
    )
    assert a.runs == b.runs == 4
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_impl_with_code_finds_the_builtin_a_user_file_replaced(tmp_path: Path) -> None:
    builtin = REGISTRY.impls["ccnet"]["vectorized"]
    changed = tmp_path / "changed.py"
    changed.write_text(
        "import attnbench\nfrom impls.ccnet.vectorized import cca_vectorized\n"
        "attnbench.register('ccnet', kind='vectorized', name='vectorized')(lambda q, k, v: cca_vectorized(q, k, v))\n"
    )
    with pytest.warns(UserWarning, match="replaces the built-in"):
        REGISTRY.load_user_file(changed)
    user = REGISTRY.impls["ccnet"]["vectorized"]
    assert user.code_hash != builtin.code_hash
    assert REGISTRY.impl_with_code("ccnet", builtin.code_hash) is builtin
    assert REGISTRY.impl_with_code("ccnet", user.code_hash) is user
    assert REGISTRY.impl_with_code("ccnet", "0" * 12) is None


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


GATE_SUITE = """
    mechanisms = ["ccnet"]
    [checks]
    properties = false
    gradcheck = false
    modules = false
    [timing]
    warmup = 1
    min_runs = 10
    max_runs = 10
    min_time_s = 0.0
    passes = ["fwd"]
    [profiles.quick]
    dtypes = ["float32"]
    [[profiles.quick.cases]]
    B = 2
    Cq = 3
    C = 4
    H = 4
    W = 5
"""


def test_run_with_baseline_flags_a_much_slower_impl(
    run_cli: Callable[..., int], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    suite = write_suite(GATE_SUITE, "gate")
    base, new = tmp_path / "base", tmp_path / "new"
    assert run_cli("run", suite, "--only", "vectorized", "--out", base, "--quiet") == 0
    slow = tmp_path / "slow.py"
    slow.write_text(
        "import time\nimport attnbench\nfrom impls.ccnet.vectorized import cca_vectorized\n"
        "@attnbench.register('ccnet', kind='vectorized', name='vectorized')\n"
        "def v(q, k, v_):\n    time.sleep(0.05)\n    return cca_vectorized(q, k, v_)\n"
    )
    code = run_cli("run", suite, "--only", "vectorized", "--impl", slow, "--out", new, "--quiet", "--baseline", base)
    assert code == 3
    verdicts = {r["verdict"] for r in read(new / "compare.csv")}
    assert verdicts == {"SLOWER"}
    assert "## Comparison with baseline" in (new / "report.md").read_text()
    assert run_cli("compare", base, new) == 3
    assert run_cli("compare", base, base, "--out", tmp_path / "aa") == 0


def test_compare_reports_correctness_regression_with_exit_1(
    run_cli: Callable[..., int], tiny_suite: Path, tmp_path: Path
) -> None:
    base, new = tmp_path / "base", tmp_path / "new"
    wrong = EXAMPLES / "wrong" / "ccnet_self_twice.py"
    right = tmp_path / "right.py"
    right.write_text(
        "import attnbench\nfrom impls.ccnet.vectorized import cca_vectorized\n"
        "attnbench.register('ccnet', kind='user', name='self_twice')(cca_vectorized)\n"
    )
    assert run_cli("run", tiny_suite, "--impl", right, "--only", "self_twice", "--out", base, "--quiet") == 0
    assert (
        run_cli("run", tiny_suite, "--impl", wrong, "--only", "self_twice", "--out", new, "--quiet", "--baseline", base)
        == 1
    )
    assert run_cli("compare", base, new) == 1


def test_pytest_benchmark_json_round_trip(run_cli: Callable[..., int], tiny_suite: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("run", tiny_suite, "--only", "vectorized", "--out", out, "--quiet") == 0
    target = tmp_path / ".benchmarks" / "0001_attnbench.json"
    assert run_cli("report", out, "--benchmark-json", target) == 0
    data = json.loads(target.read_text())
    first = data["benchmarks"][0]
    assert {"median", "iqr", "rounds", "data"} <= set(first["stats"]) and first["stats"]["rounds"] == 3
    assert "machine_info" in data and "commit_info" in data
    rows, _ = benchmark_json.load(target)
    assert len(rows) == len(read(out / "perf.csv"))
    same = load_results(target)
    assert same.perf and evaluate(same, same).exit_code() == 0
    assert run_cli("compare", target, out, "--out", tmp_path / "cmp") == 0


def test_attnbench_check_fixture_passes_and_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import torch
        from impls.ccnet.vectorized import cca_vectorized

        def test_right(attnbench_check):
            rows = attnbench_check("ccnet", cca_vectorized, dtypes=["float64"], checks=["forward", "backward"])
            assert rows

        def test_wrong(attnbench_check):
            attnbench_check("ccnet", lambda q, k, v: v, dtypes=["float64"], checks=["forward"])
        """
    )
    result = pytester.runpytest_inprocess("-q")  # the plugin loads through its pytest11 entry point
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*attnbench found problems*", "fail: <lambda> forward on ccnet/cca/*"])
    assert "backward" not in result.stdout.str()


@pytest.mark.slow
def test_callgrind_counts_are_repeatable() -> None:
    from attnbench.cases import Case
    from attnbench.measure import callgrind

    if callgrind.unavailable_reason():
        pytest.skip(callgrind.unavailable_reason() or "")
    case = Case("ccnet", "cca", {"B": 1, "Cq": 2, "C": 3, "H": 3, "W": 4}, tags=frozenset({"callgrind"}))
    counts = [
        callgrind.instructions("ccnet", "vectorized", "cca", dict(case.params), case.tags, "float32", "fwd", [])
        for _ in range(2)
    ]
    assert counts[0] > 10_000
    assert abs(counts[0] - counts[1]) / counts[0] < 0.01


def test_replacing_the_builtin_vectorized_keeps_it_as_large_case_reference(tmp_path: Path) -> None:
    """Gating a change to `vectorized` (a user file of the same name) must not lose the float64
    reference of cases over the naive budget, which is the built-in vectorized impl."""
    from impls.ccnet.vectorized import cca_vectorized

    changed = tmp_path / "changed.py"
    changed.write_text(
        "import attnbench\nfrom impls.ccnet.vectorized import cca_vectorized\n"
        "@attnbench.register('ccnet', kind='vectorized', name='vectorized')\n"
        "def v(q, k, v_):\n    return cca_vectorized(q, k, v_)\n"
    )
    with pytest.warns(UserWarning, match="replaces the built-in"):
        REGISTRY.load_user_file(changed)
    assert not REGISTRY.impls["ccnet"]["vectorized"].builtin
    assert REGISTRY.vectorized("ccnet").fn is cca_vectorized
    assert REGISTRY.reference("ccnet").name == "naive"
