"""A multi-head attention that masks with -inf, takes a plain softmax (NaN on
fully masked rows) and zeroes those rows with torch.where *after* A·V. The
forward is right; the NaN leaks into dv through the matmul's backward
(specs/mhsa.md §6, mutation 10). Caught by `backward:v` on fully masked rows."""

import torch

import attnbench


@attnbench.register("mhsa", kind="user", name="where_after_av")
def attention_where_after_av(q, k, v, key_padding_mask=None, causal=False, scale=None):
    s = scale if scale is not None else q.shape[-1] ** -0.5
    logits = (q @ k.transpose(-2, -1)) * s
    allowed = torch.ones(logits.shape[-2:], dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    attn = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)  # NaN rows
    out = attn @ v
    return torch.where(allowed.any(-1, keepdim=True), out, torch.zeros((), dtype=out.dtype))  # bug: NaN in grads
