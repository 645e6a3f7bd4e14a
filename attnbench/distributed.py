"""``attnbench run SUITE --executor ray``: one suite's shards on a Ray cluster.

No scheduler of our own: the pending tasks are split with :func:`runner.shard`
(the same deterministic split as ``--shard I/N``), each shard runs as one Ray
task on a worker holding the resources a timed shard needs (``num_cpus`` = the
suite's timing threads, ``num_gpus=1`` when the shard has CUDA tasks), and the
executor yields ``(task, rows)`` to ``cmd_run`` as they arrive, so the files
written are those of a local run.

Streaming: a shard is a Ray *streaming generator* task; it yields one item per
finished task, and the driver multiplexes all shards with ``ray.wait``.

Isolation and timeouts: inside the Ray worker the tasks run through
:func:`attnbench.isolation.pool_executor` (``--isolate process``, the default),
exactly as a local run does, so an impl crash, hang (``--timeout`` / suite
``timeout_s``) or out-of-memory becomes an ``error`` row and the shard goes on.
With ``--isolate none`` tasks run in the Ray worker itself (no timeout then).

Faults: when the Ray worker or its node dies, the shard is resubmitted at most
:data:`MAX_RETRIES` times with only the tasks whose rows have not arrived yet
(rows already streamed are kept and never duplicated; Ray's own task retries
are off because they would rerun the whole shard). When the retries are spent,
the remaining tasks become ``error`` rows naming the cause.

Fingerprints: every row is tagged ``<fingerprint_id>@<host>`` of the worker
that measured it, and each worker's full fingerprint is written to
``<out>/env_workers.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnbench import runner
from attnbench.errors import UsageError

MAX_RETRIES = 2
"""How many times a shard whose worker or node died is resubmitted (remaining tasks only)."""

WORKER_PID_ENV = "ATTNBENCH_RAY_WORKER_PID"
"""Set in a shard's Ray worker (and inherited by its isolation workers): the Ray worker's pid."""

ENV_WORKERS = "env_workers.json"

INSTALL_HINT = "--executor ray needs Ray: pip install 'attnbench[ray]'"


@dataclass(frozen=True)
class ShardSpec:
    """What a Ray worker needs to rebuild the driver's context (all picklable)."""

    suite_path: str
    profile: str
    options: runner.Options
    user_files: tuple[str, ...]
    threads: int
    timeout: float | None
    isolate: str


def worker_tag(env: dict[str, Any]) -> str:
    """``<fingerprint_id>@<host>``: what makes timings comparable, plus which machine."""
    from attnbench.cli import fingerprint_id

    return f"{fingerprint_id(env)}@{env.get('host', '')}"


def portable(path: str) -> str:
    """``ABS::REL``: the driver's absolute path and, when under its cwd, the relative one."""
    p = Path(path).resolve()
    try:
        rel = str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        rel = ""
    return f"{p}::{rel}"


def locate(path: str) -> str:
    """The absolute path where it exists on this worker (shared filesystem), else the path
    relative to the worker's cwd (a Ray ``runtime_env`` ``working_dir`` unpacked elsewhere)."""
    absolute, _, rel = path.partition("::")
    if Path(absolute).exists() or not rel:
        return absolute
    return rel


_CONTEXTS: dict[str, runner.Context] = {}


def _context(spec: ShardSpec) -> runner.Context:
    """The suite context in this Ray worker (cached: Ray reuses worker processes)."""
    key = repr(spec)
    if key not in _CONTEXTS:
        from attnbench.measure.env import set_threads, verification_mode
        from attnbench.registry import REGISTRY
        from attnbench.suite import load_suite

        verification_mode()
        set_threads(spec.threads)
        for user_file in map(locate, spec.user_files):
            if str(Path(user_file).resolve()) not in REGISTRY.user_files:
                REGISTRY.load_user_file(user_file)
        suite = load_suite(locate(spec.suite_path))
        _CONTEXTS[key] = runner.Context(suite, suite.profile(spec.profile), spec.options)
    return _CONTEXTS[key]


def run_shard(spec: ShardSpec, tasks: Sequence[runner.Task]) -> Iterator[tuple[str, Any, Any]]:
    """Body of the Ray task: yields ``("env", tag, fingerprint)`` then ``("rows", task, rows)`` per task."""
    from attnbench.measure.env import fingerprint

    os.environ[WORKER_PID_ENV] = str(os.getpid())
    ctx = _context(spec)
    env = fingerprint(spec.threads)
    tag = worker_tag(env)
    yield ("env", tag, env)
    if spec.isolate == "none":
        execute: Any = runner.iter_rows
    else:
        from attnbench import isolation

        devices = ctx.options.devices or ctx.profile.devices
        execute = isolation.pool_executor(
            timeout=spec.timeout,
            user_files=[locate(f) for f in spec.user_files],
            spec_base={"threads": spec.threads, "memory_limit": isolation.memory_limit_for_workers(devices)},
        )
    for task, rows in execute(list(tasks), ctx):
        for row in rows:
            row.fingerprint = tag
        yield ("rows", task, rows)


@dataclass
class _Shard:
    index: int
    remaining: list[runner.Task]
    num_gpus: int
    attempts: int = 0
    causes: list[str] = field(default_factory=list)
    gen: Any = None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


def default_shards(cluster_cpus: float, threads: int) -> int:
    """One shard per ``threads`` CPUs of the cluster, at least one."""
    return max(1, int(cluster_cpus) // max(1, threads))


def ray_executor(
    args: argparse.Namespace, ctx: runner.Context, threads: int, timeout: float | None, user_files: list[str]
) -> Any:
    """An executor ``(tasks, ctx) -> iterator of (task, rows)`` running shards on Ray."""
    ray = _import_ray()
    isolate = getattr(args, "isolate", "process") or "process"
    if isolate == "none" and timeout is not None:
        raise UsageError("--timeout needs worker processes; drop --isolate none")
    out = Path(args.out) if getattr(args, "out", None) else Path("reports") / ctx.suite.name
    address = getattr(args, "ray_address", None)
    requested = getattr(args, "shards", None)
    resume = bool(getattr(args, "resume", False))

    def execute(tasks: Sequence[runner.Task], ctx: runner.Context) -> Iterator[tuple[runner.Task, list[Any]]]:
        if not tasks:
            return
        spec = ShardSpec(
            suite_path=portable(ctx.suite.path),
            profile=ctx.profile.name,
            options=ctx.options,
            user_files=tuple(portable(f) for f in user_files),
            threads=threads,
            timeout=timeout,
            isolate=isolate,
        )
        started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(
                    address="local",
                    num_cpus=os.cpu_count() or 1,
                    include_dashboard=False,
                    log_to_driver=False,
                    object_store_memory=256 * 2**20,
                )
            started = True
        try:
            yield from _drive(ray, spec, tasks, requested, out, resume)
        finally:
            if started:
                ray.shutdown()

    return execute


def _drive(
    ray: Any, spec: ShardSpec, tasks: Sequence[runner.Task], requested: int | None, out: Path, resume: bool
) -> Iterator[tuple[runner.Task, list[Any]]]:
    from attnbench.isolation import crash_row

    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 1))
    gpus = float(resources.get("GPU", 0))
    count = min(requested or default_shards(cpus, spec.threads), len(tasks))
    # never ask for more than the cluster has: an infeasible Ray task waits forever
    num_cpus = max(1, min(spec.threads, int(cpus)))
    shards = []
    for i in range(1, count + 1):
        part = runner.shard(tasks, i, count)
        if part:
            cuda = any(t.device == "cuda" for t in part) and gpus >= 1
            shards.append(_Shard(i, part, 1 if cuda else 0))
    remote = ray.remote(run_shard)

    def submit(s: _Shard) -> None:
        s.attempts += 1
        s.gen = remote.options(
            num_returns="streaming", num_cpus=num_cpus, num_gpus=s.num_gpus, max_retries=0, retry_exceptions=False
        ).remote(spec, list(s.remaining))

    workers: dict[str, Any] = _read_workers(out) if resume else {}
    _write_workers(out, workers)
    for s in shards:
        submit(s)
    active = {id(s.gen): s for s in shards}
    try:
        while active:
            ready, _ = ray.wait([s.gen for s in active.values()], num_returns=1, timeout=5.0)
            for gen in ready:
                s = active[id(gen)]
                try:
                    ref = next(gen)
                except StopIteration:
                    del active[id(gen)]
                    if s.remaining:  # the generator ended early: should not happen, but never lose tasks
                        cause = "shard ended without rows for these tasks"
                        yield from _fail_or_retry(s, cause, crash_row, submit, active, count)
                    continue
                try:
                    kind, a, b = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    del active[id(gen)]
                    cause = _cause(exc)
                    yield from _fail_or_retry(s, cause, crash_row, submit, active, count)
                    continue
                if kind == "env":
                    if a not in workers:
                        workers[a] = b
                        _write_workers(out, workers)
                    continue
                task, rows = a, b
                keys = {t.key for t in s.remaining}
                if task.key not in keys:
                    continue  # already received from an earlier attempt
                s.remaining = [t for t in s.remaining if t.key != task.key]
                yield task, rows
    finally:
        for s in active.values():
            with contextlib.suppress(Exception):  # best effort on the way out
                ray.cancel(s.gen, force=True)


def _fail_or_retry(
    s: _Shard, cause: str, crash_row: Any, submit: Any, active: dict[int, _Shard], count: int
) -> Iterator[tuple[runner.Task, list[Any]]]:
    s.causes.append(cause)
    if s.attempts <= MAX_RETRIES:
        submit(s)
        active[id(s.gen)] = s
        return
    detail = (
        f"not run: Ray shard {s.index}/{count} failed {s.attempts} times "
        f"(max_retries={MAX_RETRIES}; last: {s.causes[-1]})"
    )
    for task in s.remaining:
        yield task, [crash_row(task, detail)]
    s.remaining = []


def _cause(exc: BaseException) -> str:
    """One line: the exception in the shard (RayTaskError) or what happened to its worker/node."""
    inner = getattr(exc, "cause", None)
    if isinstance(inner, BaseException) and not isinstance(inner, type(exc)):
        return f"{type(inner).__name__}: {' '.join(str(inner).split())[:300]}"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {(lines[0] if lines else '')[:300]}"


def _read_workers(out: Path) -> dict[str, Any]:
    """Worker fingerprints already recorded in ``out`` (``--resume`` keeps them)."""
    path = out / ENV_WORKERS
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return dict(data) if isinstance(data, dict) else {}


def _write_workers(out: Path, workers: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / ENV_WORKERS).write_text(json.dumps(workers, indent=2, sort_keys=True))
