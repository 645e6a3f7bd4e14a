"""Compiled residual attention: fused forward and backward ops (``csrc/residual_attention.{h,cpp}``, ``_cuda.cu``).

``torch.ops.attnbench_residual_attention.ran_forward(trunk, mask_logits, kind) -> (out, stats)``
with ``kind`` 0 = mixed, 1 = channel, 2 = spatial and ``stats`` the only thing
kept besides the inputs: nothing (``[0]``) for mixed, the clamped norms
``[B, H, W]`` for channel, (μ, 1/√(σ² + eps)) ``[B, C, 2]`` for spatial
(float32, or float64 for float64 inputs). ``ran_backward(grad_out, trunk,
mask_logits, stats, kind) -> (grad_trunk, grad_mask_logits)`` recomputes f
from m and the statistics, so no f tensor is ever stored. Nothing is compiled
at import.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

import attnbench
from attnbench import build
from attnbench.cases import Case
from impls.residual_attention.mechanism import KINDS, check_kind, make_inputs

_lock = threading.Lock()
_registered = False
KIND_CODE = {kind: i for i, kind in enumerate(KINDS)}


def _stats_shape(trunk: torch.Tensor, kind: int) -> tuple[int, ...]:
    B, C, H, W = trunk.shape
    return {0: (0,), 1: (B, H, W), 2: (B, C, 2)}[kind]


def _fake_forward(trunk: torch.Tensor, mask_logits: torch.Tensor, kind: int) -> tuple[torch.Tensor, torch.Tensor]:
    st = torch.float64 if trunk.dtype == torch.float64 else torch.float32
    return trunk.new_empty(tuple(trunk.shape)), trunk.new_empty(_stats_shape(trunk, kind), dtype=st)


def _fake_backward(
    grad_out: torch.Tensor, trunk: torch.Tensor, mask_logits: torch.Tensor, stats: torch.Tensor, kind: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return trunk.new_empty(tuple(trunk.shape)), trunk.new_empty(tuple(trunk.shape))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    trunk, mask_logits, kind = inputs
    ctx.save_for_backward(trunk, mask_logits, output[1])
    ctx.kind = kind
    ctx.mark_non_differentiable(output[1])


def _backward(ctx: Any, grad_out: torch.Tensor, _grad_stats: Any) -> tuple[torch.Tensor | None, ...]:
    trunk, mask_logits, stats = ctx.saved_tensors
    op = torch.ops.attnbench_residual_attention.ran_backward.default
    dt, dm = build.call_op(op, grad_out, trunk, mask_logits, stats, ctx.kind)
    return dt, dm, None


def ensure_loaded() -> None:
    """Builds/loads the library and registers fake and autograd rules (once)."""
    global _registered
    build.load("residual_attention")
    with _lock:
        if _registered:
            return
        lib = "attnbench_residual_attention"
        torch.library.register_fake(f"{lib}::ran_forward")(_fake_forward)
        torch.library.register_fake(f"{lib}::ran_backward")(_fake_backward)
        build.register_autograd(torch.ops.attnbench_residual_attention.ran_forward.default, _backward, _setup_context)
        _registered = True


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values with a channel stride of 2·H·W (non-contiguous whenever C > 1)."""
    return torch.stack([t, torch.zeros_like(t)], dim=2)[:, :, 0]


def _supports(case: Case, dtype: str, device: str) -> str | None:
    if device == "cpu" and dtype not in ("float32", "float64"):
        return f"ext CPU kernels are float32/float64 only (AT_DISPATCH_FLOATING_TYPES), not {dtype}"
    return None


def _opcheck_samples(case: Case, dtype: torch.dtype, device: str) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    """Forward (one non-contiguous trunk) and backward of the case's kind."""
    ensure_loaded()
    inputs = make_inputs(case)
    trunk, mask = (t.to(device=device, dtype=dtype) for t in inputs.tensors.values())
    kind = KIND_CODE[inputs.kwargs["kind"]]
    trunk_nc = noncontiguous(trunk)
    ops = torch.ops.attnbench_residual_attention
    _, stats = ops.ran_forward(trunk, mask, kind)
    gout = case.randn("gout", *trunk.shape).to(device=device, dtype=dtype)
    return [
        (ops.ran_forward.default, (trunk.clone().requires_grad_(True), mask.clone().requires_grad_(True), kind), {}),
        (ops.ran_forward.default, (trunk_nc.requires_grad_(True), mask, kind), {}),
        (ops.ran_backward.default, (noncontiguous(gout), trunk, mask, stats, kind), {}),
    ]


@attnbench.register(
    "residual_attention",
    kind="ext",
    name="ext",
    available=lambda: build.unavailable_reason("residual_attention"),
    supports=_supports,
    opcheck=_opcheck_samples,
)
def ran_ext(trunk: torch.Tensor, mask_logits: torch.Tensor, kind: str = "mixed") -> torch.Tensor:
    """trunk, mask_logits: [B, C, H, W] -> (1 + f(mask_logits)) ⊙ trunk, [B, C, H, W]."""
    check_kind(kind)
    ensure_loaded()
    out, _ = build.call_op(
        torch.ops.attnbench_residual_attention.ran_forward.default, trunk, mask_logits, KIND_CODE[kind]
    )
    return out  # type: ignore[no-any-return]
