"""A wrong non-local core: phi flattened row-major but g column-major, so key j of
phi is paired with another key's value. Invisible when Hk = Wk = 1 or M = 1."""

import torch

import attnbench


@attnbench.register("nonlocal", kind="user", name="flatten_order")
def non_local_flatten_order(theta, phi, g, w=None, *, mode="embedded_gaussian", scale=None):
    B, Ck, H, W = theta.shape
    t, p = theta.flatten(2).transpose(1, 2), phi.flatten(2)
    v = g.transpose(2, 3).flatten(2).transpose(1, 2)  # bug: column-major keys
    M = p.shape[-1]
    if mode in ("embedded_gaussian", "gaussian"):
        f = torch.softmax((t @ p) * (1.0 if scale is None else scale), dim=-1)
    elif mode == "dot":
        f = (t @ p) / M
    else:
        f = torch.relu((t @ w[:Ck])[:, :, None] + (w[Ck:] @ p)[:, None, :]) / M
    return (f @ v).transpose(1, 2).reshape(B, -1, H, W)
