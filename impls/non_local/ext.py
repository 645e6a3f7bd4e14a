"""Compiled non-local core: ``torch.ops.attnbench_non_local.nl_forward`` / ``nl_backward``.

The extension is built lazily on the first call (``attnbench.build.load``), so
importing this module never needs a compiler. Strategies (csrc/non_local_ops.h):

- softmax modes: keys in tiles of ``key_block`` (default 256) with an online
  softmax (running max, running sum, accumulator); the forward saves the per-row
  log-sum-exp and the backward recomputes the scores tile by tile
  (flash-attention style). Without autograd no N×M matrix is stored, so extra
  memory is O(N·(tile + Cv)) — linear in HW. With autograd, on the CPU, the
  forward keeps the scaled scores for the backward when that is cheaper than
  recomputing them (``_keep_scores``: Ck ≥ 64 and at most 32 MiB of scores).
- dot: associative, y = θ(φᵀg)/M (B·(N+M)·Ck·Cv MACs, a Ck×Cv intermediate).
- concat: CUDA: key tiles of ReLU(a_i + b_j)/M, recomputed in backward. CPU: an
  O((N + M)·Cv) sweep over the queries sorted by a and the keys sorted by b (the keys
  with a_i + b_j > 0 are a prefix that only grows), no N×M work; ``key_block`` unused.

CPU softmax path: one parallel region per (batch, query tile), BLAS tile products on
raw pointers, a fused vectorized row softmax (impls/_common/csrc/softmax_tiles.h).
"""

from __future__ import annotations

from typing import Any

import torch

import attnbench
from attnbench import build
from attnbench.cases import Case
from impls.non_local.mechanism import check_args, make_inputs

PKG = "non_local"
DEFAULT_KEY_BLOCK = 256
# Keep the forward's scores for the backward (CPU, autograd, softmax modes) from this
# Ck: recomputing them costs a Ck-deep product per (query, key) pair, 7/6 of the
# vectorized impl's fwd+bwd products at Ck = Cv (0.85-0.94x it at C = 512 on small
# maps), while writing and re-reading them costs 8 bytes per pair.
KEEP_SCORES_MIN_CK = 64
# ... and up to this size: a larger fresh allocation is mapped from new pages and
# every first touch page-faults (a 51 MiB clone took 58 ms here, a copy 11 ms).
KEEP_SCORES_MAX_BYTES = 32 * 2**20
_registered = False


def _ops() -> Any:
    """Builds/loads the library once and registers fake and autograd kernels once."""
    global _registered
    build.load(PKG)
    ops = torch.ops.attnbench_non_local
    if not _registered:
        _register(ops)
        _registered = True
    return ops


def _register(ops: Any) -> None:
    @torch.library.register_fake("attnbench_non_local::nl_forward")
    def _forward_fake(theta, phi, g, w, mode, scale, key_block, save_scores=False):  # type: ignore[no-untyped-def]
        B, _, H, W = theta.shape
        stats_dtype = torch.float32 if theta.dtype in (torch.float16, torch.bfloat16) else theta.dtype
        scores_shape = (B, H * W, phi.shape[2] * phi.shape[3]) if save_scores else (0,)
        return (
            theta.new_empty((B, g.shape[1], H, W)),
            theta.new_empty((B, H * W), dtype=stats_dtype),
            theta.new_empty(scores_shape, dtype=stats_dtype),
        )

    @torch.library.register_fake("attnbench_non_local::nl_backward")
    def _backward_fake(grad_out, theta, phi, g, w, out, stats, mode, scale, key_block, scores=None):  # type: ignore[no-untyped-def]
        dw = w.new_empty(w.shape) if w is not None else theta.new_empty((0,))
        return theta.new_empty(theta.shape), phi.new_empty(phi.shape), g.new_empty(g.shape), dw

    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        theta, phi, g, w, mode, scale, key_block = inputs[:7]
        out, stats, scores = output
        ctx.save_for_backward(theta, phi, g, w, out, stats, scores)
        ctx.mode, ctx.scale, ctx.key_block = mode, scale, key_block

    def backward(ctx, grad_out, grad_stats, grad_scores):  # type: ignore[no-untyped-def]
        theta, phi, g, w, out, stats, scores = ctx.saved_tensors
        op = ops.nl_backward.default
        dtheta, dphi, dg, dw = build.call_op(
            op,
            grad_out.contiguous(),
            theta,
            phi,
            g,
            w,
            out,
            stats,
            ctx.mode,
            ctx.scale,
            ctx.key_block,
            scores if scores.numel() else None,
        )
        return dtheta, dphi, dg, (dw if w is not None else None), None, None, None, None

    build.register_autograd(ops.nl_forward.default, backward, setup_context)


def non_local_ext_op(
    theta: torch.Tensor,
    phi: torch.Tensor,
    g: torch.Tensor,
    w: torch.Tensor | None = None,
    *,
    mode: str = "embedded_gaussian",
    scale: float | None = None,
    key_block: int = DEFAULT_KEY_BLOCK,
) -> torch.Tensor:
    """The ext core with an explicit key tile (``key_block ≥ M``: one tile, i.e. unfused softmax)."""
    check_args(mode, w, scale)
    ops = _ops()
    keep = _keep_scores(theta, phi, g, w, mode)
    out, _, _ = build.call_op(
        ops.nl_forward.default, theta, phi, g, w, mode, 1.0 if scale is None else float(scale), int(key_block), keep
    )
    return out  # type: ignore[no-any-return]


def _keep_scores(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor, w: torch.Tensor | None, mode: str) -> bool:
    """Whether the forward keeps its scaled scores [B, N, M] for the backward (see KEEP_SCORES_*)."""
    if mode not in ("embedded_gaussian", "gaussian") or theta.device.type != "cpu":
        return False
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (theta, phi, g, w))):
        return False
    B, Ck, H, W = theta.shape
    nbytes = B * H * W * phi.shape[2] * phi.shape[3] * theta.element_size()
    return Ck >= KEEP_SCORES_MIN_CK and nbytes <= KEEP_SCORES_MAX_BYTES


def _supports(case: Case, dtype: str, device: str) -> str | None:
    if device == "cpu" and dtype not in ("float32", "float64"):
        return f"ext CPU kernels are instantiated for float32 and float64 only, not {dtype}"
    return None


def _opcheck_samples(case: Case, dtype: torch.dtype, device: str) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    """nl_forward on the case (key tiles of 2; then non-contiguous inputs) and nl_backward on its outputs."""
    ops = _ops()
    inputs = make_inputs(case).to(dtype, device)
    theta, phi, g = (inputs.tensors[n] for n in ("theta", "phi", "g"))
    w = inputs.tensors.get("w")
    mode = inputs.kwargs["mode"]
    scale = float(inputs.kwargs.get("scale") or 1.0)
    # the same values behind non-contiguous (channels-last) strides
    strided = [
        x.detach().permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2).requires_grad_() for x in (theta, phi, g)
    ]
    plain = [x.detach() for x in (theta, phi, g)]
    w_plain = w.detach() if w is not None else None
    with torch.no_grad():
        out, stats, _ = ops.nl_forward(*plain, w_plain, mode, scale, 2)
    gout = torch.randn(out.shape, dtype=torch.float64, generator=case.generator("gout")).to(dtype).to(device)
    samples: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
        (ops.nl_forward.default, (theta, phi, g, w, mode, scale, 2), {}),
        (ops.nl_forward.default, (*strided, w, mode, scale, DEFAULT_KEY_BLOCK), {}),
        (ops.nl_backward.default, (gout, *plain, w_plain, out, stats, mode, scale, 2), {}),
    ]
    if mode in ("embedded_gaussian", "gaussian"):  # the path that keeps the scores for the backward
        with torch.no_grad():
            _, _, scores = ops.nl_forward(*plain, w_plain, mode, scale, 2, True)
        samples += [
            (ops.nl_forward.default, (theta, phi, g, w, mode, scale, 2, True), {}),
            (ops.nl_backward.default, (gout, *plain, w_plain, out, stats, mode, scale, 2, scores), {}),
        ]
    return samples


@attnbench.register(
    "nonlocal",
    kind="ext",
    name="ext",
    devices=("cpu", "cuda"),
    available=lambda: build.unavailable_reason(PKG),
    supports=_supports,
    opcheck=_opcheck_samples,
)
def non_local_ext(
    theta: torch.Tensor,
    phi: torch.Tensor,
    g: torch.Tensor,
    w: torch.Tensor | None = None,
    *,
    mode: str = "embedded_gaussian",
    scale: float | None = None,
) -> torch.Tensor:
    """C++/CUDA op: online-softmax key tiles (lse saved), associative dot, tiled concat."""
    return non_local_ext_op(theta, phi, g, w, mode=mode, scale=scale)
