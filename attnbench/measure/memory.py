"""Peak extra memory of a call and the bytes it saves for backward.

CUDA: the caching allocator's statistics (``reset_peak_memory_stats``;
``max_memory_allocated() − memory_allocated()`` before the call, inputs present).

CPU has no such statistics, so the profiler's allocation events are replayed in
order (``profile_memory=True``): every allocation made through c10's CPU
allocator, inside compiled kernels too, is seen. Scratch memory a kernel keeps
outside that allocator (``std::vector``, stack) is not, so CPU numbers are a
lower bound, as the report says.

Saved-for-backward bytes come from ``saved_tensors_hooks``: the distinct
storages autograd keeps, excluding the inputs themselves.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile


@dataclass(frozen=True)
class MemoryResult:
    peak_bytes: int
    saved_bytes: int | None = None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """The profiler backend prints start/stop lines on fd 2; keep the terminal clean."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def peak_cpu(fn: Callable[[], object]) -> int:
    """Peak of live bytes allocated during ``fn()`` minus what was live before."""
    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = fn()
        del result
    events = prof.profiler.kineto_results.events()  # type: ignore[union-attr]
    deltas = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return peak


def peak_cuda(fn: Callable[[], object], device: str) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del result
    return int(peak)


def peak_extra_bytes(fn: Callable[[], object], device: str) -> int:
    if device.startswith("cuda"):
        return peak_cuda(fn, device)
    return peak_cpu(fn)


def saved_bytes(fn: Callable[[], object], inputs: list[torch.Tensor]) -> int:
    """Bytes of distinct storages autograd saves during ``fn()``, inputs excluded."""
    input_ptrs = {t.untyped_storage().data_ptr() for t in inputs}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in input_ptrs and ptr != 0:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    del result
    return sum(seen.values())
