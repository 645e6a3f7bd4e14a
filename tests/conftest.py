"""Shared fixtures: a clean registry per test, tiny suites, CLI runner."""

from __future__ import annotations

import copy
import textwrap
from collections.abc import Callable, Iterator
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
