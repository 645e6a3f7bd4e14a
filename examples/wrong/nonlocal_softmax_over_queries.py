"""A wrong non-local core: the softmax normalises over queries (dim 1) instead of keys."""

import torch

import attnbench


@attnbench.register("nonlocal", kind="user", name="softmax_over_queries")
def non_local_softmax_over_queries(theta, phi, g, w=None, *, mode="embedded_gaussian", scale=None):
    B, Ck, H, W = theta.shape
    t, p, v = theta.flatten(2).transpose(1, 2), phi.flatten(2), g.flatten(2).transpose(1, 2)
    M = p.shape[-1]
    if mode in ("embedded_gaussian", "gaussian"):
        f = torch.softmax((t @ p) * (1.0 if scale is None else scale), dim=1)  # bug: dim=-1
    elif mode == "dot":
        f = (t @ p) / M
    else:
        f = torch.relu((t @ w[:Ck])[:, :, None] + (w[Ck:] @ p)[:, None, :]) / M
    return (f @ v).transpose(1, 2).reshape(B, -1, H, W)
