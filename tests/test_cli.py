"""The command line: exit codes and files (DESIGN.md contracts)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from attnbench.report.csv import CHECK_COLUMNS, PERF_COLUMNS

from .conftest import EXAMPLES


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_writes_the_four_files(run_cli: Callable[..., int], tiny_suite: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("run", tiny_suite, "--out", out, "--quiet", "--only", "vectorized,naive") == 0
    for name in ("checks.csv", "perf.csv", "env.json", "report.md"):
        assert (out / name).exists(), name
    checks = read(out / "checks.csv")
    perf = read(out / "perf.csv")
    assert list(checks[0])[: len(CHECK_COLUMNS)] == list(CHECK_COLUMNS)
    assert list(perf[0])[: len(PERF_COLUMNS)] == list(PERF_COLUMNS)
    assert {r["status"] for r in checks} <= {"pass", "skip"}
    assert {r["pass"] for r in perf} == {"fwd", "fwd+bwd"}
    assert {r["impl"] for r in perf} == {"vectorized"}  # naive is not timed by default
    assert all(float(r["median_s"]) > 0 and int(r["runs"]) == 3 for r in perf)
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] and env["threads"] >= 1
    report = (out / "report.md").read_text()
    assert "## Verdict" in report and "**PASS**" in report and "## Performance" in report


@pytest.mark.parametrize(
    ("file", "name", "caught_by"),
    [
        ("ccnet_self_twice.py", "self_twice", "forward"),
        ("ccnet_separate_softmax.py", "separate_softmax", "forward"),
        ("ccnet_hw_swapped.py", "hw_swapped", "forward"),
        ("ccnet_bad_gradient.py", "bad_gradient", "backward:q"),
    ],
)
def test_wrong_user_impl_is_caught(
    run_cli: Callable[..., int], tiny_suite: Path, tmp_path: Path, file: str, name: str, caught_by: str
) -> None:
    out = tmp_path / "out"
    code = run_cli(
        "run", tiny_suite, "--impl", EXAMPLES / "wrong" / file, "--only", f"vectorized,{name}", "--out", out, "--quiet"
    )
    assert code == 1
    rows = read(out / "checks.csv")
    failed = {r["check"] for r in rows if r["impl"] == name and r["status"] == "fail"}
    assert caught_by in failed, failed
    assert all(r["status"] != "fail" for r in rows if r["impl"] == "vectorized")
    perf_impls = {r["impl"] for r in read(out / "perf.csv")}
    assert name not in perf_impls or caught_by.startswith("backward") is False  # no time for a failed case


def test_bad_gradient_is_also_caught_by_gradcheck(
    run_cli: Callable[..., int], tiny_suite: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run_cli(
        "run",
        tiny_suite,
        "--impl",
        EXAMPLES / "wrong" / "ccnet_bad_gradient.py",
        "--only",
        "bad_gradient",
        "--out",
        out,
        "--quiet",
    )
    rows = read(out / "checks.csv")
    assert {r["status"] for r in rows if r["check"] == "gradcheck"} == {"fail"}
    assert {r["status"] for r in rows if r["check"] == "forward"} == {"pass"}
    assert not read(out / "perf.csv")  # gradients wrong on every case: nothing timed


def test_misspelt_suite_key_exits_2(
    run_cli: Callable[..., int], write_suite: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_suite(
        'mechanisms = ["ccnet"]\n[profiles.quick]\n[[profiles.quick.cases]]\nB = 1\nCq = 1\nC = 1\nH = 1\nWW = 1\n'
    )
    assert run_cli("run", folder, "--quiet") == 2
    err = capsys.readouterr().err
    assert "WW" in err and "suite.toml" in err and "allowed" in err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--only", "nope"], "unknown impl(s) nope"),
        (["--shard", "3/2"], "--shard"),
        (["--max-memory", "lots"], "--max-memory"),
        (["--impl", "/does/not/exist.py"], "no such file"),
    ],
)
def test_usage_errors_exit_2(
    run_cli: Callable[..., int], tiny_suite: Path, args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("run", tiny_suite, "--quiet", *args) == 2
    assert fragment in capsys.readouterr().err


def test_user_file_for_unknown_mechanism_exits_2(
    run_cli: Callable[..., int], tiny_suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import attnbench\n@attnbench.register('ccnett', kind='user')\ndef f(q, k, v):\n    return v\n")
    assert run_cli("run", tiny_suite, "--impl", bad, "--quiet") == 2
    assert "unknown mechanism 'ccnett'" in capsys.readouterr().err


def test_user_file_that_fails_to_import_exits_2(
    run_cli: Callable[..., int], tiny_suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("import attnbench\nraise ImportError('missing dependency foo')\n")
    assert run_cli("run", tiny_suite, "--impl", bad, "--quiet") == 2
    assert "missing dependency foo" in capsys.readouterr().err


def test_impl_raising_becomes_error_row_and_exit_4(
    run_cli: Callable[..., int], tiny_suite: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "raises.py"
    bad.write_text(
        "import attnbench\n@attnbench.register('ccnet', kind='user', name='raises')\n"
        "def f(q, k, v):\n    raise RuntimeError('kernel exploded')\n"
    )
    out = tmp_path / "out"
    assert run_cli("run", tiny_suite, "--impl", bad, "--only", "raises,vectorized", "--out", out, "--quiet") == 4
    rows = read(out / "checks.csv")
    errors = [r for r in rows if r["status"] == "error"]
    assert errors and all("kernel exploded" in r["detail"] for r in errors)
    assert any(r["impl"] == "vectorized" and r["status"] == "pass" for r in rows)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("return v[:, :, :1]", "has shape"),
        ("return v.double() if v.dtype == torch.float32 else v.float()", "has dtype"),
        ("return 3", "returned int"),
    ],
)
def test_wrong_output_contract_is_an_error_row(
    run_cli: Callable[..., int], tiny_suite: Path, tmp_path: Path, body: str, fragment: str
) -> None:
    bad = tmp_path / "contract.py"
    bad.write_text(
        f"import torch, attnbench\n@attnbench.register('ccnet', kind='user', name='contract')\n"
        f"def f(q, k, v):\n    {body}\n"
    )
    out = tmp_path / "out"
    assert run_cli("run", tiny_suite, "--impl", bad, "--only", "contract", "--out", out, "--quiet") == 4
    rows = [r for r in read(out / "checks.csv") if r["check"] == "forward"]
    assert rows and all(r["status"] == "error" and fragment in r["detail"] for r in rows)


def test_list_shows_impls_and_cases(
    run_cli: Callable[..., int], tiny_suite: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("list") == 0
    listing = capsys.readouterr().out
    assert "ccnet" in listing and "vectorized" in listing and "naive" in listing
    assert run_cli("list", tiny_suite) == 0
    assert "ccnet/cca/B=2,C=4,Cq=3,H=4,W=5" in capsys.readouterr().out


def test_report_rebuilds_from_csv(run_cli: Callable[..., int], tiny_suite: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("run", tiny_suite, "--out", out, "--quiet", "--only", "vectorized") == 0
    (out / "report.md").unlink()
    assert run_cli("report", out) == 0
    assert "## Correctness" in (out / "report.md").read_text()


def test_expected_failure_keeps_the_row_and_exit_0(
    run_cli: Callable[..., int], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    from .conftest import TINY_CCNET

    suite = TINY_CCNET + (
        '    [[expected_failures]]\n    impl = "self_twice"\n    check = "forward"\n    case = "H=4"\n'
        '    reason = "known: counts the pixel twice"\n'
    )
    out = tmp_path / "out"
    args = ["--impl", EXAMPLES / "wrong" / "ccnet_self_twice.py", "--only", "self_twice", "--quiet"]
    code = run_cli("run", write_suite(suite, "xf"), "--out", out, *args)
    rows = [r for r in read(out / "checks.csv") if r["check"] == "forward" and r["status"] == "fail"]
    assert {r["expected"] for r in rows if "H=4" in r["case"]} == {"known: counts the pixel twice"}
    # the other case is not covered by the entry: still a failure, exit 1
    assert any(r["expected"] == "" for r in rows) and code == 1
