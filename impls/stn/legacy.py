"""The legacy channels-last sampler of fxia22/stn.pytorch, behind the adapter of specs/stn.md §3.

``BilinearSamplerBHWD`` (``script/src/my_lib.c``) takes the input channels-last
``[B, H, W, D]`` and the grid ``[B, Ho, Wo, 2]`` in **(y, x)** order, unnormalises
with ``align_corners=True`` and drops each out-of-bounds corner separately. Its
cffi build needs PyTorch ≤ 0.4, so :class:`BilinearSamplerBHWD` below is a small
vectorized transcription of that C code: forward *and* its hand-written backward
(the ``xWeightTopLeft``/``yWeightTopLeft`` bookkeeping, gradients accumulated
per corner with the signs of the original), so a user porting old STN code can
check theirs against the canonical core. Align-corners=False cases cannot be
expressed in the legacy convention and are skipped with that reason.
"""

from __future__ import annotations

from typing import Any

import torch

import attnbench
from attnbench.cases import Case


def _corners(grids: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, ...]:
    """The legacy per-point quantities: top-left corner, its weights, and which corners are in."""
    yf, xf = grids[..., 0], grids[..., 1]  # legacy order: y first
    xcoord = (xf + 1) * (W - 1) / 2
    ycoord = (yf + 1) * (H - 1) / 2
    x_tl = xcoord.floor()
    y_tl = ycoord.floor()
    xw_tl = 1 - (xcoord - x_tl)  # xWeightTopLeft
    yw_tl = 1 - (ycoord - y_tl)  # yWeightTopLeft
    x_in = [(x_tl + d >= 0) & (x_tl + d <= W - 1) for d in (0, 1)]
    y_in = [(y_tl + d >= 0) & (y_tl + d <= H - 1) for d in (0, 1)]
    return x_tl, y_tl, xw_tl, yw_tl, x_in[0], x_in[1], y_in[0], y_in[1]


def _gather(images: torch.Tensor, y: torch.Tensor, x: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """images[b, y, x, :] where ``inside``, else 0: [B, Ho, Wo, D]."""
    B, H, W, D = images.shape
    index = (y.clamp(0, H - 1) * W + x.clamp(0, W - 1)).long().reshape(B, -1, 1).expand(-1, -1, D)
    values = images.reshape(B, H * W, D).gather(1, index).reshape(*y.shape, D)
    return values * inside[..., None]


class BilinearSamplerBHWD(torch.autograd.Function):
    """``BilinearSamplerBHWD_updateOutput`` / ``_updateGradInput``, vectorized over output points."""

    @staticmethod
    def forward(ctx: Any, input_images: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        B, H, W, D = input_images.shape
        x_tl, y_tl, xw, yw, x0_in, x1_in, y0_in, y1_in = _corners(grids, H, W)
        top_left = _gather(input_images, y_tl, x_tl, x0_in & y0_in)
        top_right = _gather(input_images, y_tl, x_tl + 1, x1_in & y0_in)
        bottom_left = _gather(input_images, y_tl + 1, x_tl, x0_in & y1_in)
        bottom_right = _gather(input_images, y_tl + 1, x_tl + 1, x1_in & y1_in)
        xw, yw = xw[..., None], yw[..., None]
        ctx.save_for_backward(input_images, grids)
        return (
            xw * yw * top_left
            + (1 - xw) * yw * top_right
            + xw * (1 - yw) * bottom_left
            + (1 - xw) * (1 - yw) * bottom_right
        )

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        input_images, grids = ctx.saved_tensors
        B, H, W, D = input_images.shape
        x_tl, y_tl, xw, yw, x0_in, x1_in, y0_in, y1_in = _corners(grids, H, W)
        go = grad_output
        grad_input = torch.zeros(B, H * W, D, dtype=go.dtype, device=go.device)
        yf = torch.zeros_like(xw)  # d out / d ycoord, accumulated over channels as in the C loop
        xf = torch.zeros_like(xw)
        corners = (
            # (dy, dx, in, input weight, (sign, weight) for yf, (sign, weight) for xf)
            (0, 0, x0_in & y0_in, xw * yw, (-1, xw), (-1, yw)),
            (0, 1, x1_in & y0_in, (1 - xw) * yw, (-1, 1 - xw), (+1, yw)),
            (1, 0, x0_in & y1_in, xw * (1 - yw), (+1, xw), (-1, 1 - yw)),
            (1, 1, x1_in & y1_in, (1 - xw) * (1 - yw), (+1, 1 - xw), (+1, 1 - yw)),
        )
        for dy, dx, inside, weight, (ys, yw_k), (xs, xw_k) in corners:
            value = _gather(input_images, y_tl + dy, x_tl + dx, inside)
            weighted = (go * (weight * inside)[..., None]).reshape(B, -1, D)
            index = ((y_tl + dy).clamp(0, H - 1) * W + (x_tl + dx).clamp(0, W - 1)).long().reshape(B, -1, 1)
            grad_input.scatter_add_(1, index.expand(-1, -1, D), weighted)
            dot = (value * go).sum(-1)
            yf = yf + ys * dot * yw_k
            xf = xf + xs * dot * xw_k
        grad_grids = torch.stack([yf * (H - 1) / 2, xf * (W - 1) / 2], dim=-1)
        return grad_input.reshape(B, H, W, D), grad_grids


def _align_corners_true_only(case: Case, dtype: str, device: str) -> str | None:
    if not case.get("align_corners", False):
        return "legacy BilinearSamplerBHWD unnormalises with align_corners=True only; no adapter for False"
    return None


@attnbench.register(
    "stn.bilinear_sample",
    kind="peer",
    name="legacy_bhwd",
    supports=_align_corners_true_only,
    doc="fxia22/stn.pytorch BilinearSamplerBHWD (channels-last, (y, x) grid) behind the spec §3 adapter",
)
def bilinear_sample_legacy_bhwd(inp: torch.Tensor, grid: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """Canonical ``bilinear_sample`` computed by the legacy sampler: permute to BHWD, flip the grid to (y, x)."""
    if not align_corners:
        raise ValueError("legacy_bhwd: the legacy sampler has align_corners=True semantics only")
    out = BilinearSamplerBHWD.apply(inp.permute(0, 2, 3, 1), grid.flip(-1))
    return out.permute(0, 3, 1, 2)
