"""A multi-head attention that normalises over the queries (dim -2) instead of
the keys: attention rows no longer sum to 1. Caught on every case with L > 1."""

import torch

import attnbench


@attnbench.register("mhsa", kind="user", name="softmax_over_queries")
def attention_softmax_over_queries(q, k, v, key_padding_mask=None, causal=False, scale=None):
    s = scale if scale is not None else q.shape[-1] ** -0.5
    logits = (q @ k.transpose(-2, -1)) * s
    allowed = torch.ones(logits.shape[-2:], dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    attn = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-2)  # bug: dim=-1
    return torch.nan_to_num(attn) @ v
