"""Latency with its spread (specs/README.md §8; Google Benchmark / asv habits).

Warm-up calls first; then timed calls until enough samples are collected
(``min_runs`` and ``min_time_s``), bounded by ``max_runs`` and ``max_time_s``.
CUDA work is synchronised before the clock is read. All samples are kept so
that two runs can be compared with a rank test (attnbench.report.compare).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnbench.suite import Timing


@dataclass(frozen=True)
class TimingResult:
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def runs(self) -> int:
        return len(self.samples)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], timing: Timing, device: str = "cpu") -> TimingResult:
    """Times ``fn()`` (which must do the whole pass, e.g. forward + backward)."""
    for _ in range(timing.warmup):
        fn()
    _sync(device)
    samples: list[float] = []
    total = 0.0
    while True:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        elapsed = time.perf_counter() - start
        samples.append(elapsed)
        total += elapsed
        n = len(samples)
        if n >= timing.max_runs:
            break
        if n >= timing.min_runs and (total >= timing.min_time_s or total >= timing.max_time_s):
            break
    return TimingResult(tuple(samples))


def time_interleaved(
    fns: tuple[Callable[[], object], Callable[[], object]], timing: Timing, device: str = "cpu"
) -> tuple[TimingResult, TimingResult]:
    """Times two callables alternately (A B B A ...), so that a slow period of the machine
    falls on both alike; the comparison of the two sample sets is then fair on a machine
    whose speed drifts by more than the effect sought (shared VMs: 1.5-2x over seconds).
    Stops on the same rules as :func:`time_fn`, counted per callable."""
    for _ in range(timing.warmup):
        for fn in fns:
            fn()
    _sync(device)
    samples: tuple[list[float], list[float]] = ([], [])
    total = 0.0
    i = 0
    while True:
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for j in order:
            _sync(device)
            start = time.perf_counter()
            fns[j]()
            _sync(device)
            elapsed = time.perf_counter() - start
            samples[j].append(elapsed)
            total += elapsed / 2
        i += 1
        if i >= timing.max_runs:
            break
        if i >= timing.min_runs and (total >= timing.min_time_s or total >= timing.max_time_s):
            break
    return TimingResult(tuple(samples[0])), TimingResult(tuple(samples[1]))
