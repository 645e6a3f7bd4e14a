"""``--executor ray``: same rows as a local run, worker fingerprints, retried shards, resume.

The Ray tests share one local Ray instance (two CPUs) started by a module
fixture; ``ray_executor`` finds it initialised and leaves it running.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import re
import socket
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from attnbench import cli, distributed, runner
from attnbench.errors import UsageError
from attnbench.registry import REGISTRY
from attnbench.suite import load_suite

from .conftest import TINY_CCNET

ONE_CASE = """
    name = "one"
    mechanisms = ["ccnet"]
    [timing]
    warmup = 1
    min_runs = 3
    max_runs = 3
    min_time_s = 0.0
    max_time_s = 0.2
    threads = 1
    [profiles.quick]
    dtypes = ["float64"]
    [[profiles.quick.cases]]
    B = 1
    Cq = 2
    C = 3
    H = 3
    W = 4
    [[profiles.quick.cases]]
    B = 2
    Cq = 2
    C = 2
    H = 2
    W = 3
"""

DIES_ONCE = """
import os
import signal
from pathlib import Path

import attnbench
from impls.ccnet.vectorized import cca_vectorized

MARKER = Path({marker!r})


@attnbench.register("ccnet", kind="user", name="dies_once")
def cca_dies_once(q, k, v):
    if not MARKER.exists():
        MARKER.write_text("died once")
        pid = {pid}
        os.kill(pid, signal.SIGKILL)
    return cca_vectorized(q, k, v)
"""


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def outcome(folder: Path) -> Counter[tuple[str, ...]]:
    """(task, check, status) of checks.csv and (task, pass) of perf.csv, timing values ignored."""
    checks: Counter[tuple[str, ...]] = Counter(
        (r["task"], r["check"], r["status"]) for r in read(folder / "checks.csv")
    )
    perf: Counter[tuple[str, ...]] = Counter((r["task"], r["pass"]) for r in read(folder / "perf.csv"))
    return checks + perf


def test_without_ray_exits_2_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, write_suite: Callable[..., Path], tmp_path: Path, capsys: Any
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    suite = write_suite(ONE_CASE)
    code = cli.main(["run", str(suite), "--executor", "ray", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    assert "--executor ray needs Ray: pip install" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(UsageError, match=re.escape("pip install 'attnbench[ray]'")):
        distributed.ray_executor(argparse.Namespace(), None, 1, None, [])  # type: ignore[arg-type]


def test_default_shards_fill_the_cluster_one_shard_per_threads() -> None:
    assert distributed.default_shards(8, 2) == 4
    assert distributed.default_shards(2, 4) == 1
    assert distributed.default_shards(3, 0) == 3


def test_paths_resolve_on_a_shared_filesystem_or_under_the_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "suites" / "x").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    sent = distributed.portable("suites/x")
    assert sent == f"{tmp_path.resolve() / 'suites' / 'x'}::suites/x"
    assert distributed.locate(sent) == str(tmp_path.resolve() / "suites" / "x")  # same path on the worker
    assert distributed.locate("/elsewhere/suites/x::suites/x") == "suites/x"  # working_dir unpacked elsewhere
    assert distributed.locate(distributed.portable("/")) == "/"


needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed: pip install 'attnbench[ray]'"
)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=2**27)
    yield
    ray.shutdown()


@needs_ray
def test_ray_rows_equal_a_local_run_and_carry_the_worker_fingerprint(
    local_ray: None, write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    suite = write_suite(TINY_CCNET)
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert cli.main(["run", str(suite), "--isolate", "none", "--out", str(local), "--quiet"]) == 0
    assert cli.main(["run", str(suite), "--executor", "ray", "--shards", "2", "--out", str(remote), "--quiet"]) == 0
    assert outcome(remote) == outcome(local)
    workers = distributed._read_workers(remote)
    assert workers and all(tag.endswith("@" + socket.gethostname()) for tag in workers)
    perf = read(remote / "perf.csv")
    assert perf and {r["fingerprint"] for r in perf} <= set(workers)
    tag = next(iter(workers))
    assert tag.split("@")[0] == cli.fingerprint_id(workers[tag])
    done = (remote / "tasks.done").read_text().split()
    assert len(done) == len(set(done))


def planned_keys(suite: Path, impl_file: Path, only: tuple[str, ...]) -> set[str]:
    REGISTRY.load_user_file(impl_file)
    s = load_suite(str(suite))
    return {t.key for t in runner.plan(s, s.profile("quick"), runner.Options(only=only))}


@needs_ray
@pytest.mark.parametrize("isolate", ["none", "process"])
def test_a_killed_worker_has_its_shard_retried_without_losing_or_duplicating_rows(
    local_ray: None, isolate: str, write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    """``none``: the impl kills the Ray worker it runs in; ``process``: it runs in an isolation
    worker and kills its Ray worker (the parent) -- either way the shard's rest is resubmitted."""
    suite = write_suite(ONE_CASE)
    marker = tmp_path / "died"
    pid = "os.getpid()" if isolate == "none" else f"int(os.environ[{distributed.WORKER_PID_ENV!r}])"
    impl = tmp_path / "dies_once.py"
    impl.write_text(textwrap.dedent(DIES_ONCE).format(marker=str(marker), pid=pid))
    out = tmp_path / "out"
    only = ("dies_once", "vectorized")
    argv = ["run", str(suite), "--impl", str(impl), "--only", ",".join(only), "--executor", "ray"]
    code = cli.main([*argv, "--shards", "2", "--isolate", isolate, "--out", str(out), "--quiet"])
    assert marker.exists()  # the worker did die
    rows = read(out / "checks.csv")
    assert code == 0, [r for r in rows if r["status"] != "pass"]
    keys = Counter((r["task"], r["check"]) for r in rows)
    assert max(keys.values()) == 1  # nothing duplicated
    done = (out / "tasks.done").read_text().split()
    assert sorted(done) == sorted(planned_keys(suite, impl, only))  # nothing lost
    assert {r["task"] for r in rows} == set(done)


@needs_ray
def test_resume_with_ray_runs_only_the_missing_tasks(
    local_ray: None, write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    suite = write_suite(ONE_CASE)
    out = tmp_path / "out"
    argv = ["run", str(suite), "--only", "vectorized,ext", "--executor", "ray", "--out", str(out), "--quiet"]
    assert cli.main([*argv, "--isolate", "none"]) == 0
    full = outcome(out)
    done = (out / "tasks.done").read_text().split()
    (out / "tasks.done").write_text("".join(k + "\n" for k in done[: len(done) // 2]))
    assert cli.main([*argv, "--isolate", "none", "--resume"]) == 0
    assert outcome(out) == full
    again = (out / "tasks.done").read_text().split()
    assert sorted(again) == sorted(done)
