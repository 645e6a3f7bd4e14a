"""Compiled criss-cross attention: C++/OpenMP on CPU, CUDA on GPU (``csrc/``).

The ops (schemas in ``csrc/ccnet.cpp``, layout of shared/specs/ccnet.md §2.1)::

    ca_weight(q, k) -> energy                          [B, H+W-1, H, W]
    ca_weight_backward(grad_energy, q, k) -> (dq, dk)
    ca_map(attn, v) -> out                             [B, C, H, W]
    ca_map_backward(grad_out, attn, v) -> (dattn, dv)
    cca_fused(q, k, v) -> out                          inference, no attention map
    ca_softmax(energy) -> attn                         softmax over dim 1
    ca_softmax_backward(grad_attn, attn) -> grad_energy

Following PyTorch's custom-op conventions, C++ registers only kernels; this file
owns the fake (meta) kernels and the autograd formulas. Nothing is compiled at
import: the first call builds the extension (or loads it from the cache,
:mod:`attnbench.build`), so importing never fails for want of a compiler.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

import attnbench
from attnbench import build
from attnbench.cases import Case

MECH = "ccnet"
LIB = "attnbench_ccnet"
OPS = (
    "ca_weight",
    "ca_weight_backward",
    "ca_map",
    "ca_map_backward",
    "cca_fused",
    "ca_softmax",
    "ca_softmax_backward",
)
CPU_DTYPES = ("float32", "float64")

_lock = threading.Lock()
_registered = False


def ops() -> Any:
    """``torch.ops.attnbench_ccnet`` after building/loading it once and registering its Python side.

    Raises:
        attnbench.build.BuildError: the extension cannot be compiled or loaded here.
    """
    global _registered
    if not _registered:
        with _lock:
            if not _registered:
                build.load(MECH)
                _register_fake_and_autograd()
                _registered = True
    return getattr(torch.ops, LIB)


def _register_fake_and_autograd() -> None:
    """Fake kernels (contiguous outputs, as the real kernels return) and autograd of the two ops."""

    def energy_shape(q: torch.Tensor) -> tuple[int, int, int, int]:
        B, _, H, W = q.shape
        return (B, H + W - 1, H, W)

    @torch.library.register_fake(f"{LIB}::ca_weight")
    def _ca_weight_fake(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        torch._check(q.shape == k.shape, lambda: f"{LIB}::ca_weight: k must be shaped like q {tuple(q.shape)}")
        return q.new_empty(energy_shape(q))

    @torch.library.register_fake(f"{LIB}::ca_weight_backward")
    def _ca_weight_backward_fake(
        grad_energy: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return q.new_empty(q.shape), k.new_empty(k.shape)

    @torch.library.register_fake(f"{LIB}::ca_map")
    def _ca_map_fake(attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v.new_empty(v.shape)

    @torch.library.register_fake(f"{LIB}::ca_map_backward")
    def _ca_map_backward_fake(
        grad_out: torch.Tensor, attn: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return attn.new_empty(attn.shape), v.new_empty(v.shape)

    @torch.library.register_fake(f"{LIB}::cca_fused")
    def _cca_fused_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v.new_empty(v.shape)

    @torch.library.register_fake(f"{LIB}::ca_softmax")
    def _ca_softmax_fake(energy: torch.Tensor) -> torch.Tensor:
        return energy.new_empty(energy.shape)

    @torch.library.register_fake(f"{LIB}::ca_softmax_backward")
    def _ca_softmax_backward_fake(grad_attn: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        return attn.new_empty(attn.shape)

    def softmax_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(output)

    def softmax_backward(ctx: Any, grad_attn: torch.Tensor) -> torch.Tensor:
        (attn,) = ctx.saved_tensors
        return getattr(torch.ops, LIB).ca_softmax_backward(grad_attn, attn)  # type: ignore[no-any-return]

    def weight_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        q, k = inputs
        ctx.save_for_backward(q, k)

    def weight_backward(ctx: Any, grad_energy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = ctx.saved_tensors
        dq, dk = getattr(torch.ops, LIB).ca_weight_backward(grad_energy, q, k)
        return dq, dk

    def map_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        attn, v = inputs
        ctx.save_for_backward(attn, v)

    def map_backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attn, v = ctx.saved_tensors
        dattn, dv = getattr(torch.ops, LIB).ca_map_backward(grad_out, attn, v)
        return dattn, dv

    torch.library.register_autograd(f"{LIB}::ca_weight", weight_backward, setup_context=weight_setup)
    torch.library.register_autograd(f"{LIB}::ca_map", map_backward, setup_context=map_setup)
    torch.library.register_autograd(f"{LIB}::ca_softmax", softmax_backward, setup_context=softmax_setup)


def unavailable_reason() -> str | None:
    """Why the extension cannot be used here (compiler missing or failing), or ``None``."""
    reason = build.unavailable_reason(MECH)
    if reason is None:
        ops()
    return reason


def has_cuda_kernels() -> bool:
    return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"{LIB}::ca_weight", "CUDA"))


def supports(case: Case, dtype: str, device: str) -> str | None:
    """CPU kernels: float32/float64. CUDA kernels: all four dtypes, where they were built."""
    if device == "cpu" and dtype not in CPU_DTYPES:
        return f"ext CPU kernels are float32/float64 only (float16/bfloat16 run on CUDA), not {dtype}"
    if device == "cuda" and not has_cuda_kernels():
        return "ext was built without CUDA kernels (needs a CUDA build of torch, a GPU and nvcc at build time)"
    return None


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as a non-contiguous view (H and W strides swapped)."""
    return t.transpose(2, 3).contiguous().transpose(2, 3)


def opcheck_samples(case: Case, dtype: torch.dtype, device: str) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    """One ``torch.library.opcheck`` sample per op; ca_weight and ca_map get non-contiguous inputs.

    Inputs of ca_weight, ca_map and ca_softmax require grad (their autograd registration is tested);
    the backward and fused ops have no autograd, so theirs do not.
    """
    from impls.ccnet.mechanism import make_inputs

    o = ops()
    inputs = make_inputs(case).to(dtype, device)
    q, k, v = (inputs.tensors[n].detach() for n in ("q", "k", "v"))
    with torch.no_grad():
        energy = o.ca_weight(q, k)
        attn = o.ca_softmax(energy)
    grad_energy = case.randn("gout_energy", *attn.shape).to(dtype=dtype, device=device)
    grad_out = case.randn("gout", *v.shape).to(dtype=dtype, device=device)

    def grad(t: torch.Tensor) -> torch.Tensor:
        return t.detach().requires_grad_()

    return [
        (o.ca_weight.default, (grad(noncontiguous(q)), grad(k)), {}),
        (o.ca_weight_backward.default, (grad_energy, q, k), {}),
        (o.ca_map.default, (grad(attn), grad(noncontiguous(v))), {}),
        (o.ca_map_backward.default, (grad_out, attn, v), {}),
        (o.cca_fused.default, (q, k, v), {}),
        (o.ca_softmax.default, (grad(energy),), {}),
        (o.ca_softmax_backward.default, (grad_energy, attn), {}),
    ]


@attnbench.register(
    "ccnet",
    kind="ext",
    name="ext",
    available=unavailable_reason,
    supports=supports,
    opcheck=opcheck_samples,
    doc="compiled ops: ca_weight + softmax + ca_map with explicit backward ops; fused op for inference",
)
def cca_ext(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k: [B, Cq, H, W]; v: [B, C, H, W] -> [B, C, H, W].

    With gradients: energy = ca_weight(q, k); attn = ca_softmax(energy) (over dim 1);
    out = ca_map(attn, v). Without: cca_fused, which never materialises the
    [B, H+W-1, H, W] map.
    """
    o = ops()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return o.ca_map(o.ca_softmax(o.ca_weight(q, k)), v)  # type: ignore[no-any-return]
    return o.cca_fused(q, k, v)  # type: ignore[no-any-return]
