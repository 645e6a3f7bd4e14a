"""A wrong PAM: softmax over queries (dim 1) instead of keys."""

import torch

import attnbench


@attnbench.register("danet.pam", kind="user", name="pam_softmax_over_queries")
def pam_softmax_over_queries(q, k, v):
    B, _, H, W = q.shape
    attn = torch.softmax(q.flatten(2).transpose(1, 2) @ k.flatten(2), dim=1)  # bug: dim=-1
    return (v.flatten(2) @ attn.transpose(1, 2)).reshape(B, -1, H, W)
