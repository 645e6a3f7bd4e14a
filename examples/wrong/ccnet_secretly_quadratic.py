"""A criss-cross attention that is numerically right but secretly quadratic:
it computes full (HW)×(HW) non-local energies and masks everything outside the
row and column. Passes every equivalence check; fails the scaling check
(time exponent ≈ 4 in S = H = W instead of ≈ 3)."""

import torch

import attnbench


@attnbench.register("ccnet", kind="user", name="secretly_quadratic")
def cca_secretly_quadratic(q, k, v):
    B, _, H, W = q.shape
    y = torch.arange(H, device=q.device).repeat_interleave(W)
    x = torch.arange(W, device=q.device).repeat(H)
    allowed = (y[:, None] == y[None, :]) | (x[:, None] == x[None, :])
    qf, kf, vf = (t.flatten(2) for t in (q, k, v))
    energy = (qf.transpose(1, 2) @ kf).masked_fill(~allowed, float("-inf"))  # [B, HW, HW]
    return (vf @ torch.softmax(energy, -1).transpose(1, 2)).reshape(v.shape)
