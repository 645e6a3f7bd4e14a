"""Peers: PyTorch's own attention, adapted to the canonical core (specs/mhsa.md §7).

- ``sdpa``: ``F.scaled_dot_product_attention``. Its boolean ``attn_mask`` means
  True = *attend* (the opposite of ours), and it raises when a non-trivial
  ``attn_mask`` is combined with ``is_causal=True``, so the adapter passes one
  combined "allowed" mask ``~key_padding_mask & tril`` and the scale explicitly.
- ``nn_mha``: ``torch.nn.MultiheadAttention(batch_first=True, dropout=0)`` with
  identity in/out projections and zero biases, so only its core remains.
  ``key_padding_mask`` has our polarity; causal goes in as ``attn_mask = ~tril``
  (True = ignore). Its scale is fixed at 1/√d, so another scale is applied by
  multiplying q by ``scale·√d`` first. It has one head dim for q, k and v, so
  cases with ``dv != d`` are skipped with that reason.

``is_causal=True`` with ``scale=0`` returns NaN rows in SDPA on the CPU (torch
2.13: the −inf causal bias is multiplied by the zero scale); that too is
probed (:func:`causal_zero_scale_nan`) and, where it happens, the adapter
passes the causal mask explicitly.

Fully masked rows: what each peer does is *probed at run time* (a tiny
forward and backward with every key masked, see :func:`probe`), not assumed.
Where the probe shows anything but output 0 with finite, zero gradients, the
adapter un-masks those rows inside the peer (so its softmax is finite) and
zeroes them afterwards (``masked_fill``, whose backward sends exactly 0).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import attnbench
from attnbench.cases import Case


@dataclass(frozen=True)
class Behaviour:
    """What a peer does on a fully masked row: ``output`` and ``gradient`` in words."""

    output: str  # "0", "NaN", "uniform average", "other"
    gradient: str  # "0", "NaN", "non-zero", "n/a"

    @property
    def safe(self) -> bool:
        return self.output == "0" and self.gradient == "0"


def _classify_output(out: torch.Tensor, v: torch.Tensor) -> str:
    if torch.isnan(out).any():
        return "NaN"
    if bool((out == 0).all()):
        return "0"
    if torch.allclose(out, v.mean(dim=-2, keepdim=True).expand_as(out), atol=1e-6):
        return "uniform average"
    return "other"


def _classify_grads(grads: tuple[torch.Tensor | None, ...]) -> str:
    present = [g for g in grads if g is not None]
    if not present:
        return "0"
    if any(torch.isnan(g).any() for g in present):
        return "NaN"
    return "0" if all(bool((g == 0).all()) for g in present) else "non-zero"


def probe(call: str, device: str, dtype: torch.dtype, need_weights: bool = False) -> Behaviour:
    """Runs peer ``call`` (``"sdpa"`` or ``"nn_mha"``) with every key masked: B=1, h=2, L=2, S=3, d=dv=4."""
    return _probe(call, torch.device(device).type, dtype, need_weights)


@functools.cache
def _probe(call: str, device: str, dtype: torch.dtype, need_weights: bool) -> Behaviour:
    with torch.inference_mode(False), torch.enable_grad():  # the first call may come from a no_grad pass
        return _run_probe(call, device, dtype, need_weights)


def _run_probe(call: str, device: str, dtype: torch.dtype, need_weights: bool) -> Behaviour:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 4, generator=gen).to(dtype=dtype, device=device) for n in (2, 3, 3))
    for t in (q, k, v):
        t.requires_grad_(True)
    mask = torch.ones(1, 3, dtype=torch.bool, device=device)  # True = ignore: every key
    if call == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=~mask[:, None, None, :])
    else:
        mha = _identity_mha(8, 2, dtype, device)
        query, key, value = (_merge_heads(t) for t in (q, k, v))
        merged, _ = mha(query, key, value, key_padding_mask=mask, need_weights=need_weights)
        out = _split_heads(merged, 2)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out), allow_unused=True)
    return Behaviour(_classify_output(out.detach().float(), v.detach().float()), _classify_grads(grads))


def causal_zero_scale_nan(device: str, dtype: torch.dtype) -> bool:
    """Whether ``F.scaled_dot_product_attention(is_causal=True, scale=0)`` returns NaN here."""
    return _causal_zero_scale_nan(torch.device(device).type, dtype)


@functools.cache
def _causal_zero_scale_nan(device: str, dtype: torch.dtype) -> bool:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 4, 3, generator=gen).to(dtype=dtype, device=device) for _ in range(3))
    return bool(torch.isnan(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.0)).any())


def _dead_rows(allowed: torch.Tensor) -> torch.Tensor:
    """bool [..., L, 1]: rows of ``allowed`` [..., L, S] without any allowed key."""
    return ~allowed.any(dim=-1, keepdim=True)


@attnbench.register("mhsa", kind="peer", name="sdpa")
def attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with the combined "allowed" mask (True = attend)."""
    L, d = q.shape[-2], q.shape[-1]
    S = k.shape[-2]
    s = scale if scale is not None else d**-0.5
    if key_padding_mask is None:  # no row can be fully masked (row i always sees key 0)
        if not (causal and s == 0.0 and causal_zero_scale_nan(q.device.type, q.dtype)):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=s)
        tril = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=tril, scale=s)
    allowed = ~key_padding_mask[:, None, None, :]  # [B, 1, 1, S]
    if causal:
        allowed = allowed & torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
    if probe("sdpa", q.device.type, q.dtype).safe:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=s)
    dead = _dead_rows(allowed)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | dead, scale=s)
    return out.masked_fill(dead, 0.0)


@functools.lru_cache(maxsize=16)
def _identity_mha(E: int, h: int, dtype: torch.dtype, device: str) -> nn.MultiheadAttention:
    """``nn.MultiheadAttention`` whose projections are the identity (weights frozen, training mode, dropout 0)."""
    mha = nn.MultiheadAttention(E, h, dropout=0.0, bias=True, batch_first=True, device=device, dtype=dtype)
    with torch.no_grad():
        eye = torch.eye(E, dtype=dtype, device=device)
        mha.in_proj_weight.copy_(torch.cat([eye, eye, eye]))
        assert mha.in_proj_bias is not None
        mha.in_proj_bias.zero_()
        mha.out_proj.weight.copy_(eye)
        mha.out_proj.bias.zero_()
    mha.requires_grad_(False)
    return mha


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    """[B, h, N, d] -> [B, N, h·d]."""
    B, h, N, d = t.shape
    return t.transpose(1, 2).reshape(B, N, h * d)


def _split_heads(t: torch.Tensor, h: int) -> torch.Tensor:
    """[B, N, h·d] -> [B, h, N, d]."""
    B, N, E = t.shape
    return t.reshape(B, N, h, E // h).transpose(1, 2)


def _mha_supports(case: Case, dtype: str, device: str) -> str | None:
    if "module" in case.tags:  # DETR layers: d = dv = d_model / h, default scale
        return None
    if case["d"] != case["dv"]:
        return f"nn.MultiheadAttention has one head dim for q, k and v (d = {case['d']} != dv = {case['dv']})"
    return None


@attnbench.register("mhsa", kind="peer", name="nn_mha", supports=_mha_supports)
def attention_nn_mha(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """``nn.MultiheadAttention`` with identity projections, need_weights=False (mask True = ignore)."""
    B, h, L, d = q.shape
    S, dv = v.shape[-2], v.shape[-1]
    if dv != d:
        raise ValueError(f"nn.MultiheadAttention needs dv == d, got d = {d}, dv = {dv}")
    if scale is not None and not math.isclose(scale, d**-0.5, rel_tol=1e-12):
        q = q * (scale * math.sqrt(d))  # it always applies 1/√d itself
    mha = _identity_mha(h * d, h, q.dtype, str(q.device))
    query, key, value = (_merge_heads(t) for t in (q, k, v))
    ignore_causal = torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1) if causal else None  # True = ignore
    if key_padding_mask is None or probe("nn_mha", q.device.type, q.dtype).safe:
        out, _ = mha(query, key, value, key_padding_mask=key_padding_mask, attn_mask=ignore_causal, need_weights=False)
        return _split_heads(out, h)
    allowed = ~key_padding_mask[:, None, :]  # [B, 1, S]
    if ignore_causal is not None:
        allowed = allowed & ~ignore_causal
    allowed = allowed.expand(B, L, S)
    dead = _dead_rows(allowed)  # [B, L, 1]
    ignore = (~(allowed | dead)).repeat_interleave(h, dim=0)  # [B·h, L, S], True = ignore
    out, _ = mha(query, key, value, attn_mask=ignore, need_weights=False)
    return out.masked_fill(dead, 0.0).reshape(B, L, h, d).transpose(1, 2)
