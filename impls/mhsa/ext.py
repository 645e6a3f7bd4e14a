"""Fused (flash-style) attention: the Python side of ``torch.ops.attnbench_mhsa``.

Two ops, forward and backward separate (csrc/mhsa.cpp, csrc/mhsa_cuda.cu, math
in csrc/mhsa.h):

- ``flash_forward(q, k, v, mask?, causal, scale) -> (out [B,h,L,dv], lse [B,h,L])``
  tiles the keys with an online softmax and saves only the per-row log-sum-exp
  (−inf for a fully masked row, whose output is 0);
- ``flash_backward(gout, q, k, v, mask?, out, lse, causal, scale) -> (dq, dk, dv)``
  recomputes the scores from ``lse``; fully masked rows contribute exactly 0.

Neither stores the L×S score matrix: extra memory is O(B·h·L·dv) for the
output plus O(B·h·L) for ``lse``. ``lse`` is float32 for half inputs (CUDA),
else the input dtype; it is not differentiable.

Nothing is compiled at import time: :func:`ops` builds (or loads from the
cache) the library on first use and registers the fake and autograd kernels
once. CPU: float32/float64; CUDA: also float16/bfloat16 with float32 accumulation.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

import attnbench
from attnbench import build
from attnbench.cases import Case

_lock = threading.Lock()
_registered = False


def ops() -> Any:
    """``torch.ops.attnbench_mhsa``, built and registered on first use (raises BuildError)."""
    global _registered
    build.load("mhsa")
    with _lock:
        if not _registered:
            _register()
            _registered = True
    return torch.ops.attnbench_mhsa


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _register() -> None:
    @torch.library.register_fake("attnbench_mhsa::flash_forward")
    def _forward_fake(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, h, L, _ = q.shape
        return q.new_empty(B, h, L, v.shape[-1]), q.new_empty(B, h, L, dtype=_lse_dtype(q.dtype))

    @torch.library.register_fake("attnbench_mhsa::flash_backward")
    def _backward_fake(
        gout: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        out: torch.Tensor,
        lse: torch.Tensor,
        causal: bool,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        q, k, v, mask, causal, scale = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask = mask
        ctx.causal = causal
        ctx.scale = scale

    def backward(ctx: Any, gout: torch.Tensor, glse: torch.Tensor | None) -> tuple[Any, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = torch.ops.attnbench_mhsa.flash_backward(
            gout.contiguous(), q, k, v, ctx.mask, out, lse, ctx.causal, ctx.scale
        )
        return dq, dk, dv, None, None, None

    torch.library.register_autograd("attnbench_mhsa::flash_forward", backward, setup_context=setup_context)


def _supports(case: Case, dtype: str, device: str) -> str | None:
    if device == "cpu" and dtype not in ("float32", "float64"):
        return f"the fused ext's CPU kernels are float32/float64 only ({dtype} runs on CUDA, float32 accumulation)"
    return None


def _available() -> str | None:
    return build.unavailable_reason("mhsa")


def opcheck_samples(case: Case, dtype: torch.dtype, device: str) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    """Small inputs for ``torch.library.opcheck`` on both ops; k is a non-contiguous view."""
    o = ops()
    gen = torch.Generator().manual_seed(case.seed("opcheck"))
    B, h, L, S, d, dv = 2, 2, 5, 7, 4, 3

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)

    q = draw(B, h, L, d).requires_grad_(True)
    k = draw(B, h, d, S).transpose(-2, -1).requires_grad_(True)  # non-contiguous
    v = draw(B, h, S, dv).requires_grad_(True)
    mask = torch.rand(B, S, generator=gen) < 0.3
    mask[-1] = True  # a fully masked batch element
    mask = mask.to(device)
    scale = d**-0.5
    with torch.no_grad():
        out, lse = o.flash_forward(q, k, v, mask, True, scale)
    gout = draw(B, h, L, dv)
    return [
        (o.flash_forward.default, (q, k, v, mask, True, scale), {}),
        (o.flash_forward.default, (q, k, v, None, False, 0.7), {}),
        (o.flash_backward.default, (gout, q.detach(), k.detach(), v.detach(), mask, out, lse, True, scale), {}),
    ]


@attnbench.register(
    "mhsa",
    kind="ext",
    name="ext",
    supports=_supports,
    available=_available,
    opcheck=opcheck_samples,
)
def attention_ext(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Fused online-softmax attention (no L×S buffer); mask bool [B, S], True = ignore."""
    s = scale if scale is not None else q.shape[-1] ** -0.5
    out, _ = ops().flash_forward(q, k, v, key_padding_mask, bool(causal), float(s))
    return out  # type: ignore[no-any-return]
