"""The compiled spatial transformer: ``torch.ops.attnbench_stn`` (csrc/stn.{h,cpp}, csrc/stn_cuda.cu).

Nothing is built at import time: the first call of an impl builds (or loads from
the cache) the extension, then registers, once, the Python side of the ops:
``register_fake`` (shapes for meta/fake tensors and ``torch.compile``) and
``register_autograd`` (the backward op as the derivative). Forward and backward
are separate ops, as in PyTorch's extension-cpp tutorial.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch

import attnbench
from attnbench import build
from attnbench.cases import Case
from impls.stn.mechanism import affine_inputs, sample_inputs

_lock = threading.Lock()
_registered = False
OpSample = tuple[Any, tuple[Any, ...], dict[str, Any]]


def ops() -> Any:
    """``torch.ops.attnbench_stn`` after building/loading the library and registering its Python side."""
    global _registered
    with _lock:
        if not _registered:
            build.load("stn")
            _register_python_side()
            _registered = True
    return torch.ops.attnbench_stn


def _register_python_side() -> None:
    ns = torch.ops.attnbench_stn

    @torch.library.register_fake("attnbench_stn::bilinear_forward")
    def _(inp: torch.Tensor, grid: torch.Tensor, align_corners: bool) -> torch.Tensor:
        return inp.new_empty((inp.shape[0], inp.shape[1], grid.shape[1], grid.shape[2]))

    @torch.library.register_fake("attnbench_stn::bilinear_backward")
    def _(
        grad_out: torch.Tensor, inp: torch.Tensor, grid: torch.Tensor, align_corners: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return inp.new_empty(inp.shape), grid.new_empty(grid.shape)

    @torch.library.register_fake("attnbench_stn::affine_grid_forward")
    def _(theta: torch.Tensor, H: int, W: int, align_corners: bool) -> torch.Tensor:
        return theta.new_empty((theta.shape[0], H, W, 2))

    @torch.library.register_fake("attnbench_stn::affine_grid_backward")
    def _(grad_grid: torch.Tensor, H: int, W: int, align_corners: bool) -> torch.Tensor:
        return grad_grid.new_empty((grad_grid.shape[0], 2, 3))

    def sample_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        inp, grid, align_corners = inputs
        ctx.save_for_backward(inp, grid)
        ctx.align_corners = align_corners

    def sample_backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        inp, grid = ctx.saved_tensors
        grad_inp, grad_grid = ns.bilinear_backward(grad_out, inp, grid, ctx.align_corners)
        return grad_inp, grad_grid, None

    torch.library.register_autograd("attnbench_stn::bilinear_forward", sample_backward, setup_context=sample_setup)

    def affine_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        _, ctx.H, ctx.W, ctx.align_corners = inputs

    def affine_backward(ctx: Any, grad_grid: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return ns.affine_grid_backward(grad_grid, ctx.H, ctx.W, ctx.align_corners), None, None, None

    torch.library.register_autograd("attnbench_stn::affine_grid_forward", affine_backward, setup_context=affine_setup)


def _available() -> str | None:
    return build.unavailable_reason("stn")


def _supports(case: Case, dtype: str, device: str) -> str | None:
    if device == "cpu" and dtype not in ("float32", "float64"):
        return f"ext CPU kernels are instantiated for float32/float64 only, not {dtype} (half types: CUDA)"
    return None


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """Same values, non-contiguous strides."""
    return t.detach().contiguous(memory_format=torch.channels_last).requires_grad_(t.requires_grad)


def sample_opcheck(case: Case, dtype: torch.dtype, device: str) -> list[OpSample]:
    """Samples for ``torch.library.opcheck``: forward (contiguous and channels_last input) and backward."""
    ns = ops()
    inputs = sample_inputs(case).to(dtype, device)
    inp, grid, ac = inputs.tensors["inp"], inputs.tensors["grid"], case["align_corners"]
    gout = case.randn("gout", inp.shape[0], inp.shape[1], grid.shape[1], grid.shape[2]).to(device, dtype)
    return [
        (ns.bilinear_forward.default, (inp, grid, ac), {}),
        (ns.bilinear_forward.default, (_channels_last(inp), grid, ac), {}),
        (ns.bilinear_backward.default, (gout, inp.detach(), grid.detach(), ac), {}),
        (ns.bilinear_backward.default, (_channels_last(gout), _channels_last(inp.detach()), grid.detach(), ac), {}),
    ]


def affine_opcheck(case: Case, dtype: torch.dtype, device: str) -> list[OpSample]:
    """Samples for ``torch.library.opcheck``: forward (contiguous and transposed θ) and backward."""
    ns = ops()
    inputs = affine_inputs(case).to(dtype, device)
    theta, ac = inputs.tensors["theta"], case["align_corners"]
    Ho, Wo = case["Ho"], case["Wo"]
    strided = theta.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)
    ggrid = case.randn("gout", theta.shape[0], Ho, Wo, 2).to(device, dtype)
    return [
        (ns.affine_grid_forward.default, (theta, Ho, Wo, ac), {}),
        (ns.affine_grid_forward.default, (strided, Ho, Wo, ac), {}),
        (ns.affine_grid_backward.default, (ggrid, Ho, Wo, ac), {}),
    ]


@attnbench.register(
    "stn.bilinear_sample",
    kind="ext",
    name="ext",
    available=_available,
    supports=_supports,
    opcheck=sample_opcheck,
    doc="compiled sampler (C++/OpenMP, CUDA): torch.ops.attnbench_stn.bilinear_forward/backward",
)
def bilinear_sample_ext(inp: torch.Tensor, grid: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """inp: [B, C, H, W]; grid: [B, Ho, Wo, 2] as (x, y) -> [B, C, Ho, Wo], zeros outside."""
    return ops().bilinear_forward(inp, grid, align_corners)  # type: ignore[no-any-return]


@attnbench.register(
    "stn.affine_grid",
    kind="ext",
    name="ext",
    available=_available,
    supports=_supports,
    opcheck=affine_opcheck,
    doc="compiled affine grid (C++/OpenMP, CUDA): torch.ops.attnbench_stn.affine_grid_forward/backward",
)
def affine_grid_ext(theta: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """theta: [B, 2, 3]; size: (B, C, Ho, Wo) -> grid [B, Ho, Wo, 2] as (x, y)."""
    B, _, Ho, Wo = size
    if theta.shape[0] != B:
        raise ValueError(f"affine_grid_ext: theta has batch {theta.shape[0]}, size says {B}")
    return ops().affine_grid_forward(theta, Ho, Wo, align_corners)  # type: ignore[no-any-return]
