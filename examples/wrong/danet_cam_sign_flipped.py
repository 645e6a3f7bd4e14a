"""A wrong CAM: the paper's softmax(E − rowmax) used for the canonical (official-code)
softmax(rowmax − E). Rows still sum to 1, so only the reference comparison sees it."""

import torch

import attnbench


@attnbench.register("danet.cam", kind="user", name="cam_sign_flipped")
def cam_sign_flipped(x, *, sign="code"):
    X = x.flatten(2)
    energy = X @ X.transpose(1, 2)
    attn = torch.softmax(energy - energy.amax(-1, keepdim=True), dim=-1)  # bug: sign ignored, paper form
    return (attn @ X).reshape(x.shape)
