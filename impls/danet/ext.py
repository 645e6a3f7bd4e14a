"""Compiled DANet cores: ``torch.ops.attnbench_danet.{pam,cam}_{forward,backward}``.

Built lazily on the first call (``attnbench.build.load``); importing never needs a compiler.

- PAM: keys in tiles of ``key_block`` (default 256) with an online softmax; the
  forward saves only the per-row log-sum-exp, the backward recomputes the scores
  tile by tile (flash-attention style). No N×N matrix is stored, with or without
  autograd: extra memory is O(N·(tile + C)), linear in HW.
- CAM: E = X Xᵀ and out = A X are batched matmuls (BLAS / cuBLAS); the row
  softmax ``softmax(rowmax − E)`` and its backward are the kernels of
  csrc/danet.h. A [B, C, C] is small and saved for backward.
"""

from __future__ import annotations

from typing import Any

import torch

import attnbench
from attnbench import build
from attnbench.cases import Case
from impls.danet.mechanism import cam_inputs, check_sign, pam_inputs

PKG = "danet"
DEFAULT_KEY_BLOCK = 256
_registered = False


def _ops() -> Any:
    """Builds/loads the library once and registers fake and autograd kernels once."""
    global _registered
    build.load(PKG)
    ops = torch.ops.attnbench_danet
    if not _registered:
        _register(ops)
        _registered = True
    return ops


def _stats_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def _register(ops: Any) -> None:
    @torch.library.register_fake("attnbench_danet::pam_forward")
    def _pam_forward_fake(q, k, v, key_block):  # type: ignore[no-untyped-def]
        B, _, H, W = q.shape
        return v.new_empty(v.shape), q.new_empty((B, H * W), dtype=_stats_dtype(q))

    @torch.library.register_fake("attnbench_danet::pam_backward")
    def _pam_backward_fake(grad_out, q, k, v, out, lse, key_block):  # type: ignore[no-untyped-def]
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    @torch.library.register_fake("attnbench_danet::cam_forward")
    def _cam_forward_fake(x, sign):  # type: ignore[no-untyped-def]
        B, C = x.shape[:2]
        return x.new_empty(x.shape), x.new_empty((B, C, C), dtype=_stats_dtype(x))

    @torch.library.register_fake("attnbench_danet::cam_backward")
    def _cam_backward_fake(grad_out, x, attn, sign):  # type: ignore[no-untyped-def]
        return x.new_empty(x.shape)

    def pam_setup(ctx, inputs, output):  # type: ignore[no-untyped-def]
        q, k, v, key_block = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.key_block = key_block

    def pam_backward(ctx, grad_out, grad_lse):  # type: ignore[no-untyped-def]
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ops.pam_backward(grad_out.contiguous(), q, k, v, out, lse, ctx.key_block)
        return dq, dk, dv, None

    def cam_setup(ctx, inputs, output):  # type: ignore[no-untyped-def]
        x, sign = inputs
        _, attn = output
        ctx.save_for_backward(x, attn)
        ctx.sign = sign

    def cam_backward(ctx, grad_out, grad_attn):  # type: ignore[no-untyped-def]
        x, attn = ctx.saved_tensors
        return ops.cam_backward(grad_out.contiguous(), x, attn, ctx.sign), None

    torch.library.register_autograd("attnbench_danet::pam_forward", pam_backward, setup_context=pam_setup)
    torch.library.register_autograd("attnbench_danet::cam_forward", cam_backward, setup_context=cam_setup)


def pam_ext_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_block: int = DEFAULT_KEY_BLOCK) -> torch.Tensor:
    """The ext PAM with an explicit key tile (``key_block ≥ H·W``: one tile, i.e. unfused softmax)."""
    out, _ = _ops().pam_forward(q, k, v, int(key_block))
    return out  # type: ignore[no-any-return]


def _supports(case: Case, dtype: str, device: str) -> str | None:
    if device == "cpu" and dtype not in ("float32", "float64"):
        return f"ext CPU kernels are instantiated for float32 and float64 only, not {dtype}"
    return None


def _strided(x: torch.Tensor) -> torch.Tensor:
    """The same values behind non-contiguous (channels-last) strides."""
    return x.detach().permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2).requires_grad_(x.requires_grad)


def _pam_opcheck(case: Case, dtype: torch.dtype, device: str) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    ops = _ops()
    t = pam_inputs(case).to(dtype, device).tensors
    q, k, v = t["q"], t["k"], t["v"]
    plain = [x.detach() for x in (q, k, v)]
    with torch.no_grad():
        out, lse = ops.pam_forward(*plain, 2)
    gout = torch.randn(out.shape, dtype=torch.float64, generator=case.generator("gout")).to(dtype).to(device)
    return [
        (ops.pam_forward.default, (q, k, v, 2), {}),
        (ops.pam_forward.default, (_strided(q), _strided(k), _strided(v), DEFAULT_KEY_BLOCK), {}),
        (ops.pam_backward.default, (gout, *plain, out, lse, 2), {}),
    ]


def _cam_opcheck(case: Case, dtype: torch.dtype, device: str) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    ops = _ops()
    inputs = cam_inputs(case).to(dtype, device)
    x = inputs.tensors["x"]
    sign = inputs.kwargs.get("sign", "code")
    with torch.no_grad():
        out, attn = ops.cam_forward(x.detach(), sign)
    gout = torch.randn(out.shape, dtype=torch.float64, generator=case.generator("gout")).to(dtype).to(device)
    return [
        (ops.cam_forward.default, (x, sign), {}),
        (ops.cam_forward.default, (_strided(x), sign), {}),
        (ops.cam_backward.default, (gout, x.detach(), attn, sign), {}),
    ]


@attnbench.register(
    "danet.pam",
    kind="ext",
    name="ext",
    available=lambda: build.unavailable_reason(PKG),
    supports=_supports,
    opcheck=_pam_opcheck,
)
def pam_ext(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """C++/CUDA op: online-softmax key tiles, lse saved, scores recomputed in backward."""
    return pam_ext_op(q, k, v)


@attnbench.register(
    "danet.cam",
    kind="ext",
    name="ext",
    available=lambda: build.unavailable_reason(PKG),
    supports=_supports,
    opcheck=_cam_opcheck,
)
def cam_ext(x: torch.Tensor, *, sign: str = "code") -> torch.Tensor:
    """C++/CUDA op: BLAS energies and aggregation, row softmax(rowmax − E) kernels, A saved."""
    check_sign(sign)
    out, _ = _ops().cam_forward(x, sign)
    return out  # type: ignore[no-any-return]
