"""A subtly wrong criss-cross attention: the pixel itself is counted twice
(the column part keeps y' = y, no −inf on the duplicate). Caught by `forward`."""

import torch

import attnbench


@attnbench.register("ccnet", kind="user", name="self_twice")
def cca_self_twice(q, k, v):
    energy_col = torch.einsum("bcyx,bczx->byxz", q, k)  # [B, H, W, H], self included
    energy_row = torch.einsum("bcyx,bcyz->byxz", q, k)  # [B, H, W, W], self included again
    H = q.shape[2]
    attn = torch.softmax(torch.cat([energy_col, energy_row], -1), -1)
    return torch.einsum("byxz,bczx->bcyx", attn[..., :H], v) + torch.einsum("byxz,bcyz->bcyx", attn[..., H:], v)
