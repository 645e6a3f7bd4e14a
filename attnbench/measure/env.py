"""The machine and software fingerprint written to env.json.

Two result sets are only comparable for speed when their fingerprints match on
the keys in :data:`COMPARABLE_KEYS` (attnbench.report.compare refuses otherwise).
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

COMPARABLE_KEYS = ("machine", "cpu_model", "cpu_count", "threads", "torch", "cuda_device")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(where: Path | None = None) -> str:
    where = where or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=False
        )
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        return commit + ("-dirty" if dirty and commit else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def fingerprint(threads: int | None = None) -> dict[str, Any]:
    """Versions, CPU/GPU, threads, TF32 flags and the commit of this checkout."""
    cuda = torch.cuda.is_available()
    return {
        "host": socket.gethostname(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else "",
        "cuda_version": torch.version.cuda or "",
        "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "openmp": torch.backends.openmp.is_available(),
        "commit": git_commit(),
        "load_average_1m": _load_average(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _load_average() -> float | None:
    """Other work on the machine when the run started: high values mean noisy timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under ``taskset``), else all."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_threads(threads: int) -> int:
    """Fixes intra-op threads (0: every core this process may use) and returns the number in force.
    More threads than usable cores would make OpenMP barriers wait on descheduled threads."""
    n = threads or usable_cores()
    torch.set_num_threads(n)
    return torch.get_num_threads()


def verification_mode() -> None:
    """Disables TF32 for verification runs (specs/README.md §2)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
