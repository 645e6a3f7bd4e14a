"""Interleaved CPU timing of the non-local and DANet PAM ext against the vectorized impls.

Non-local: B = 2, Ck = Cv = C/2 for C in ``--channels``, H = W in ``--sizes``, keys
at full resolution and 2x2-subsampled (Hk = H/2), all four modes (``gaussian`` with
scale Ck^-1/2). PAM: B = 2, Cq = 64, C = 512, H = W in ``--pam-sizes``. float32.
For every sample the two impls run back to back, in alternating order (A B, B A,
...), so a drift in machine speed hits both alike; the table gives the median of
each and the ratio vectorized/ext (> 1: the ext is faster). ``fwd`` runs under
``no_grad``; ``fwd+bwd`` is the forward with autograd plus ``autograd.grad`` of
all inputs. Then the CPU allocator peak (``peak_cpu``) of the no-grad forward at
the largest non-local and PAM shapes. Pin the process on a shared machine:

    taskset -c 1 .venv/bin/python scripts/bench_nonlocal_danet.py --threads 1 --repeats 7
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from attnbench.measure.memory import peak_cpu
from impls.danet import ext as danet_ext
from impls.danet.vectorized import pam_vectorized
from impls.non_local import ext as nl_ext
from impls.non_local.vectorized import non_local_vectorized

Fn = Callable[..., torch.Tensor]
MODES = ("embedded_gaussian", "gaussian", "dot", "concat")


def _timer(fn: Fn, args: tuple[torch.Tensor, ...], gout: torch.Tensor, backward: bool) -> Callable[[], float]:
    def run() -> float:
        if backward:
            leaves = tuple(t.detach().requires_grad_(True) for t in args)
            start = time.perf_counter()
            out = fn(*leaves)
            torch.autograd.grad(out, leaves, gout)
            return time.perf_counter() - start
        with torch.no_grad():
            start = time.perf_counter()
            fn(*args)
            return time.perf_counter() - start

    return run


def _interleaved(ext: Callable[[], float], vec: Callable[[], float], repeats: int) -> tuple[float, float]:
    ext(), vec()  # warm-up
    e: list[float] = []
    v: list[float] = []
    for r in range(repeats):
        if r % 2 == 0:
            e.append(ext())
            v.append(vec())
        else:
            v.append(vec())
            e.append(ext())
    return statistics.median(e), statistics.median(v)


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _nl_inputs(
    B: int, C: int, H: int, sub: bool, mode: str, gen: torch.Generator
) -> tuple[tuple[torch.Tensor, ...], dict[str, Any]]:
    Ck = Cv = C // 2
    Hk = H // 2 if sub else H
    theta = torch.randn(B, Ck, H, H, generator=gen) * Ck**-0.25
    phi = torch.randn(B, Ck, Hk, Hk, generator=gen) * Ck**-0.25
    g = torch.randn(B, Cv, Hk, Hk, generator=gen)
    args: tuple[torch.Tensor, ...] = (theta, phi, g)
    if mode == "concat":
        args += (torch.randn(2 * Ck, generator=gen) * Ck**-0.5,)
    kwargs = {"mode": mode, "scale": Ck**-0.5 if mode == "gaussian" else None}
    return args, kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved samples per impl and case")
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 56], help="non-local H = W")
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 256, 512], help="non-local C (Ck = Cv = C/2)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--pam-sizes", type=int, nargs="*", default=[32, 64], help="PAM H = W (C = 512, Cq = 64)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    nl_ext._ops()  # build / load before timing
    danet_ext._ops()
    B = args.batch

    print(f"threads = {args.threads}, repeats = {args.repeats}, B = {B}, float32, interleaved medians\n")
    print("| mechanism | shape | pass | ext | vectorized | vec/ext |")
    print("|---|---|---|---|---|---|")
    for mode in args.modes:
        for C in args.channels:
            for H in args.sizes:
                for sub in (False, True):
                    gen = torch.Generator().manual_seed(H * 1000 + C)
                    inputs, kwargs = _nl_inputs(B, C, H, sub, mode, gen)
                    gout = torch.randn(B, C // 2, H, H, generator=gen)

                    def ext_fn(*t: torch.Tensor, kw: dict[str, Any] = kwargs) -> torch.Tensor:
                        return nl_ext.non_local_ext(*t, **kw)

                    def vec_fn(*t: torch.Tensor, kw: dict[str, Any] = kwargs) -> torch.Tensor:
                        return non_local_vectorized(*t, **kw)

                    keys = f"{H // 2}x{H // 2}" if sub else f"{H}x{H}"
                    for backward in (False, True):
                        e, v = _interleaved(
                            _timer(ext_fn, inputs, gout, backward), _timer(vec_fn, inputs, gout, backward), args.repeats
                        )
                        shape = f"C={C} {H}x{H} keys {keys}"
                        pass_name = "fwd+bwd" if backward else "fwd"
                        print(f"| nonlocal {mode} | {shape} | {pass_name} | {_fmt(e)} | {_fmt(v)} | {v / e:.2f} |")
    for H in args.pam_sizes:
        gen = torch.Generator().manual_seed(H)
        q = torch.randn(B, 64, H, H, generator=gen) * 64**-0.25
        k = torch.randn(B, 64, H, H, generator=gen) * 64**-0.25
        vv = torch.randn(B, 512, H, H, generator=gen)
        gout = torch.randn(B, 512, H, H, generator=gen)
        for backward in (False, True):
            e, v = _interleaved(
                _timer(danet_ext.pam_ext, (q, k, vv), gout, backward),
                _timer(pam_vectorized, (q, k, vv), gout, backward),
                args.repeats,
            )
            pass_name = "fwd+bwd" if backward else "fwd"
            print(f"| danet.pam | C=512 Cq=64 {H}x{H} | {pass_name} | {_fmt(e)} | {_fmt(v)} | {v / e:.2f} |")

    if args.no_memory:
        return
    print("\nPeak CPU-allocator memory of the no-grad forward (attnbench.measure.memory.peak_cpu)\n")
    print("| mechanism | shape | ext MiB | vectorized MiB |")
    print("|---|---|---|---|")
    H, C = max(args.sizes), min(args.channels)
    for mode in args.modes:
        inputs, kwargs = _nl_inputs(B, C, H, False, mode, torch.Generator().manual_seed(0))
        with torch.no_grad():
            pe = peak_cpu(functools.partial(nl_ext.non_local_ext, *inputs, **kwargs))
            pv = peak_cpu(functools.partial(non_local_vectorized, *inputs, **kwargs))
        print(f"| nonlocal {mode} | B={B} C={C} {H}x{H} keys {H}x{H} | {pe / 2**20:.2f} | {pv / 2**20:.2f} |")
    if args.pam_sizes:
        H = max(args.pam_sizes)
        gen = torch.Generator().manual_seed(0)
        t = (torch.randn(B, 64, H, H, generator=gen), torch.randn(B, 64, H, H, generator=gen))
        vv = torch.randn(B, 512, H, H, generator=gen)
        with torch.no_grad():
            pe = peak_cpu(lambda: danet_ext.pam_ext(*t, vv))
            pv = peak_cpu(lambda: pam_vectorized(*t, vv))
        print(f"| danet.pam | B={B} C=512 Cq=64 {H}x{H} | {pe / 2**20:.2f} | {pv / 2**20:.2f} |")


if __name__ == "__main__":
    main()
