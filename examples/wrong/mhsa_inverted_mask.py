"""A multi-head attention with the key padding mask's polarity inverted: it
attends exactly the padded keys (True taken as "attend", SDPA's convention,
without the conversion). Caught on every case with a padding mask."""

import torch

import attnbench


@attnbench.register("mhsa", kind="user", name="inverted_mask")
def attention_inverted_mask(q, k, v, key_padding_mask=None, causal=False, scale=None):
    s = scale if scale is not None else q.shape[-1] ** -0.5
    logits = (q @ k.transpose(-2, -1)) * s
    allowed = torch.ones(logits.shape[-2:], dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]  # bug: should be ~key_padding_mask
    logits = logits.masked_fill(~allowed, float("-inf"))
    attn = torch.nan_to_num(torch.softmax(logits, dim=-1))
    return attn @ v
