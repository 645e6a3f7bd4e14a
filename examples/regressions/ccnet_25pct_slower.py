"""The built-in `vectorized` CCNet impl made 25 % slower: registered under the
same name, it replaces the built-in for this run. Used to prove the gate:
`attnbench run SUITE --baseline BASE --impl this_file.py` exits 3.

Both passes are slowed: the forward spins for a quarter of its own time, and the
backward (the built-in's own autograd graph, run inside a custom Function) for
a quarter of the backward's."""

import time

import torch

import attnbench
from impls.ccnet.vectorized import cca_vectorized


def _spin(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


class _Slower(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        start = time.perf_counter()
        with torch.enable_grad():
            ctx.inputs = tuple(t.detach().requires_grad_(t.requires_grad) for t in (q, k, v))
            ctx.out = cca_vectorized(*ctx.inputs)
        _spin(0.25 * (time.perf_counter() - start))
        return ctx.out.detach()

    @staticmethod
    def backward(ctx, grad):
        start = time.perf_counter()
        wanted = [t for t in ctx.inputs if t.requires_grad]
        got = iter(torch.autograd.grad(ctx.out, wanted, grad, retain_graph=True))  # gradcheck asks twice
        grads = tuple(next(got) if t.requires_grad else None for t in ctx.inputs)
        _spin(0.25 * (time.perf_counter() - start))
        return grads


@attnbench.register("ccnet", kind="vectorized", name="vectorized")
def cca_vectorized_slower(q, k, v):
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _Slower.apply(q, k, v)
    start = time.perf_counter()
    out = cca_vectorized(q, k, v)
    _spin(0.25 * (time.perf_counter() - start))
    return out
