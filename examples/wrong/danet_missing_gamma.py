"""A correct PAM core whose dual-head module forgets gamma on the PAM branch:
(pam(Wq x, Wk x, Wv x) + x) + (γc·cam(x) + x). The cores all pass; only the
module check (module:dual_head:forward) can catch it.

The module comes with the impl through ``register(..., modules=...)``: the
harness then compares this whole-module implementation with the reference
module built on the naive core."""

import torch
import torch.nn.functional as F

import attnbench


def pam(q, k, v):
    B, _, H, W = q.shape
    attn = torch.softmax(q.flatten(2).transpose(1, 2) @ k.flatten(2), dim=-1)
    return (v.flatten(2) @ attn.transpose(1, 2)).reshape(B, -1, H, W)


def cam(x):
    X = x.flatten(2)
    energy = X @ X.transpose(1, 2)
    return (torch.softmax(energy.amax(-1, keepdim=True) - energy, dim=-1) @ X).reshape(x.shape)


def dual_head_without_gamma(core, x, wq, bq, wk, bk, wv, bv, gamma_p, gamma_c):
    q = F.conv2d(x, wq[:, :, None, None], bq)
    k = F.conv2d(x, wk[:, :, None, None], bk)
    v = F.conv2d(x, wv[:, :, None, None], bv)
    return (core(q, k, v) + x) + (gamma_c * cam(x) + x)  # bug: gamma_p missing


@attnbench.register("danet.pam", kind="user", name="missing_gamma", modules={"dual_head": dual_head_without_gamma})
def pam_with_gammaless_module(q, k, v):
    return pam(q, k, v)
