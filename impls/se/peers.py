"""Peers: the SE layer as other projects write it.

- ``conv_module``: the common module form — ``AdaptiveAvgPool2d(1)``, 1×1
  ``Conv2d`` down, ReLU, 1×1 ``Conv2d`` up, Sigmoid, multiply — as
  torchvision's ``ops.SqueezeExcitation`` (written out here because torchvision
  does not import in this environment), run with our weights through
  ``torch.func.functional_call`` so gradients reach them.
- ``timm_se``: timm's ``SqueezeExcite`` (``timm.layers.SEModule``) with
  ``rd_channels = Cr``; a ``skip`` row with the import error where timm is absent.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

import attnbench
from impls.se.mechanism import bias_or_none, check_hidden


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation(input_channels, squeeze_channels), ReLU and Sigmoid."""

    def __init__(self, input_channels: int, squeeze_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1, bias=bias)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1, bias=bias)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Sigmoid()

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.avgpool(x)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._scale(x) * x


def _state(
    w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None, prefix: tuple[str, str]
) -> dict[str, torch.Tensor]:
    state = {f"{prefix[0]}.weight": w1[:, :, None, None], f"{prefix[1]}.weight": w2[:, :, None, None]}
    if b1 is not None:
        state[f"{prefix[0]}.bias"] = b1
    if b2 is not None:
        state[f"{prefix[1]}.bias"] = b2
    return state


@attnbench.register("se", kind="peer", name="conv_module")
def se_conv_module(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None
) -> torch.Tensor:
    """torchvision-style module (1×1 convs) with the given weights."""
    C, Cr = x.shape[1], w1.shape[0]
    check_hidden(C, Cr, op="SqueezeExcitation")
    b1, b2 = bias_or_none(b1), bias_or_none(b2)
    if (b1 is None) != (b2 is None):
        raise ValueError("conv_module: b1 and b2 must both be given or both be None")
    module = SqueezeExcitation(C, Cr, bias=b1 is not None).to(device=x.device, dtype=x.dtype)
    out = torch.func.functional_call(module, _state(w1, b1, w2, b2, ("fc1", "fc2")), (x,))
    return out  # type: ignore[no-any-return]


@functools.cache
def timm_unavailable() -> str | None:
    try:
        import timm.layers  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"timm does not import: {type(exc).__name__}: {exc}"
    return None


@attnbench.register("se", kind="peer", name="timm_se", available=timm_unavailable)
def se_timm(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None
) -> torch.Tensor:
    """timm ``SqueezeExcite`` (= ``SEModule``: fc1, bn=Identity, ReLU, fc2, sigmoid gate) with rd_channels = Cr."""
    from timm.layers import SqueezeExcite

    C, Cr = x.shape[1], w1.shape[0]
    check_hidden(C, Cr, op="timm SqueezeExcite")
    b1, b2 = bias_or_none(b1), bias_or_none(b2)
    module = SqueezeExcite(C, rd_channels=Cr, bias=b1 is not None).to(device=x.device, dtype=x.dtype)
    out = torch.func.functional_call(module, _state(w1, b1, w2, b2, ("fc1", "fc2")), (x,))
    return out  # type: ignore[no-any-return]
