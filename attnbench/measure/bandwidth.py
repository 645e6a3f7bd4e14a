"""The machine's memory bandwidth, measured once per run with a large copy.

Memory-bound mechanisms (SE, residual attention, samplers) are judged by how
close their achieved bytes/s come to this number (report "Bandwidth").
"""

from __future__ import annotations

import statistics
import time

import torch


def copy_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 7, device: str = "cpu", fresh: bool = False) -> float:
    """Bytes per second of ``dst.copy_(src)`` (counting read + write) on ``device``; median of repeats.

    ``fresh=True`` times ``src.clone()`` instead: a copy into newly allocated memory, which is
    what every op returning a new tensor pays. On the CPU a large allocation comes from fresh
    pages (glibc maps anything over 32 MiB), and touching them first costs page faults: here
    a 51 MiB clone took 58 ms against 11 ms for a copy into a touched buffer.
    """
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if fresh:
            del dst
            dst = src.clone()
        else:
            dst.copy_(src)
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return 2 * n * 4 / statistics.median(samples)
