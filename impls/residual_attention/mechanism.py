"""Residual attention (Residual Attention Network): the core ``ran(trunk, mask_logits, kind)`` and a stage.

See ``shared/specs/residual_attention.md``. ``out = (1 + f(m)) ⊙ trunk`` with
``m = mask_logits`` and, per kind (paper Sec. 3.3):

- ``mixed``:   f = sigmoid(m), elementwise;
- ``channel``: f = m / max(‖m[b,:,i]‖₂, 1e-12), over the C channels at each position;
- ``spatial``: f = sigmoid((m − μ[b,c]) / √(σ²[b,c] + 1e-5)), μ and the *biased*
  σ² over the H·W positions of each channel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from attnbench.cases import Case
from attnbench.checks.properties import close, first_output, property_atol
from attnbench.registry import (
    NAIVE_WORK_BUDGET,
    Inputs,
    Mechanism,
    ModuleDef,
    Param,
    Property,
    PropertyOutcome,
    define_mechanism,
)

KINDS = ("mixed", "channel", "spatial")
NORM_EPS = 1e-12  # channel kind: F.normalize's eps
VAR_EPS = 1e-5  # spatial kind: F.instance_norm's eps

SHAPE = {
    "B": Param(int, min=1, doc="batch"),
    "C": Param(int, min=1, doc="channels"),
    "H": Param(int, min=1, doc="height"),
    "W": Param(int, min=1, doc="width"),
    "kind": Param(str, choices=KINDS, default="mixed", doc="attention kind f: mixed, channel or spatial"),
}


def check_kind(kind: str, op: str = "ran") -> None:
    if kind not in KINDS:
        raise ValueError(f"{op}: kind must be one of {', '.join(KINDS)}, got {kind!r}")


def make_inputs(case: Case) -> Inputs:
    """trunk, mask_logits: [B, C, H, W] unit normal; mask_logits gets a per-(b, c) offset (spatial μ ≠ 0)."""
    B, C, H, W = (case[k] for k in ("B", "C", "H", "W"))
    trunk = case.randn("trunk", B, C, H, W)
    mask = case.randn("mask", B, C, H, W) + case.randn("mask_offset", B, C, 1, 1, std=0.5)
    return Inputs(
        {"trunk": trunk, "mask_logits": mask},
        kwargs={"kind": case.get("kind", "mixed")},
        differentiable=("trunk", "mask_logits"),
    )


def naive_work(case: Case) -> int:
    """Statistics pass(es) plus the output pass, B·C·H·W iterations each."""
    n = case["B"] * case["C"] * case["H"] * case["W"]
    return {"mixed": 1, "channel": 2, "spatial": 3}[case.get("kind", "mixed")] * n


def flops(case: Case) -> float:
    """mixed ≈ 5 per element (sigmoid 4, 1 + f, ×); channel 2 (square-add) + 3; spatial 3 (stats) + 8."""
    n = case["B"] * case["C"] * case["H"] * case["W"]
    return float({"mixed": 6, "channel": 5, "spatial": 11}[case.get("kind", "mixed")] * n)


def memory(case: Case, dtype: torch.dtype) -> Mapping[str, float]:
    """Analytic bytes (specs/residual_attention.md §5): f kept by autograd vs the ext's statistics."""
    B, C, H, W = (case[k] for k in ("B", "C", "H", "W"))
    size = torch.empty((), dtype=dtype).element_size()
    stats = {"mixed": 0, "channel": B * H * W, "spatial": 2 * B * C}[case.get("kind", "mixed")]
    return {"f_map": B * C * H * W * size, "ext_stats": stats * 4}


def traffic(case: Case, dtype: torch.dtype, pass_: str) -> float:
    """Bytes an ideal kernel moves (N = B·C·H·W elements of ``dtype``).

    mixed, forward: read trunk and m, write out -> 3N; backward: read g, trunk,
    m, write both gradients -> 5N. channel/spatial need their statistics first,
    a second sweep over m: forward 4N; backward a reduction sweep (g, trunk, m)
    then the gradient sweep (g, trunk, m read; 2 written) -> 8N. fwd+bwd is the
    sum (mixed 8N, channel/spatial 12N); statistics (≤ 2·B·C) are ignored.
    """
    n = case["B"] * case["C"] * case["H"] * case["W"]
    size = torch.empty((), dtype=dtype).element_size()
    fwd, bwd = (3, 5) if case.get("kind", "mixed") == "mixed" else (4, 8)
    return float((fwd if pass_ == "fwd" else fwd + bwd) * n * size)


# -- properties (specs/residual_attention.md §6) ----------------------------------


def _small(case: Case) -> bool:
    return naive_work(case) <= NAIVE_WORK_BUDGET


def _run(
    fn: Callable[..., Any], trunk: torch.Tensor, mask: torch.Tensor, kind: str, dtype: torch.dtype, device: str
) -> torch.Tensor:
    with torch.no_grad():
        out = first_output(fn(trunk.to(device=device, dtype=dtype), mask.to(device=device, dtype=dtype), kind))
    return out.detach().to(torch.float64).cpu()


def prop_identity(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """mixed, m = 0 ⇒ 1.5·trunk; channel, m = 0 ⇒ trunk; spatial, m constant per (b, c) ⇒ 1.5·trunk."""
    kind = case["kind"]
    t = make_inputs(case).tensors
    trunk = t["trunk"]
    if kind == "spatial":
        mask = case.randn("mask_const", case["B"], case["C"], 1, 1).expand_as(trunk).contiguous()
        factor, what = 1.5, "spatial, m constant per (b, c) ⇒ out = 1.5·trunk"
    else:
        mask = torch.zeros_like(trunk)
        factor, what = (1.5, "mixed, m = 0 ⇒ out = 1.5·trunk") if kind == "mixed" else (1.0, "channel, m = 0 ⇒ trunk")
    out = _run(fn, trunk, mask, kind, dtype, device)
    return close(out, factor * trunk, property_atol(dtype, float(trunk.abs().max())), what)


def prop_range(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """out/trunk = 1 + f lies in (1, 2) for mixed and spatial, in [0, 2] for channel."""
    kind = case["kind"]
    t = make_inputs(case).tensors
    out = _run(fn, t["trunk"], t["mask_logits"], kind, dtype, device)
    ratio = out / t["trunk"]
    lo, hi = float(ratio.min()), float(ratio.max())
    tol = property_atol(dtype, 2.0) * 1e3  # ratio of rounded values
    ok = (0.0 - tol <= lo and hi <= 2.0 + tol) if kind == "channel" else (lo > 1.0 and hi < 2.0)
    bounds = "[0, 2]" if kind == "channel" else "(1, 2)"
    return PropertyOutcome(ok, max(0.0, -lo, hi - 2.0), tol, f"out/trunk in [{lo:.4g}, {hi:.4g}], expected {bounds}")


def prop_channel_rescale(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """channel: m[b,:,i] → α_i·m[b,:,i] with α_i > 0 per position leaves out unchanged."""
    t = make_inputs(case).tensors
    B, _, H, W = t["trunk"].shape
    alpha = case.rand("alpha", B, 1, H, W, low=0.25, high=4.0)
    out = _run(fn, t["trunk"], t["mask_logits"], "channel", dtype, device)
    out_s = _run(fn, t["trunk"], t["mask_logits"] * alpha, "channel", dtype, device)
    return close(out_s, out, property_atol(dtype, 4 * float(t["trunk"].abs().max())), "channel: positive rescaling")


def prop_spatial_affine(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """spatial: m → a·m + β per (b, c) with a ≥ 1 leaves out unchanged up to the 1e-5 epsilon (tol 1e-4)."""
    t = make_inputs(case).tensors
    B, C = t["trunk"].shape[:2]
    a = case.rand("affine_a", B, C, 1, 1, low=1.0, high=3.0)
    beta = case.randn("affine_b", B, C, 1, 1, std=2.0)
    out = _run(fn, t["trunk"], t["mask_logits"], "spatial", dtype, device)
    out_s = _run(fn, t["trunk"], a * t["mask_logits"] + beta, "spatial", dtype, device)
    return close(out_s, out, 1e-4 * max(1.0, float(t["trunk"].abs().max())), "spatial: per-(b, c) affine")


def prop_batch_independent(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """Changing batch element 1 leaves element 0's output unchanged (statistics never pool over B)."""
    kind = case["kind"]
    t = make_inputs(case).tensors
    out = _run(fn, t["trunk"], t["mask_logits"], kind, dtype, device)
    mask = t["mask_logits"].clone()
    mask[1:] = 3.0 * mask[1:] + 1.0
    out_c = _run(fn, t["trunk"], mask, kind, dtype, device)
    return close(out_c[:1], out[:1], property_atol(dtype, float(t["trunk"].abs().max())), "batch element 0 unchanged")


PROPERTIES = (
    Property("identity", prop_identity, _small, "m = 0 (m constant for spatial) gives 1.5·trunk or trunk"),
    Property("range", prop_range, _small, "1 + f in (1, 2) (mixed, spatial) or [0, 2] (channel)"),
    Property(
        "channel_rescale",
        prop_channel_rescale,
        lambda c: _small(c) and c["kind"] == "channel",
        "invariant to positive per-position rescaling",
    ),
    Property(
        "spatial_affine",
        prop_spatial_affine,
        lambda c: _small(c) and c["kind"] == "spatial",
        "invariant to per-(b, c) affine changes of m",
    ),
    Property(
        "batch_independent",
        prop_batch_independent,
        lambda c: _small(c) and c["B"] >= 2,
        "statistics do not mix batch elements",
    ),
)


# -- module: one attention stage (specs/residual_attention.md §3) --------------------

UNITS = ("pre", "trunk1", "trunk2", "down1", "skip1", "down2", "up1", "post")
"""Residual units of the stage: p = 1 pre/post, t = 2 trunk, r = 1 per mask level."""
UNIT_PARAMS = ("bn1_scale", "bn1_shift", "conv1", "bn2_scale", "bn2_shift", "conv2")
TAIL_PARAMS = ("tail_bn1_scale", "tail_bn1_shift", "tail_w1", "tail_b1", "tail_bn2_scale", "tail_bn2_shift", "tail_w2")
MODULE_WEIGHTS = tuple(f"{u}.{p}" for u in UNITS for p in UNIT_PARAMS) + TAIL_PARAMS

MODULE_PARAMS = {
    "B": Param(int, min=1, doc="batch"),
    "C": Param(int, min=1, doc="channels"),
    "H": Param(int, min=4, doc="height (two 3×3/stride-2 max-pools)"),
    "W": Param(int, min=4, doc="width"),
    "kind": Param(str, choices=KINDS, default="mixed", doc="attention kind of the combine step"),
}


def module_inputs(case: Case) -> Inputs:
    """x [B, C, H, W]; per unit eval-BN affines and two 3×3 convs; the mask tail's BN/1×1 convs."""
    B, C, H, W = (case[k] for k in ("B", "C", "H", "W"))
    t: dict[str, torch.Tensor] = {"x": case.randn("x", B, C, H, W)}
    for name in MODULE_WEIGHTS:
        if name.endswith("_scale"):
            t[name] = 1.0 + case.randn(name, C, std=0.2)
        elif name.endswith("_shift") or name.endswith("_b1"):
            t[name] = case.randn(name, C, std=0.2)
        elif name.startswith("tail_w"):
            t[name] = case.randn(name, C, C, std=C**-0.5)
        else:
            t[name] = case.randn(name, C, C, 3, 3, std=0.5 * (9 * C) ** -0.5)
    return Inputs(t, kwargs={"kind": case.get("kind", "mixed")}, differentiable=tuple(t))


def _unit(x: torch.Tensor, p: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    """Pre-activation residual unit: x + conv2(relu(bn2(conv1(relu(bn1(x)))))), 3×3 convs, eval BN."""
    h = torch.relu(x * p[f"{name}.bn1_scale"][:, None, None] + p[f"{name}.bn1_shift"][:, None, None])
    h = F.conv2d(h, p[f"{name}.conv1"], padding=1)
    h = torch.relu(h * p[f"{name}.bn2_scale"][:, None, None] + p[f"{name}.bn2_shift"][:, None, None])
    return x + F.conv2d(h, p[f"{name}.conv2"], padding=1)


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling with align_corners=True (``nn.UpsamplingBilinear2d``, the common port)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


def attention_stage(
    ran: Callable[..., torch.Tensor], x: torch.Tensor, *weights: torch.Tensor, kind: str = "mixed"
) -> torch.Tensor:
    """Attention module (p = 1, t = 2, r = 1, two pool levels) combining with ``ran(T, mask_logits, kind)``.

    x: [B, C, H, W]; weights in :data:`MODULE_WEIGHTS` order. The mask tail
    (BN-ReLU-1×1-BN-ReLU-1×1) outputs the logits; the core applies f (sigmoid
    for ``mixed``) and the attention residual (1 + f) ⊙ T.
    """
    p = dict(zip(MODULE_WEIGHTS, weights, strict=True))
    x = _unit(x, p, "pre")
    trunk = _unit(_unit(x, p, "trunk1"), p, "trunk2")
    # soft-mask branch: bottom-up
    m1 = _unit(F.max_pool2d(x, 3, stride=2, padding=1), p, "down1")  # H/2
    skip1 = _unit(m1, p, "skip1")
    m2 = _unit(F.max_pool2d(m1, 3, stride=2, padding=1), p, "down2")  # H/4
    # top-down: upsample, add the skip, a unit, upsample to the input size
    m1 = _unit(_up(m2, skip1) + skip1, p, "up1")
    m0 = _up(m1, x)
    h = torch.relu(m0 * p["tail_bn1_scale"][:, None, None] + p["tail_bn1_shift"][:, None, None])
    h = F.conv2d(h, p["tail_w1"][:, :, None, None], p["tail_b1"])
    h = torch.relu(h * p["tail_bn2_scale"][:, None, None] + p["tail_bn2_shift"][:, None, None])
    mask_logits = F.conv2d(h, p["tail_w2"][:, :, None, None])
    return _unit(ran(trunk, mask_logits, kind), p, "post")


STAGE = ModuleDef(
    name="attention_stage",
    params=MODULE_PARAMS,
    make_inputs=module_inputs,
    forward=attention_stage,
    description="trunk (2 units) + two-level bottom-up/top-down soft mask, (1 + f(M)) ⊙ T, pre/post units",
)

RESIDUAL_ATTENTION = define_mechanism(
    Mechanism(
        name="residual_attention",
        core="ran",
        params=SHAPE,
        make_inputs=make_inputs,
        naive_work=naive_work,
        flops=flops,
        memory=memory,
        properties=PROPERTIES,
        modules=(STAGE,),
        traffic=traffic,
        doc="Residual attention (Wang et al., CVPR 2017): ran(trunk, mask_logits, kind) = (1 + f(m)) ⊙ trunk.",
    )
)
