"""Run tasks in a reusable worker process, so a crash, a hang or an
out-of-memory in an impl becomes an ``error`` row and the run goes on.

One worker imports torch and the impls once and runs task after task. Workers
come from a ``forkserver`` that preloads torch and the built-in impls: the
parent has run OpenMP (not fork-safe), the fork server has not, and forking
from it makes a replacement worker cheap. The
parent sends a task, waits for its rows with the task's time limit, and
replaces the worker when it dies (segfault, abort, OOM kill) or is killed for
exceeding the limit. A single worker at a time keeps timed tasks from sharing
cores.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from attnbench import runner
from attnbench.registry import REGISTRY
from attnbench.report.csv import CheckRow

_SIGNALS = {
    signal.SIGSEGV: "segmentation fault",
    signal.SIGABRT: "abort",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "floating-point exception",
    signal.SIGILL: "illegal instruction",
    signal.SIGKILL: "killed (SIGKILL; often the out-of-memory killer)",
}


@dataclass(frozen=True)
class WorkerSpec:
    """What a fresh worker needs to rebuild the parent's context."""

    suite_path: str
    profile: str
    options: runner.Options
    user_files: tuple[str, ...]
    threads: int
    memory_limit: int | None


def _limit_memory(limit: int | None) -> None:
    if not limit:
        return
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass


def _worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Worker loop: build the context once, then run tasks until told to stop."""
    _limit_memory(spec.memory_limit)
    import torch

    from attnbench.measure.env import set_threads, verification_mode
    from attnbench.suite import load_suite

    verification_mode()
    set_threads(spec.threads)
    torch.set_num_threads(spec.threads or torch.get_num_threads())
    for f in spec.user_files:
        REGISTRY.load_user_file(f)
    suite = load_suite(spec.suite_path)
    ctx = runner.Context(suite, suite.profile(spec.profile), spec.options)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        task: runner.Task = message
        rows = runner.execute(task, ctx)
        conn.send(("rows", rows))


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        ctx = _mp_context()
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(spec, child), daemon=True)
        self.process.start()
        child.close()
        self.ready = False

    def wait_ready(self, timeout: float = 300.0) -> str | None:
        """``None`` when ready, else why the worker could not start."""
        if self.conn.poll(timeout):
            try:
                kind, _ = self.conn.recv()
                self.ready = kind == "ready"
                return None if self.ready else f"worker failed to start: {kind}"
            except (EOFError, OSError):
                pass
        self.kill()
        return f"worker failed to start ({self.death()})"

    def death(self) -> str:
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is None:
            return "still running"
        if code < 0:
            try:
                sig = signal.Signals(-code)
                return f"worker died: {sig.name} ({_SIGNALS.get(sig, 'signal')})"
            except ValueError:
                return f"worker died: signal {-code}"
        return f"worker exited with code {code}"

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(None)
        self.process.join(timeout=5)
        self.kill()


def crash_row(task: runner.Task, detail: str) -> CheckRow:
    impl = REGISTRY.impls[task.case.mechanism][task.impl]
    return runner._row(task, impl, runner.first_check(task), "error", detail)


_CONTEXT: Any = None


def _mp_context() -> Any:
    global _CONTEXT
    if _CONTEXT is None:
        try:
            _CONTEXT = mp.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(["torch", "attnbench.runner", "attnbench.suite"])
        except ValueError:  # platforms without fork
            _CONTEXT = mp.get_context("spawn")
    return _CONTEXT


BREAKER = 2
"""After this many crashes or timeouts of one impl, its remaining tasks are not run."""


def pool_executor(timeout: float | None, user_files: list[str], spec_base: dict[str, Any]) -> Any:
    """An executor ``(tasks, ctx) -> iterator of (task, rows)`` running tasks in a worker."""

    def execute(tasks: Sequence[runner.Task], ctx: runner.Context) -> Iterator[tuple[runner.Task, list[Any]]]:
        spec = WorkerSpec(
            suite_path=ctx.suite.path,
            profile=ctx.profile.name,
            options=ctx.options,
            user_files=tuple(user_files),
            threads=spec_base["threads"],
            memory_limit=spec_base.get("memory_limit"),
        )
        worker: Worker | None = None
        failures: dict[str, list[str]] = {}
        try:
            for task in tasks:
                impl_key = f"{task.case.mechanism}:{task.impl}"
                seen = failures.get(impl_key, [])
                if len(seen) >= BREAKER:
                    yield (
                        task,
                        [
                            crash_row(
                                task,
                                f"not run: {task.impl} crashed or timed out on {len(seen)} "
                                f"earlier tasks in this run (last: {seen[-1]})",
                            )
                        ],
                    )
                    continue
                if worker is None:
                    worker = Worker(spec)
                    problem = worker.wait_ready()
                    if problem:
                        yield task, [crash_row(task, problem)]
                        worker = None
                        continue
                try:
                    worker.conn.send(task)
                except (OSError, BrokenPipeError):
                    yield task, [crash_row(task, worker.death())]
                    worker = None
                    continue
                start = time.monotonic()
                limit = timeout if timeout else None
                got = None
                while got is None:
                    remaining = None if limit is None else max(0.0, limit - (time.monotonic() - start))
                    if worker.conn.poll(remaining if remaining is not None else 1.0):
                        try:
                            got = worker.conn.recv()
                        except (EOFError, OSError):
                            got = ("dead", worker.death())
                    elif not worker.process.is_alive():
                        got = ("dead", worker.death())
                    elif remaining is not None and remaining <= 0:
                        worker.kill()
                        got = ("dead", f"timed out after {limit:g} s (worker killed; --timeout / suite timeout_s)")
                kind, payload = got
                if kind == "rows":
                    yield task, payload
                else:
                    failures.setdefault(impl_key, []).append(payload)
                    yield task, [crash_row(task, payload)]
                    worker = None
        finally:
            if worker is not None:
                worker.stop()

    return execute


def memory_limit_for_workers(devices: Sequence[str]) -> int | None:
    """On CPU-only runs, cap a worker's address space at 90 % of RAM so a huge
    allocation fails inside the worker (an error row) instead of inviting the
    OOM killer. CUDA needs a large virtual address space, so no cap there."""
    if any(d == "cuda" for d in devices):
        return None
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return int(pages * page * 0.9)
