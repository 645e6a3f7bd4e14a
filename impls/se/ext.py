"""Compiled SE: one fused forward op and one backward op (``csrc/se.{h,cpp}``, ``se_cuda.cu``).

``torch.ops.attnbench_se.se_forward(x, w1, b1?, w2, b2?) -> (out, z, u, s)``
returns the pooled means z, hidden units u and gates s ([B, C], [B, Cr],
[B, C]; float32, or float64 for float64 inputs) that the backward needs;
``se_backward(grad_out, x, w1, w2, z, u, s) -> (dx, dw1, db1, dw2, db2)``
implements specs/se.md §2. Nothing is compiled at import: the first call
builds (or loads from the cache) the library and registers the fake and
autograd rules once.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

import attnbench
from attnbench import build
from attnbench.cases import Case
from impls.se.mechanism import bias_or_none, check_hidden, make_inputs

_lock = threading.Lock()
_registered = False


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _fake_forward(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    B, C = x.shape[0], x.shape[1]
    Cr = w1.shape[0]
    st = _stats_dtype(x)
    return (
        x.new_empty(tuple(x.shape)),
        x.new_empty((B, C), dtype=st),
        x.new_empty((B, Cr), dtype=st),
        x.new_empty((B, C), dtype=st),
    )


def _fake_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    z: torch.Tensor,
    u: torch.Tensor,
    s: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    Cr, C = w1.shape
    return (
        x.new_empty(tuple(x.shape)),
        w1.new_empty((Cr, C)),
        w1.new_empty((Cr,)),
        w2.new_empty((C, Cr)),
        w2.new_empty((C,)),
    )


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    x, w1, b1, w2, b2 = inputs
    _, z, u, s = output
    ctx.save_for_backward(x, w1, w2, z, u, s)
    ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
    ctx.mark_non_differentiable(z, u, s)


def _backward(ctx: Any, grad_out: torch.Tensor, *_aux: Any) -> tuple[torch.Tensor | None, ...]:
    x, w1, w2, z, u, s = ctx.saved_tensors
    op = torch.ops.attnbench_se.se_backward.default
    dx, dw1, db1, dw2, db2 = build.call_op(op, grad_out, x, w1, w2, z, u, s)
    return dx, dw1, db1 if ctx.has_b1 else None, dw2, db2 if ctx.has_b2 else None


def ensure_loaded() -> None:
    """Builds/loads the library and registers fake and autograd rules (once)."""
    global _registered
    build.load("se")
    with _lock:
        if _registered:
            return
        torch.library.register_fake("attnbench_se::se_forward")(_fake_forward)
        torch.library.register_fake("attnbench_se::se_backward")(_fake_backward)
        build.register_autograd(torch.ops.attnbench_se.se_forward.default, _backward, _setup_context)
        _registered = True


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values with a channel stride of 2·H·W (non-contiguous whenever C > 1)."""
    return torch.stack([t, torch.zeros_like(t)], dim=2)[:, :, 0]


def _supports(case: Case, dtype: str, device: str) -> str | None:
    if device == "cpu" and dtype not in ("float32", "float64"):
        return f"ext CPU kernels are float32/float64 only (AT_DISPATCH_FLOATING_TYPES), not {dtype}"
    return None


def _opcheck_samples(case: Case, dtype: torch.dtype, device: str) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    """Forward with and without biases (one non-contiguous x), and the backward on saved stats."""
    ensure_loaded()
    t = {k: v.to(device=device, dtype=dtype) for k, v in make_inputs(case).tensors.items()}
    x, w1, w2 = t["x"], t["w1"], t["w2"]
    b1, b2 = bias_or_none(t["b1"]), bias_or_none(t["b2"])
    x_nc = noncontiguous(x)
    fwd = torch.ops.attnbench_se.se_forward.default
    bwd = torch.ops.attnbench_se.se_backward.default

    def grad(*ts: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        return tuple(None if v is None else v.detach().requires_grad_(True) for v in ts)

    _, z, u, s = fwd(x, w1, b1, w2, b2)
    gout = case.randn("gout", *x.shape).to(device=device, dtype=dtype)
    return [
        (fwd, grad(x, w1, b1, w2, b2), {}),
        (fwd, grad(x_nc, w1, None, w2, None), {}),
        (bwd, (noncontiguous(gout), x, w1, w2, z, u, s), {}),
    ]


@attnbench.register(
    "se",
    kind="ext",
    name="ext",
    available=lambda: build.unavailable_reason("se"),
    supports=_supports,
    opcheck=_opcheck_samples,
)
def se_ext(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None
) -> torch.Tensor:
    """x: [B, C, H, W]; w1: [Cr, C]; b1: [Cr] | None; w2: [C, Cr]; b2: [C] | None -> [B, C, H, W]."""
    check_hidden(x.shape[1], w1.shape[0])
    ensure_loaded()
    out, _, _, _ = build.call_op(
        torch.ops.attnbench_se.se_forward.default, x, w1, bias_or_none(b1), w2, bias_or_none(b2)
    )
    return out  # type: ignore[no-any-return]
