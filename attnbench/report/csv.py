"""Tidy result files, written row by row as measurements happen.

Column names of ``checks.csv`` and ``perf.csv`` are a contract (DESIGN.md);
extra columns are appended after them.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TextIO

CHECK_COLUMNS = (
    "mechanism",
    "impl",
    "kind",
    "case",
    "dtype",
    "device",
    "check",
    "status",
    "max_abs_err",
    "max_rel_err",
    "atol",
    "rtol",
    "detail",
)
CHECK_EXTRA = ("case_name", "reference", "expected", "task", "statistic", "p_value", "fingerprint")
PERF_COLUMNS = (
    "mechanism",
    "impl",
    "kind",
    "case",
    "dtype",
    "device",
    "pass",
    "median_s",
    "iqr_s",
    "runs",
    "peak_bytes",
    "saved_bytes",
    "flops",
)
PERF_EXTRA = (
    "case_name",
    "threads",
    "gflops_per_s",
    "model_bytes",
    "bytes_moved",
    "samples_s",
    "task",
    "fingerprint",
    "instructions",
    "code",
)
STATUSES = ("pass", "fail", "skip", "error")


@dataclass
class CheckRow:
    mechanism: str
    impl: str
    kind: str
    case: str
    dtype: str
    device: str
    check: str
    status: str
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    atol: float | None = None
    rtol: float | None = None
    detail: str = ""
    case_name: str = ""
    reference: str = ""
    expected: str = ""
    task: str = ""
    statistic: float | None = None
    p_value: float | None = None
    fingerprint: str = ""


@dataclass
class PerfRow:
    mechanism: str
    impl: str
    kind: str
    case: str
    dtype: str
    device: str
    pass_: str
    median_s: float
    iqr_s: float
    runs: int
    peak_bytes: int | None
    saved_bytes: int | None
    flops: float | None
    case_name: str = ""
    threads: int | None = None
    gflops_per_s: float | None = None
    model_bytes: float | None = None
    bytes_moved: float | None = None
    samples_s: str = ""
    task: str = ""
    fingerprint: str = ""
    instructions: int | None = None
    code: str = ""  # Impl.code_hash: which code these timings belong to


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def row_dict(row: CheckRow | PerfRow) -> dict[str, str]:
    d = asdict(row)
    if "pass_" in d:
        d["pass"] = d.pop("pass_")
    return {k: _fmt(v) for k, v in d.items()}


CHECK_HEADER = CHECK_COLUMNS + CHECK_EXTRA
PERF_HEADER = PERF_COLUMNS + PERF_EXTRA
assert set(CHECK_HEADER) == {f.name for f in fields(CheckRow)}
assert set(PERF_HEADER) == {f.name if f.name != "pass_" else "pass" for f in fields(PerfRow)}


class CsvAppender:
    """Appends rows to a CSV file and flushes each one (a kill loses nothing written)."""

    def __init__(self, path: Path, header: tuple[str, ...], append: bool = False) -> None:
        self.path = path
        self.header = header
        exists = append and path.exists() and path.stat().st_size > 0
        if exists:
            _repair_tail(path)
        self._file: TextIO = open(path, "a" if exists else "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.DictWriter(self._file, fieldnames=list(header), extrasaction="raise")
        if not exists:
            self._writer.writeheader()
            self._file.flush()

    def write(self, row: Mapping[str, str]) -> None:
        self._writer.writerow(row)
        self._file.flush()

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()


def _repair_tail(path: Path) -> None:
    """Drops a last line cut short by a kill, so appending continues a valid CSV."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n")
        path.write_bytes(data[: cut + 1] if cut >= 0 else b"")


class ResultWriter:
    """``checks.csv`` and ``perf.csv`` in one folder."""

    def __init__(self, out: Path, append: bool = False) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.checks = CsvAppender(out / "checks.csv", CHECK_HEADER, append)
        self.perf = CsvAppender(out / "perf.csv", PERF_HEADER, append)

    def write(self, rows: Iterable[CheckRow | PerfRow]) -> None:
        for row in rows:
            if isinstance(row, CheckRow):
                self.checks.write(row_dict(row))
            else:
                self.perf.write(row_dict(row))

    def close(self) -> None:
        self.checks.close()
        self.perf.close()


def read_rows(path: Path) -> list[dict[str, str]]:
    """Reads a result CSV as dicts of strings ([] if the file is missing)."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if row.get("mechanism")]
