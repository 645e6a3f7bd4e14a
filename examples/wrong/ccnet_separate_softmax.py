"""A subtly wrong criss-cross attention: separate softmaxes for the row and the
column instead of one over all H+W−1 positions. Caught by `forward`."""

import torch

import attnbench


@attnbench.register("ccnet", kind="user", name="separate_softmax")
def cca_separate_softmax(q, k, v):
    H = q.shape[2]
    mask = torch.diag(torch.full((H,), float("-inf"), dtype=q.dtype, device=q.device))
    energy_col = torch.einsum("bcyx,bczx->byxz", q, k) + mask[:, None, :]
    energy_row = torch.einsum("bcyx,bcyz->byxz", q, k)
    attn_col = torch.softmax(energy_col, -1) * 0.5
    attn_row = torch.softmax(energy_row, -1) * 0.5
    return torch.einsum("byxz,bczx->bcyx", attn_col.nan_to_num(0.0), v) + torch.einsum("byxz,bcyz->bcyx", attn_row, v)
