"""A subtly wrong criss-cross attention: H and W swapped when the flattened
result is reshaped back. Correct on square inputs, wrong on every H ≠ W case."""

import torch

import attnbench


@attnbench.register("ccnet", kind="user", name="hw_swapped")
def cca_hw_swapped(q, k, v):
    B, _, H, W = q.shape
    y = torch.arange(H, device=q.device).repeat_interleave(W)
    x = torch.arange(W, device=q.device).repeat(H)
    allowed = (y[:, None] == y[None, :]) | (x[:, None] == x[None, :])
    qf, kf, vf = (t.flatten(2) for t in (q, k, v))
    energy = (qf.transpose(1, 2) @ kf).masked_fill(~allowed, float("-inf"))
    out = vf @ torch.softmax(energy, -1).transpose(1, 2)  # [B, C, HW]
    return out.reshape(B, -1, W, H).transpose(2, 3).contiguous()  # bug: should be reshape(B, -1, H, W)
