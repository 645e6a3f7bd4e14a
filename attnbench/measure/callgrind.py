"""Deterministic cost: instruction counts under valgrind's callgrind.

Wall time on a shared 2-core machine drifts by 2–20 % between runs; the number
of instructions a call executes varies by ~0.2 %. A suite opts in with
``[regression] callgrind = true`` and tags the small cases to count with
``tags = ["callgrind"]``; perf.csv then has an ``instructions`` column and
``compare`` judges those rows by it (threshold ``instr_threshold``, 1 %).
It costs about a minute per (impl, case, pass): use it for a few small CI
cases, not for grids. Instruction counts miss memory-bound effects (cache
misses cost time, not instructions) and multithreading: a faster kernel that
executes more instructions reads as SLOWER, so keep wall-time gates too.

Uses ``torch.utils.benchmark.Timer.collect_callgrind``, which starts a
subprocess under valgrind; the subprocess rebuilds the call from the case.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any


def unavailable_reason() -> str | None:
    if shutil.which("valgrind") is None:
        return "valgrind is not installed (apt-get install valgrind): no instruction counts"
    return None


def _target(
    mechanism: str,
    impl: str,
    core: str,
    params_json: str,
    tags: list[str],
    dtype: str,
    pass_: str,
    user_files: list[str],
) -> Any:
    """Rebuilt inside the valgrind subprocess: a closure doing one pass of the impl."""
    import torch

    from attnbench import runner
    from attnbench.cases import DTYPES, Case
    from attnbench.registry import REGISTRY

    torch.set_num_threads(1)
    REGISTRY.discover()
    for f in user_files:
        REGISTRY.load_user_file(f)
    case = Case(mechanism, core, json.loads(params_json), tags=frozenset(tags))
    the_impl = REGISTRY.impls[mechanism][impl]
    inputs = runner.case_inputs(case).to(DTYPES[dtype], "cpu")
    return runner._pass_callable(pass_, runner.core_function(the_impl, case), inputs, case, impl)


def instructions(
    mechanism: str,
    impl: str,
    core: str,
    params: dict[str, Any],
    tags: frozenset[str],
    dtype: str,
    pass_: str,
    user_files: list[str],
    number: int = 5,
) -> int:
    """Instructions per call (callgrind, denoised, one thread)."""
    from torch.utils.benchmark import Timer

    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    setup = (
        "from attnbench.measure.callgrind import _target\n"
        f"fn = _target({mechanism!r}, {impl!r}, {core!r}, {json.dumps(params)!r}, {sorted(tags)!r}, "
        f"{dtype!r}, {pass_!r}, {user_files!r})\nfn()"
    )
    timer = Timer(stmt="fn()", setup=setup, num_threads=1)
    stats = timer.collect_callgrind(number=number, repeats=None, collect_baseline=False, retain_out_file=False)
    return int(stats.counts(denoise=True)) // number


@functools.cache
def _check_once() -> str | None:
    return unavailable_reason()
