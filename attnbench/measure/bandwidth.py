"""The machine's memory bandwidth, measured once per run with a large copy.

Memory-bound mechanisms (SE, residual attention, samplers) are judged by how
close their achieved bytes/s come to this number (report "Bandwidth").
"""

from __future__ import annotations

import statistics
import time

import torch


def copy_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 7, device: str = "cpu") -> float:
    """Bytes per second of ``dst.copy_(src)`` (counting read + write) on ``device``; median of repeats."""
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return 2 * n * 4 / statistics.median(samples)
