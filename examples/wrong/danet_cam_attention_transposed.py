"""A wrong CAM: aggregates with Aᵀ instead of A. (Transposing the energy itself
changes nothing, E = X Xᵀ is symmetric; A is not, since each row is normalised.)"""

import torch

import attnbench


@attnbench.register("danet.cam", kind="user", name="cam_transposed")
def cam_transposed(x, *, sign="code"):
    X = x.flatten(2)
    energy = X @ X.transpose(1, 2)
    logits = energy if sign == "paper" else energy.amax(-1, keepdim=True) - energy
    attn = torch.softmax(logits, dim=-1)
    return (attn.transpose(1, 2) @ X).reshape(x.shape)  # bug: attn @ X
