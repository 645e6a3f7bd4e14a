"""Interleaved CPU timing of the fused mhsa ext against SDPA and the vectorized impl.

Shapes: B = 2, h = 8, d = dv = 32, L = S in {576, 1024}, float32, no mask and a
padding mask (30 % of the keys of every batch row padded). For every sample the
three impls run back to back in a rotating order (A B C, B C A, C A B, ...), so
a drift in machine speed hits all of them alike; the table gives the median of
each and the ratios of the medians. Pin the process (``taskset -c 1``) on a
shared machine.

    taskset -c 1 .venv/bin/python scripts/bench_mhsa.py --threads 1 --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from impls.mhsa import ext
from impls.mhsa.vectorized import attention_vectorized

Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    attn = None if mask is None else ~mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn)


def _ext(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return ext.attention_ext(q, k, v, mask)


def _vectorized(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return attention_vectorized(q, k, v, mask)


IMPLS: dict[str, Fn] = {"ext": _ext, "sdpa": _sdpa, "vectorized": _vectorized}


def _timer(fn: Fn, inputs: tuple[torch.Tensor, ...], mask: torch.Tensor | None, backward: bool) -> Callable[[], float]:
    q, k, v, gout = inputs

    def run() -> float:
        if backward:
            qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
            start = time.perf_counter()
            out = fn(qg, kg, vg, mask)
            torch.autograd.grad(out, (qg, kg, vg), gout)
            return time.perf_counter() - start
        with torch.no_grad():
            start = time.perf_counter()
            fn(q, k, v, mask)
            return time.perf_counter() - start

    return run


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=11, help="interleaved samples per impl and case")
    parser.add_argument("--sizes", type=int, nargs="+", default=[576, 1024])
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ext.ops()  # build / load before timing

    B, h, d, dv = 2, 8, 32, 32
    rows = []
    for size in args.sizes:
        gen = torch.Generator().manual_seed(size)
        q = torch.randn(B, h, size, d, generator=gen) * d**-0.25
        k = torch.randn(B, h, size, d, generator=gen) * d**-0.25
        v = torch.randn(B, h, size, dv, generator=gen)
        gout = torch.randn(B, h, size, dv, generator=gen)
        padding = torch.rand(B, size, generator=gen) < 0.3
        for mask_name, mask in (("no mask", None), ("padding 0.3", padding)):
            for backward in (False, True):
                timers = {name: _timer(IMPLS[name], (q, k, v, gout), mask, backward) for name in args.impls}
                for run in timers.values():  # warm-up
                    run()
                samples: dict[str, list[float]] = {name: [] for name in timers}
                names = list(timers)
                for r in range(args.repeats):
                    shift = r % len(names)
                    for name in names[shift:] + names[:shift]:
                        samples[name].append(timers[name]())
                med = {name: statistics.median(s) for name, s in samples.items()}
                rows.append((size, mask_name, "fwd+bwd" if backward else "fwd", med))

    header = ["L=S", "mask", "pass", *args.impls]
    if "ext" in args.impls:
        header += [f"ext/{name}" for name in args.impls if name != "ext"]
    print(f"threads = {args.threads}, repeats = {args.repeats}, B={B} h={h} d=dv={d}, float32, medians\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for size, mask_name, pass_name, med in rows:
        cells = [str(size), mask_name, pass_name, *(_fmt(med[name]) for name in args.impls)]
        if "ext" in args.impls:
            cells += [f"{med['ext'] / med[name]:.2f}" for name in args.impls if name != "ext"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
