"""A DETR encoder layer that adds the positional embedding to the value too
(DETR adds it to queries and keys only). Its attention core is right, so every
core case passes; the module case `encoder` (and its `pos_not_in_value`
property) catches it.

An impl may bring its own layer: ``register(..., modules={"encoder": layer})``,
where ``layer(core, src, pos, mask, *weights, h=, normalize_before=)`` has the
signature of ``impls.mhsa.mechanism.detr_encoder_layer``; the module check then
runs that layer, built on this impl's core, against the float64 naive one.
"""

import torch
import torch.nn.functional as F

import attnbench


def attention(q, k, v, key_padding_mask=None, causal=False, scale=None):
    allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    dead = ~allowed.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | dead, scale=scale)
    return out.masked_fill(dead, 0.0)


def encoder_layer(core, src, pos, mask, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o,
                  w_ff1, b_ff1, w_ff2, b_ff2, g_n1, beta_n1, g_n2, beta_n2, h, normalize_before):  # fmt: skip
    B, L, E = src.shape

    def mha(x_qk, x_v):
        q = F.linear(x_qk, w_q, b_q).reshape(B, L, h, E // h).transpose(1, 2)
        k = F.linear(x_qk, w_k, b_k).reshape(B, L, h, E // h).transpose(1, 2)
        v = F.linear(x_v, w_v, b_v).reshape(B, L, h, E // h).transpose(1, 2)
        return F.linear(core(q, k, v, mask).transpose(1, 2).reshape(B, L, E), w_o, b_o)

    def ffn(x):
        return F.linear(F.relu(F.linear(x, w_ff1, b_ff1)), w_ff2, b_ff2)

    if normalize_before:
        t = F.layer_norm(src, (E,), g_n1, beta_n1)
        src = src + mha(t + pos, t + pos)  # bug: value should be t
        return src + ffn(F.layer_norm(src, (E,), g_n2, beta_n2))
    src = F.layer_norm(src + mha(src + pos, src + pos), (E,), g_n1, beta_n1)  # bug: value should be src
    return F.layer_norm(src + ffn(src), (E,), g_n2, beta_n2)


attnbench.register("mhsa", kind="user", name="pos_in_value", modules={"encoder": encoder_layer})(attention)
