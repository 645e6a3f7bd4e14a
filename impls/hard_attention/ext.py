"""Compiled hard-attention ops (``csrc/``): glimpse and hard_select, CPU and CUDA.

Nothing is built at import: the first call of an ext impl compiles (or loads
from the cache) ``csrc/*.cpp`` via :func:`attnbench.build.load`, then registers
the fake (meta) kernels and the autograd formulas once. Forward and backward are
separate ops; backward ops are what ``register_autograd`` calls.

``sample_location`` and ``reinforce_loss`` are O(B) elementwise formulas with
nothing to fuse: they have naive, vectorized and peer impls only.
"""

from __future__ import annotations

from typing import Any

import torch

import attnbench
from attnbench import build
from attnbench.cases import Case

MECH = "hard_attention"
_registered = False


def ops() -> Any:
    """``torch.ops.attnbench_hard_attention`` after building/loading the library."""
    build.load(MECH)
    _register_python_side()
    return torch.ops.attnbench_hard_attention


def _register_python_side() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    lib = "attnbench_hard_attention"

    @torch.library.register_fake(f"{lib}::glimpse_forward")
    def _glimpse_fake(x: torch.Tensor, loc: torch.Tensor, size: int, scales: int) -> torch.Tensor:
        B, C = x.shape[0], x.shape[1]
        return x.new_empty((B, scales * C, size, size))

    @torch.library.register_fake(f"{lib}::glimpse_backward")
    def _glimpse_bwd_fake(
        grad_out: torch.Tensor, loc: torch.Tensor, H: int, W: int, size: int, scales: int
    ) -> torch.Tensor:
        return grad_out.new_empty((grad_out.shape[0], grad_out.shape[1] // scales, H, W))

    @torch.library.register_fake(f"{lib}::hard_select_forward")
    def _select_fake(
        logits: torch.Tensor, values: torch.Tensor, gumbel: torch.Tensor, tau: float, straight_through: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, D = values.shape
        return values.new_empty((B, D)), values.new_empty((B,), dtype=torch.int64)

    @torch.library.register_fake(f"{lib}::hard_select_backward")
    def _select_bwd_fake(
        grad_out: torch.Tensor,
        logits: torch.Tensor,
        values: torch.Tensor,
        gumbel: torch.Tensor,
        index: torch.Tensor,
        tau: float,
        straight_through: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return logits.new_empty(tuple(logits.shape)), values.new_empty(tuple(values.shape))

    def glimpse_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, loc, size, scales = inputs
        ctx.save_for_backward(loc)
        ctx.H, ctx.W, ctx.size, ctx.scales = x.shape[2], x.shape[3], size, scales

    def glimpse_backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        (loc,) = ctx.saved_tensors
        grad_x = torch.ops.attnbench_hard_attention.glimpse_backward(grad_out, loc, ctx.H, ctx.W, ctx.size, ctx.scales)
        return grad_x, None, None, None  # no gradient for loc (specs §2.1)

    torch.library.register_autograd(f"{lib}::glimpse_forward", glimpse_backward, setup_context=glimpse_setup)

    def select_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        logits, values, gumbel, tau, straight_through = inputs
        _, index = output
        ctx.save_for_backward(logits, values, gumbel, index)
        ctx.tau, ctx.straight_through = tau, straight_through
        ctx.mark_non_differentiable(index)

    def select_backward(ctx: Any, grad_out: torch.Tensor, grad_index: Any) -> tuple[Any, ...]:
        logits, values, gumbel, index = ctx.saved_tensors
        grad_logits, grad_values = torch.ops.attnbench_hard_attention.hard_select_backward(
            grad_out, logits, values, gumbel, index, ctx.tau, ctx.straight_through
        )
        return (grad_logits if ctx.straight_through else None), grad_values, None, None, None

    torch.library.register_autograd(f"{lib}::hard_select_forward", select_backward, setup_context=select_setup)


def available() -> str | None:
    return build.unavailable_reason(MECH)


def cpu_float_only(case: Case, dtype: str, device: str) -> str | None:
    if device == "cpu" and dtype not in ("float32", "float64"):
        return f"ext CPU kernels are instantiated for float32/float64 only, not {dtype} (CUDA: all four)"
    return None


def _glimpse_samples(case: Case, dtype: torch.dtype, device: str) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    o = ops()
    gen = torch.Generator().manual_seed(case.seed("opcheck"))
    x = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64).to(device, dtype)
    loc = torch.tensor([[0.2, -0.9], [1.0, -1.0]], dtype=torch.float64).to(device, dtype)
    x_nc = torch.randn(2, 5, 7, 3, generator=gen, dtype=torch.float64).to(device, dtype).permute(0, 3, 1, 2)
    g = torch.randn(2, 6, 3, 3, generator=gen, dtype=torch.float64).to(device, dtype)
    return [
        (o.glimpse_forward.default, (x.requires_grad_(), loc, 3, 2), {}),
        (o.glimpse_forward.default, (x_nc.requires_grad_(), loc, 2, 3), {}),
        (o.glimpse_backward.default, (g, loc, 5, 7, 3, 2), {}),
    ]


def _select_samples(case: Case, dtype: torch.dtype, device: str) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    o = ops()
    gen = torch.Generator().manual_seed(case.seed("opcheck"))

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device, dtype)

    logits, values, gumbel = randn(3, 5), randn(3, 5, 4), randn(3, 5)
    values_nc = randn(3, 4, 5).transpose(1, 2)
    index = (logits + gumbel).argmax(-1)
    return [
        (o.hard_select_forward.default, (logits.requires_grad_(), values.requires_grad_(), gumbel, 0.5, True), {}),
        (o.hard_select_forward.default, (logits, values_nc.requires_grad_(), gumbel, 1.0, False), {}),
        (o.hard_select_backward.default, (randn(3, 4), logits.detach(), values.detach(), gumbel, index, 0.5, True), {}),
    ]


@attnbench.register(
    "hard_attention.glimpse",
    kind="ext",
    name="ext",
    available=available,
    supports=cpu_float_only,
    opcheck=_glimpse_samples,
    doc="compiled glimpse: CPU at::parallel_for / CUDA, gather backward (deterministic)",
)
def glimpse_ext(x: torch.Tensor, loc: torch.Tensor, size: int, scales: int) -> torch.Tensor:
    """x: [B, C, H, W]; loc: [B, 2] -> [B, scales·C, size, size] (no gradient for loc)."""
    return ops().glimpse_forward(x, loc.detach(), size, scales)  # type: ignore[no-any-return]


@attnbench.register(
    "hard_attention.hard_select",
    kind="ext",
    name="ext",
    available=available,
    supports=cpu_float_only,
    opcheck=_select_samples,
    doc="compiled Gumbel-max gather + one-hot / straight-through backward",
)
def hard_select_ext(
    logits: torch.Tensor,
    values: torch.Tensor,
    gumbel: torch.Tensor,
    tau: float = 1.0,
    straight_through: bool = False,
) -> torch.Tensor:
    """logits, gumbel: [B, N]; values: [B, N, D] -> [B, D]."""
    out, _ = ops().hard_select_forward(logits, values, gumbel, float(tau), bool(straight_through))
    return out  # type: ignore[no-any-return]
