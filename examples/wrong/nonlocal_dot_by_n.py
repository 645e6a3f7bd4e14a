"""A subtly wrong non-local core: dot/concat normalised by the number of queries N
instead of the number of keys M. Identical whenever M = N (no subsampling)."""

import torch

import attnbench


@attnbench.register("nonlocal", kind="user", name="dot_by_n")
def non_local_dot_by_n(theta, phi, g, w=None, *, mode="embedded_gaussian", scale=None):
    B, Ck, H, W = theta.shape
    t, p, v = theta.flatten(2).transpose(1, 2), phi.flatten(2), g.flatten(2).transpose(1, 2)
    if mode in ("embedded_gaussian", "gaussian"):
        f = torch.softmax((t @ p) * (1.0 if scale is None else scale), dim=-1)
    elif mode == "dot":
        f = (t @ p) / (H * W)  # bug: should be / M
    else:
        f = torch.relu((t @ w[:Ck])[:, :, None] + (w[Ck:] @ p)[:, None, :]) / (H * W)  # bug: / M
    return (f @ v).transpose(1, 2).reshape(B, -1, H, W)
