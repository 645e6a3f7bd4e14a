"""Shared fixtures: a clean registry per test, tiny suites, CLI runner."""

from __future__ import annotations

import copy
import csv
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from attnbench import cli
from attnbench.registry import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _restore_registry() -> Iterator[None]:
    """User files loaded by one test must not leak into the next."""
    REGISTRY.discover()
    impls = copy.copy({k: dict(v) for k, v in REGISTRY.impls.items()})
    user_files = list(REGISTRY.user_files)
    yield
    REGISTRY.impls.clear()
    REGISTRY.impls.update(impls)
    REGISTRY.user_files[:] = user_files


@pytest.fixture
def write_suite(tmp_path: Path) -> Callable[[str], Path]:
    """Writes a suite.toml from a dedented string and returns its folder."""

    def write(text: str, name: str = "tiny") -> Path:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        (folder / "suite.toml").write_text(textwrap.dedent(text))
        return folder

    return write


TINY_CCNET = """
    name = "tiny"
    mechanisms = ["ccnet"]
    [timing]
    warmup = 1
    min_runs = 3
    max_runs = 3
    min_time_s = 0.0
    max_time_s = 0.5
    [profiles.quick]
    dtypes = ["float64", "float32"]
    [[profiles.quick.cases]]
    B = 2
    Cq = 3
    C = 4
    H = 4
    W = 5
    [[profiles.quick.cases]]
    B = 2
    Cq = 2
    C = 3
    H = 3
    W = 2
    [[profiles.quick.gradcheck]]
    B = 1
    Cq = 2
    C = 2
    H = 3
    W = 2
"""


@pytest.fixture
def tiny_suite(write_suite: Callable[[str], Path]) -> Path:
    return write_suite(TINY_CCNET)


@pytest.fixture
def run_cli() -> Callable[..., int]:
    def run(*args: str) -> int:
        """In-process runs (``--isolate none``) unless a test asks for process isolation."""
        argv = [str(a) for a in args]
        if argv and argv[0] == "run" and "--isolate" not in argv and "--timeout" not in argv:
            argv.append("--isolate=none")
        return cli.main(argv)

    return run


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@dataclass(frozen=True)
class MutationRun:
    """``attnbench run`` of a tiny suite with one wrong impl from examples/wrong next to `vectorized`."""

    code: int
    rows: list[dict[str, str]]
    name: str

    @property
    def failed(self) -> set[str]:
        """The checks that failed for the wrong impl."""
        return {r["check"] for r in self.rows if r["impl"] == self.name and r["status"] == "fail"}

    @property
    def vectorized_clean(self) -> bool:
        """The built-in vectorized impl, run beside it, neither failed nor errored."""
        return all(r["status"] in ("pass", "skip") for r in self.rows if r["impl"] == "vectorized")


@pytest.fixture
def run_mutation(
    run_cli: Callable[..., int], write_suite: Callable[..., Path], tmp_path: Path
) -> Callable[[str, str, str], MutationRun]:
    """``run_mutation(SUITE_TEXT, "file.py", "impl_name")``: the mutation must be caught (exit 1)."""

    def run(suite_text: str, file: str, name: str) -> MutationRun:
        out = tmp_path / "out"
        suite = write_suite(suite_text, "mutation")
        code = run_cli(
            "run", suite, "--impl", EXAMPLES / "wrong" / file, "--only", f"vectorized,{name}", "--out", out, "--quiet"
        )
        return MutationRun(code, read_csv(out / "checks.csv"), name)

    return run
