"""A multi-head attention whose causal mask is aligned bottom-right
(j <= i + S - L, flash-attn >= 2.1 / causal_lower_right) instead of the
canonical upper-left (j <= i). Identical when L == S; caught on causal cases
with L != S."""

import torch

import attnbench


@attnbench.register("mhsa", kind="user", name="causal_lower_right")
def attention_causal_lower_right(q, k, v, key_padding_mask=None, causal=False, scale=None):
    L, S = q.shape[-2], k.shape[-2]
    s = scale if scale is not None else q.shape[-1] ** -0.5
    logits = (q @ k.transpose(-2, -1)) * s
    allowed = torch.ones(L, S, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril(diagonal=S - L)  # bug: upper-left is tril(diagonal=0)
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    dead = ~allowed.any(-1, keepdim=True)
    attn = torch.softmax(logits.masked_fill(~(allowed | dead), float("-inf")), dim=-1)
    return (attn @ v).masked_fill(dead, 0.0)
