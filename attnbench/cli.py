"""``attnbench run|list|build|compare|report`` (DESIGN.md: command line, exit codes).

Exit codes: 0 everything passed; 1 a correctness check failed; 2 usage or
suite error; 3 performance regression against the baseline; 4 an impl
crashed or timed out (the run still finished). When several apply, 1 wins,
then 4, then 3.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from attnbench import runner
from attnbench.errors import UsageError
from attnbench.measure.bandwidth import copy_bandwidth
from attnbench.measure.env import fingerprint, set_threads, verification_mode
from attnbench.registry import REGISTRY
from attnbench.report.csv import CHECK_HEADER, PERF_HEADER, ResultWriter, read_rows
from attnbench.report.markdown import write_report
from attnbench.suite import Suite, load_suite

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_REGRESSION, EXIT_CRASH = 0, 1, 2, 3, 4

console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)


def exit_code(checks: Sequence[dict[str, str]], regression: bool = False) -> int:
    """1 for an unexpected correctness failure, else 4 for an error, else 3 for a regression."""
    if any(r["status"] == "fail" and not r.get("expected") for r in checks):
        return EXIT_FAIL
    if any(r["status"] == "error" for r in checks):
        return EXIT_CRASH
    if regression:
        return EXIT_REGRESSION
    return EXIT_OK


def _parse_only(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise UsageError(f"--shard {value!r}: expected I/N with 1 <= I <= N, e.g. 1/4") from None
    if not 1 <= i <= n:
        raise UsageError(f"--shard {value!r}: expected I/N with 1 <= I <= N, e.g. 1/4")
    return i, n


def _parse_bytes(value: str | None) -> int | None:
    if value is None:
        return None
    units = {
        "": 1,
        "B": 1,
        "K": 2**10,
        "KB": 2**10,
        "KIB": 2**10,
        "M": 2**20,
        "MB": 2**20,
        "MIB": 2**20,
        "G": 2**30,
        "GB": 2**30,
        "GIB": 2**30,
        "T": 2**40,
        "TB": 2**40,
        "TIB": 2**40,
    }
    text = value.strip().upper()
    num = text.rstrip("BKMGTI")
    unit = text[len(num) :]
    try:
        n = float(num) * units[unit]
    except (ValueError, KeyError):
        raise UsageError(f"--max-memory {value!r}: expected bytes, e.g. 4000000000, 512MiB or 8G") from None
    if n <= 0:
        raise UsageError(f"--max-memory {value!r}: must be positive")
    return int(n)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnbench",
        description="Benchmark and verification harness for attention mechanisms in computer vision.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite: checks, timing, memory, report")
    run.add_argument("suite", help="suite folder (suites/ccnet), its suite.toml, or a bare name")
    run.add_argument(
        "--impl",
        action="append",
        default=[],
        metavar="FILE.py",
        help="a Python file registering impls with @attnbench.register (repeatable)",
    )
    run.add_argument("--only", metavar="IMPL,...", help="run only these impls (comma-separated names)")
    run.add_argument("--device", choices=["cpu", "cuda"], help="override the suite's devices")
    run.add_argument("--profile", default="quick", choices=["quick", "full"], help="grid profile (default quick)")
    run.add_argument("--out", metavar="DIR", help="result folder (default reports/<suite>)")
    run.add_argument("--baseline", metavar="DIR|CSV", help="compare with a stored run (regression gate)")
    run.add_argument("--shard", metavar="I/N", help="run only shard I of N (deterministic split)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    run.add_argument("--timeout", type=float, metavar="S", help="per-task time limit in seconds")
    run.add_argument("--max-memory", metavar="BYTES", help="skip cases predicted to need more (e.g. 8GiB)")
    run.add_argument("--executor", default="local", choices=["local", "ray"], help="where tasks run")
    run.add_argument("--shards", type=int, metavar="N", help="number of shards for --executor ray")
    run.add_argument("--ray-address", metavar="ADDR", help="Ray cluster address (default: start a local one)")
    run.add_argument(
        "--isolate",
        choices=["process", "none"],
        default="process",
        help="run tasks in a reusable worker process (crash/hang isolation; default) or in this process",
    )
    run.add_argument("--force", action="store_true", help="give perf verdicts even across different machines")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    lst = sub.add_parser("list", help="mechanisms, impls and the cases a suite would run")
    lst.add_argument("suite", nargs="?", help="suite to expand (default: list mechanisms and impls)")
    lst.add_argument("--impl", action="append", default=[], metavar="FILE.py")
    lst.add_argument("--profile", default="quick", choices=["quick", "full"])
    lst.add_argument("--only", metavar="IMPL,...")

    rep = sub.add_parser("report", help="rebuild report.md and plots from CSV (merges shard folders)")
    rep.add_argument("dirs", nargs="+", help="result folder(s); several are merged into --out")
    rep.add_argument("--out", metavar="DIR", help="merged result folder (default: the single DIR)")
    rep.add_argument(
        "--benchmark-json",
        metavar="FILE",
        help="also export perf.csv as a pytest-benchmark JSON file (for --benchmark-compare)",
    )

    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return parser


_EXTRA_COMMANDS: list[Any] = []
"""Hooks that add subcommands (build, compare) from their own modules."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        handler = _HANDLERS[args.command]
        return int(handler(args))
    except UsageError as exc:
        console.print(f"[bold red]attnbench: error:[/] {escape(str(exc))}", soft_wrap=True, markup=True)
        return EXIT_USAGE


# -- list -------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    for f in args.impl:
        REGISTRY.load_user_file(f)
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    if not args.suite:
        for mech in REGISTRY.all_mechanisms():
            t = Table(title=f"{mech.name}  ({mech.core})", title_justify="left", show_lines=False)
            for col in ("impl", "kind", "capabilities", "source", "doc"):
                t.add_column(col)
            for impl in REGISTRY.impls_for(mech.name):
                t.add_row(impl.name, impl.kind, impl.capabilities(), _short_path(impl.source), impl.doc)
            out.print(t)
            params = ", ".join(f"{k} ({p.describe()})" for k, p in mech.params.items())
            out.print(f"  case parameters: {params}")
            if mech.modules:
                out.print("  modules: " + ", ".join(f"{m.name} ({m.description})" for m in mech.modules))
            out.print()
        return EXIT_OK
    suite = load_suite(args.suite)
    profile = suite.profile(args.profile)
    only = _parse_only(args.only)
    _check_only(suite, only)
    tasks = runner.plan(suite, profile, runner.Options(only=only))
    t = Table(title=escape(f"{suite.name} [{profile.name}]: {len(tasks)} tasks"), title_justify="left")
    for col in ("task", "impl", "case", "dtype", "device", "runs?"):
        t.add_column(col)
    for task in tasks:
        impl = REGISTRY.impls[task.case.mechanism][task.impl]
        reason = runner.cuda_unavailable_reason(task.device) or impl.unsupported_reason(
            task.case, task.dtype, task.device
        )
        kind = task.kind + (f":{task.detail}" if task.detail else "")
        t.add_row(kind, task.impl, task.case.shape_id, task.dtype, task.device, f"skip: {reason}" if reason else "yes")
    out.print(t)
    return EXIT_OK


def _short_path(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _check_only(suite: Suite, only: tuple[str, ...]) -> None:
    if not only:
        return
    known = {i.name for m in suite.mechanisms for i in REGISTRY.impls_for(m)}
    unknown = [o for o in only if o not in known]
    if unknown:
        raise UsageError(f"--only: unknown impl(s) {', '.join(unknown)}; this suite has: {', '.join(sorted(known))}")


# -- run --------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    for f in args.impl:
        REGISTRY.load_user_file(f)
    suite = load_suite(args.suite)
    profile = suite.profile(args.profile)
    only = _parse_only(args.only)
    _check_only(suite, only)
    shard = _parse_shard(args.shard)
    max_memory = _parse_bytes(args.max_memory) or suite.memory_budget
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout {args.timeout}: must be positive seconds")
    if args.shards is not None and (args.executor != "ray" or args.shards < 1):
        raise UsageError("--shards N (N >= 1) goes with --executor ray; for one shard of a local run use --shard I/N")
    options = runner.Options(only=only, devices=(args.device,) if args.device else None, max_memory=max_memory)
    out = Path(args.out) if args.out else Path("reports") / suite.name
    tasks = runner.plan(suite, profile, options)
    if shard:
        tasks = runner.shard(tasks, *shard)

    verification_mode()
    threads = set_threads(profile.timing.threads)
    done: set[str] = set()
    if args.resume:
        done = resume_state(out)
    else:
        for n in (
            "checks.csv",
            "perf.csv",
            "report.md",
            "compare.csv",
            "compare.md",
            "scaling.csv",
            "env_workers.json",
            DONE_LOG,
        ):
            (out / n).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    env = fingerprint(threads)
    env["suite"] = {
        "name": suite.name,
        "path": suite.path,
        "profile": profile.name,
        "mechanisms": list(suite.mechanisms),
        "shard": args.shard or "",
    }
    env["command"] = "attnbench " + " ".join(sys.argv[1:] if argv_is_cli() else [])
    env["user_impls"] = REGISTRY.user_files
    env["copy_bandwidth_bytes_per_s"] = {d: copy_bandwidth(device=d) for d in _devices_run(profile, options)}
    env["fresh_copy_bandwidth_bytes_per_s"] = {
        d: copy_bandwidth(device=d, fresh=True) for d in _devices_run(profile, options)
    }
    env["fingerprint"] = fingerprint_id(env)
    (out / "env.json").write_text(json.dumps(env, indent=2))

    pending = [t for t in tasks if t.key not in done]
    writer = ResultWriter(out, append=args.resume)
    done_log = open(out / DONE_LOG, "a", encoding="utf-8")  # noqa: SIM115
    ctx = runner.Context(suite, profile, options)
    executor = _executor(args, ctx, threads)
    interrupted = False
    try:
        with _progress(args.quiet) as progress:
            bar = progress.add_task(f"{suite.name} [{profile.name}]", total=len(pending))
            for task, rows in executor(pending, ctx):
                for row in rows:
                    row.fingerprint = row.fingerprint or env["fingerprint"]  # remote workers set their own
                writer.write(rows)
                done_log.write(task.key + "\n")
                done_log.flush()
                progress.update(bar, advance=1, description=f"{task.impl} {task.case.shape_id.split('/', 2)[-1]}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        writer.close()
        done_log.close()
    if interrupted:
        console.print(
            f"\n[yellow]interrupted:[/] partial results are in {out}/checks.csv and {out}/perf.csv; "
            f"continue with: attnbench run {args.suite} --out {out} --resume"
        )
        return 130
    write_report(out)
    checks_rows = read_rows(out / "checks.csv")
    regression = False
    if args.baseline:
        from attnbench.report import compare

        by_key = {(t.impl, t.case.shape_id, t.dtype, t.device): t for t in tasks if t.kind == "case"}

        def again(v: compare.PerfVerdict) -> list[float] | None:
            task = by_key.get((v.impl, v.case, v.dtype, v.device))
            return runner.remeasure(task, ctx, v.pass_) if task else None

        def interleaved(v: compare.PerfVerdict, base_row: dict[str, str]) -> tuple[list[float], list[float]] | None:
            task = by_key.get((v.impl, v.case, v.dtype, v.device))
            old = REGISTRY.impl_with_code(v.mechanism, base_row.get("code", ""))
            if task is None or old is None:
                return None
            return runner.remeasure_interleaved(task, ctx, v.pass_, old)

        regression, fail = compare.gate(
            Path(args.baseline),
            out,
            suite,
            force=args.force,
            console=console,
            remeasure=again,
            interleave=interleaved,
        )
        if fail:
            checks_rows = checks_rows + [{"status": "fail", "expected": "", "check": "baseline"}]
    code = exit_code(checks_rows, regression)
    summary(out, suite.name, profile.name, time.perf_counter() - start, len(done), code)
    return code


def _devices_run(profile: Any, options: runner.Options) -> list[str]:
    return [d for d in (options.devices or profile.devices) if runner.cuda_unavailable_reason(d) is None]


def argv_is_cli() -> bool:
    return bool(sys.argv) and Path(sys.argv[0]).name in ("attnbench", "__main__.py", "cli.py")


def _executor(args: argparse.Namespace, ctx: runner.Context, threads: int) -> Any:
    """In-process with ``--isolate none``; otherwise a reusable worker process (crash/hang isolation)."""
    timeout = args.timeout or ctx.suite.timeout_s
    if args.executor == "ray":
        from attnbench import distributed

        return distributed.ray_executor(args, ctx, threads, timeout, list(REGISTRY.user_files))
    if args.isolate == "none":
        if timeout is not None:
            raise UsageError("--timeout needs worker processes; drop --isolate none")
        return runner.iter_rows
    from attnbench import isolation

    devices = ctx.options.devices or ctx.profile.devices
    return isolation.pool_executor(
        timeout=timeout,
        user_files=list(REGISTRY.user_files),
        spec_base={"threads": threads, "memory_limit": isolation.memory_limit_for_workers(devices)},
    )


DONE_LOG = "tasks.done"


def resume_state(out: Path) -> set[str]:
    """Finished task keys of an interrupted run; rows of unfinished tasks are dropped.

    A task's rows are flushed before its key is appended to ``tasks.done``, so a
    kill between the two leaves rows whose task is not done: they are removed
    and the task runs again, and the final files equal an uninterrupted run's.
    """
    log = out / DONE_LOG
    if not log.exists():
        if (out / "checks.csv").exists():
            raise UsageError(f"--resume: {out} has results but no {DONE_LOG} (not written by this version?)")
        return set()
    done = {line.strip() for line in log.read_text(encoding="utf-8").splitlines() if line.strip()}
    for name, header in (("checks.csv", CHECK_HEADER), ("perf.csv", PERF_HEADER)):
        path = out / name
        if not path.exists():
            continue
        rows = [r for r in read_rows(path) if r.get("task") in done]
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(header))
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in header})
    return done


def fingerprint_id(env: dict[str, Any]) -> str:
    """Short id of the machine/software keys that make timings comparable."""
    from attnbench.measure.env import COMPARABLE_KEYS

    text = "|".join(f"{k}={env.get(k)}" for k in COMPARABLE_KEYS)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class _NullProgress:
    def __enter__(self) -> _NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def update(self, *a: Any, **k: Any) -> None:
        return None


def _progress(quiet: bool) -> Any:
    if quiet:
        return _NullProgress()
    return Progress(
        TextColumn("[bold]{task.description:<60.60}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=not console.is_terminal,
    )


def summary(out: Path, suite: str, profile: str, seconds: float, resumed: int, code: int) -> None:
    checks = read_rows(out / "checks.csv")
    perf = read_rows(out / "perf.csv")
    counts: dict[str, int] = {}
    for r in checks:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    t = Table(
        title=escape(f"{suite} [{profile}] in {seconds:.1f} s") + (f" ({resumed} tasks resumed)" if resumed else ""),
        title_justify="left",
    )
    for col in ("pass", "fail", "skip", "error"):
        t.add_column(col, justify="right")
    t.add_row(*(str(counts.get(s, 0)) for s in ("pass", "fail", "skip", "error")))
    console.print(t)
    fails = [r for r in checks if r["status"] in ("fail", "error") and not r.get("expected")]
    for r in fails[:15]:
        console.print(
            f"  [red]{r['status']}[/] {r['impl']} {r['case']} {r['dtype']} {r['device']} "
            f"[bold]{r['check']}[/]: {r['detail'][:200]}"
        )
    if len(fails) > 15:
        console.print(f"  ... {len(fails) - 15} more in {out}/checks.csv")
    by_case: dict[tuple[str, str, str, str], list[tuple[float, str]]] = {}
    for r in perf:
        by_case.setdefault((r["case"], r["dtype"], r["device"], r["pass"]), []).append(
            (float(r["median_s"]), r["impl"])
        )
    if by_case:
        pt = Table(title="fastest / slowest impl per case", title_justify="left")
        for col in ("case", "dtype", "pass", "fastest", "slowest"):
            pt.add_column(col)
        for (case, dtype, _device, pass_), vals in list(by_case.items())[:40]:
            vals.sort()
            pt.add_row(
                case.split("/", 2)[-1],
                dtype,
                pass_,
                f"{vals[0][1]} {vals[0][0] * 1e3:.3f} ms",
                f"{vals[-1][1]} {vals[-1][0] * 1e3:.3f} ms",
            )
        console.print(pt)
    meaning = {
        0: "all passed",
        1: "correctness failure",
        3: "performance regression",
        4: "an impl crashed or timed out",
    }
    console.print(f"results: {out}/report.md  (exit {code}: {meaning.get(code, '')})")


# -- report -----------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    dirs = [Path(d) for d in args.dirs]
    for d in dirs:
        if not (d / "checks.csv").exists():
            raise UsageError(f"{d}: no checks.csv (not an attnbench result folder)")
    if len(dirs) == 1 and not args.out:
        out = dirs[0]
    else:
        from attnbench.report.merge import merge

        out = Path(args.out) if args.out else Path("reports") / "merged"
        merge(dirs, out)
    path = write_report(out)
    code = exit_code(read_rows(out / "checks.csv"))
    console.print(f"report: {path}")
    if args.benchmark_json:
        from attnbench.report import benchmark_json

        console.print(f"pytest-benchmark JSON: {benchmark_json.export(out, Path(args.benchmark_json))}")
    return code


def _register_extra_commands() -> None:
    from attnbench import build
    from attnbench.report import compare

    _EXTRA_COMMANDS.extend([build.add_command, compare.add_command])
    _HANDLERS["build"] = build.cmd_build
    _HANDLERS["compare"] = compare.cmd_compare


_HANDLERS: dict[str, Any] = {"run": cmd_run, "list": cmd_list, "report": cmd_report}
_register_extra_commands()


def entry() -> None:
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:torch")
    sys.exit(main())


if __name__ == "__main__":
    entry()
