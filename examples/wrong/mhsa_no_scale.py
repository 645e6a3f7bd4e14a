"""A multi-head attention that forgets the 1/sqrt(d) scale (and ignores an
explicit `scale`). Caught on every case with d > 1."""

import torch

import attnbench


@attnbench.register("mhsa", kind="user", name="no_scale")
def attention_no_scale(q, k, v, key_padding_mask=None, causal=False, scale=None):
    logits = q @ k.transpose(-2, -1)  # bug: no scale
    allowed = torch.ones(logits.shape[-2:], dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    attn = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.nan_to_num(attn) @ v
