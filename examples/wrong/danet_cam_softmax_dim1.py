"""A wrong CAM: the softmax of rowmax − E normalised over dim 1 (columns)."""

import torch

import attnbench


@attnbench.register("danet.cam", kind="user", name="cam_softmax_dim1")
def cam_softmax_dim1(x, *, sign="code"):
    X = x.flatten(2)
    energy = X @ X.transpose(1, 2)
    logits = energy if sign == "paper" else energy.amax(-1, keepdim=True) - energy
    attn = torch.softmax(logits, dim=1)  # bug: dim=-1
    return (attn @ X).reshape(x.shape)
