"""Non-local block (Wang et al., CVPR 2018): the core ``non_local`` and the NonLocal2d module.

See ``shared/specs/nonlocal.md``. N = H·W queries, M = Hk·Wk keys (row-major):

    embedded_gaussian / gaussian: y_i = Σ_j softmax_j(σ·θ_i·φ_j) g_j      (σ = scale or 1)
    dot:                          y_i = (1/M) Σ_j (θ_i·φ_j) g_j
    concat:                       y_i = (1/M) Σ_j ReLU(w[:Ck]·θ_i + w[Ck:]·φ_j) g_j

**Signature.** Every impl is ``non_local(theta, phi, g, w=None, *, mode, scale=None)``:
the tensors come first (the harness passes ``Inputs.tensors`` positionally), so
the optional concat weight ``w`` is the fourth positional argument and present
in a case's inputs only for ``mode="concat"``; ``mode`` and ``scale`` are
keyword options. This reorders the spec's ``(theta, phi, g, mode, w, scale)``
so that a tensor is never passed where a string is expected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from attnbench.cases import Case
from attnbench.checks.properties import close, first_output, property_atol
from attnbench.registry import Inputs, Mechanism, ModuleDef, Param, Property, PropertyOutcome, define_mechanism

MODES = ("embedded_gaussian", "gaussian", "dot", "concat")
SOFTMAX_MODES = ("embedded_gaussian", "gaussian")
CONCAT_MARGIN = 1e-3  # |pre-ReLU| kept at least this far from 0 (gradcheck; specs/README.md §4)

SHAPE = {
    "B": Param(int, min=1, doc="batch"),
    "Ck": Param(int, min=1, doc="theta/phi channels"),
    "Cv": Param(int, min=1, doc="g (value) channels"),
    "H": Param(int, min=1, doc="query height"),
    "W": Param(int, min=1, doc="query width"),
    "Hk": Param(int, min=1, doc="key height (after subsampling)"),
    "Wk": Param(int, min=1, doc="key width (after subsampling)"),
    "mode": Param(str, choices=MODES, default="embedded_gaussian", doc="pairwise function"),
    "scaled": Param(bool, default=False, doc="scale = Ck^(-1/2) (softmax modes); false: scale None"),
}


def check_args(mode: str, w: torch.Tensor | None, scale: float | None) -> None:
    """The core's argument contract (specs/nonlocal.md §2); raises ValueError."""
    if mode not in MODES:
        raise ValueError(f"non_local: mode must be one of {', '.join(MODES)}, got {mode!r}")
    if scale is not None and mode not in SOFTMAX_MODES:
        raise ValueError(f"non_local: scale is accepted only for the softmax modes, not {mode!r}")
    if (w is not None) != (mode == "concat"):
        raise ValueError(f"non_local: w is required for mode 'concat' and only for it (mode {mode!r})")


def validate(params: Mapping[str, Any]) -> list[str]:
    if params.get("scaled") and params.get("mode") not in SOFTMAX_MODES:
        return [f"scaled = true needs a softmax mode ({', '.join(SOFTMAX_MODES)}), not {params.get('mode')!r}"]
    return []


def case_scale(case: Case) -> float | None:
    return float(case["Ck"]) ** -0.5 if case.get("scaled") else None


def concat_weight(case: Case, theta: torch.Tensor, phi: torch.Tensor, role: str = "w") -> torch.Tensor:
    """w: [2Ck] drawn so that every pre-ReLU value is ≥ CONCAT_MARGIN away from 0.

    Redraws deterministically (roles ``w``, ``w#1``, …) until it holds; the
    pre-activations are a·θ + b·φ with continuous data, so one or two tries do.
    """
    Ck = theta.shape[1]
    for attempt in range(64):
        w = case.randn(role if attempt == 0 else f"{role}#{attempt}", 2 * Ck, std=Ck**-0.5)
        a = torch.einsum("c,bcn->bn", w[:Ck], theta.flatten(2))
        b = torch.einsum("c,bcm->bm", w[Ck:], phi.flatten(2))
        if bool(((a[:, :, None] + b[:, None, :]).abs() >= CONCAT_MARGIN).all()):
            return w
    return w


def make_inputs(case: Case) -> Inputs:
    """theta: [B, Ck, H, W], phi: [B, Ck, Hk, Wk] (std Ck^(−1/4)); g: [B, Cv, Hk, Wk]; w: [2Ck] (concat)."""
    B, Ck, Cv, H, W, Hk, Wk = (case[k] for k in ("B", "Ck", "Cv", "H", "W", "Hk", "Wk"))
    std = Ck**-0.25
    tensors = {
        "theta": case.randn("theta", B, Ck, H, W, std=std),
        "phi": case.randn("phi", B, Ck, Hk, Wk, std=std),
        "g": case.randn("g", B, Cv, Hk, Wk),
    }
    if case["mode"] == "concat":
        tensors["w"] = concat_weight(case, tensors["theta"], tensors["phi"])
    kwargs: dict[str, Any] = {"mode": case["mode"]}
    if case.get("scaled"):
        kwargs["scale"] = case_scale(case)
    return Inputs(tensors, kwargs=kwargs, differentiable=tuple(tensors))


def naive_work(case: Case) -> int:
    return case["B"] * case["H"] * case["W"] * case["Hk"] * case["Wk"]


def flops(case: Case) -> float:
    """Forward FLOPs (2 per MAC): pairwise term + aggregation (+ 4 per softmax entry).

    embedded/gaussian/dot: 2·B·N·M·(Ck + Cv) (+ 4·B·N·M softmax);
    concat: 2·B·(N + M)·Ck projections + 2·B·N·M (add, ReLU) + 2·B·N·M·Cv.
    """
    B, Ck, Cv = case["B"], case["Ck"], case["Cv"]
    N, M = case["H"] * case["W"], case["Hk"] * case["Wk"]
    entries = B * N * M
    if case["mode"] == "concat":
        return 2.0 * B * (N + M) * Ck + 2.0 * entries + 2.0 * entries * Cv
    extra = 4.0 * entries if case["mode"] in SOFTMAX_MODES else 0.0
    return 2.0 * entries * (Ck + Cv) + extra


def memory(case: Case, dtype: torch.dtype) -> Mapping[str, float]:
    """Analytic bytes (specs/nonlocal.md §5)."""
    B, Cv = case["B"], case["Cv"]
    N, M = case["H"] * case["W"], case["Hk"] * case["Wk"]
    size = torch.empty((), dtype=dtype).element_size()
    return {
        "attention_map": B * N * M * size,
        "vectorized_extra": (1 if case["mode"] == "dot" else 2) * B * N * M * size,
        "fused_extra": B * N * (Cv + 2) * size,
    }


# -- properties (specs/nonlocal.md §6) ------------------------------------------------


def _call(fn: Callable[..., Any], inputs: Inputs, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, Inputs]:
    inputs = inputs.to(dtype, device)
    with torch.no_grad():
        return first_output(inputs.call(fn)), inputs


def _ref_scale(inputs: Inputs) -> float:
    return max(float(t.detach().abs().max()) for t in inputs.tensors.values() if t.numel())


def prop_rows_sum_to_one(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """Softmax modes: g constant per (b, c) over keys ⇒ y = that constant at every query."""
    B, Cv = case["B"], case["Cv"]
    const = case.randn("gconst", B, Cv, 1, 1)
    inputs = make_inputs(case)
    inputs.tensors["g"] = const.expand(B, Cv, case["Hk"], case["Wk"]).contiguous()
    out, _ = _call(fn, inputs, dtype, device)
    expected = const.expand(B, Cv, case["H"], case["W"])
    return close(out, expected, property_atol(dtype, float(const.abs().max())), "g constant ⇒ y = g")


def prop_single_key(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """Softmax modes with M = 1: y_i = g_1 for every query."""
    inputs = make_inputs(case)
    g = inputs.tensors["g"]
    out, _ = _call(fn, inputs, dtype, device)
    expected = g.flatten(2)[:, :, :1, None].expand(-1, -1, case["H"], case["W"])
    return close(out, expected, property_atol(dtype, float(g.abs().max())), "M = 1 ⇒ y_i = g_1")


def prop_key_duplication(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """Every key twice (Hk → 2Hk) leaves y unchanged: the normaliser is the key count M, not N."""
    inputs = make_inputs(case)
    out, cast = _call(fn, inputs, dtype, device)
    doubled = Inputs(dict(inputs.tensors), dict(inputs.kwargs), inputs.differentiable)
    for name in ("phi", "g"):
        doubled.tensors[name] = torch.cat([inputs.tensors[name]] * 2, dim=2)
    out2, _ = _call(fn, doubled, dtype, device)
    return close(out2, out, property_atol(dtype, 4 * _ref_scale(cast)), "keys duplicated ⇒ y unchanged")


def prop_linear_in_g(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """dot / concat: y(a·g1 + g2) = a·y(g1) + y(g2)."""
    inputs = make_inputs(case)
    g2 = case.randn("g2", *inputs.tensors["g"].shape)
    a = 0.75
    outs = []
    for g in (inputs.tensors["g"], g2, a * inputs.tensors["g"] + g2):
        trial = Inputs({**inputs.tensors, "g": g}, dict(inputs.kwargs), inputs.differentiable)
        outs.append(_call(fn, trial, dtype, device)[0].double().cpu())
    expected = a * outs[0] + outs[1]
    return close(outs[2], expected, property_atol(dtype, 8 * _ref_scale(inputs)), "y linear in g")


def prop_concat_zero_w(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """concat with w = 0 ⇒ f = ReLU(0) = 0 ⇒ y = 0."""
    inputs = make_inputs(case)
    inputs.tensors["w"] = torch.zeros_like(inputs.tensors["w"])
    out, _ = _call(fn, inputs, dtype, device)
    return close(out, torch.zeros_like(out), property_atol(dtype), "w = 0 ⇒ y = 0")


def _permute_positions(t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return t.flatten(2)[:, :, perm].reshape(t.shape).contiguous()


def prop_key_permutation(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """Jointly permuting the key positions of φ and g leaves y unchanged."""
    inputs = make_inputs(case)
    out, cast = _call(fn, inputs, dtype, device)
    perm = torch.randperm(case["Hk"] * case["Wk"], generator=case.generator("perm_keys"))
    permuted = Inputs(dict(inputs.tensors), dict(inputs.kwargs), inputs.differentiable)
    for name in ("phi", "g"):
        permuted.tensors[name] = _permute_positions(inputs.tensors[name], perm)
    out_p, _ = _call(fn, permuted, dtype, device)
    return close(out_p, out, property_atol(dtype, 4 * _ref_scale(cast)), "key permutation ⇒ y unchanged")


def prop_query_permutation(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """Permuting the query positions of θ permutes y the same way."""
    inputs = make_inputs(case)
    out, cast = _call(fn, inputs, dtype, device)
    perm = torch.randperm(case["H"] * case["W"], generator=case.generator("perm_queries"))
    permuted = Inputs(dict(inputs.tensors), dict(inputs.kwargs), inputs.differentiable)
    permuted.tensors["theta"] = _permute_positions(inputs.tensors["theta"], perm)
    out_p, _ = _call(fn, permuted, dtype, device)
    expected = _permute_positions(out.detach().double().cpu(), perm)
    return close(out_p, expected, property_atol(dtype, 4 * _ref_scale(cast)), "query permutation permutes y")


def _softmax(case: Case) -> bool:
    return bool(case["mode"] in SOFTMAX_MODES)


PROPERTIES = (
    Property("rows_sum_to_one", prop_rows_sum_to_one, _softmax, "softmax modes: g constant ⇒ y = g"),
    Property(
        "single_key",
        prop_single_key,
        lambda c: _softmax(c) and c["Hk"] * c["Wk"] == 1,
        "softmax modes, M = 1 ⇒ y_i = g_1",
    ),
    Property("normalised_by_keys", prop_key_duplication, description="every key twice ⇒ y unchanged (÷M, not ÷N)"),
    Property("linear_in_g", prop_linear_in_g, lambda c: not _softmax(c), "dot/concat: y linear in g"),
    Property("concat_zero_w", prop_concat_zero_w, lambda c: c["mode"] == "concat", "concat: w = 0 ⇒ y = 0"),
    Property(
        "key_permutation",
        prop_key_permutation,
        lambda c: c["Hk"] * c["Wk"] > 1,
        "jointly permuting keys of φ and g leaves y unchanged",
    ),
    Property(
        "query_permutation",
        prop_query_permutation,
        lambda c: c["H"] * c["W"] > 1,
        "permuting queries permutes y",
    ),
)


# -- module: NonLocal2d (specs/nonlocal.md §3) -----------------------------------------

MODULE_PARAMS = {
    "B": Param(int, min=1, doc="batch"),
    "C": Param(int, min=1, doc="channels (inter = max(C // 2, 1))"),
    "H": Param(int, min=1, doc="height"),
    "W": Param(int, min=1, doc="width"),
    "mode": Param(str, choices=MODES, default="embedded_gaussian", doc="pairwise function"),
    "sub_sample": Param(bool, default=False, doc="2×2 max-pool on the phi and g paths"),
    "pool_order": Param(str, choices=("after_conv", "before_conv"), default="after_conv", doc="pool after/before"),
    "scaled": Param(bool, default=False, doc="scale = inter^(-1/2) (softmax modes)"),
}
BN_EPS = 1e-5


def module_inputs(case: Case) -> Inputs:
    """x: [B, C, H, W]; 1×1 conv weights [out, in] and biases; BN (eval) affine and running stats.

    Order: x, wg, bg, wz, bz, bn_weight, bn_bias, bn_mean, bn_var, then wt, bt, wp, bp
    (not for ``gaussian``, which uses θ = x, φ = x), then w (``concat``).
    BN weight and bias are non-zero (README §9.1: zero-initialised scales hide bugs).
    """
    B, C, H, W, mode = (case[k] for k in ("B", "C", "H", "W", "mode"))
    inter = max(C // 2, 1)
    ck = C if mode == "gaussian" else inter
    x = case.randn("x", B, C, H, W)
    wstd = ck**-0.25 / C**0.5  # theta/phi entries ~ std ck^(-1/4) for unit-variance x
    tensors: dict[str, torch.Tensor] = {
        "x": x,
        "wg": case.randn("wg", inter, C, std=C**-0.5),
        "bg": case.randn("bg", inter, std=0.1),
        "wz": case.randn("wz", C, inter, std=inter**-0.5),
        "bz": case.randn("bz", C, std=0.1),
        "bn_weight": case.rand("bn_weight", C, low=0.5, high=1.5),
        "bn_bias": case.randn("bn_bias", C, std=0.1),
        "bn_mean": case.randn("bn_mean", C, std=0.1),
        "bn_var": case.rand("bn_var", C, low=0.5, high=1.5),
    }
    if mode == "gaussian":
        tensors["x"] = x * C**-0.25  # θ = x: keep energies O(1)
    else:
        tensors.update(
            {
                "wt": case.randn("wt", inter, C, std=wstd),
                "bt": case.randn("bt", inter, std=0.1),
                "wp": case.randn("wp", inter, C, std=wstd),
                "bp": case.randn("bp", inter, std=0.1),
            }
        )
    if mode == "concat":
        tensors["w"] = case.randn("w", 2 * inter, std=inter**-0.5)
    kwargs: dict[str, Any] = {"mode": mode, "sub_sample": case["sub_sample"], "pool_order": case["pool_order"]}
    if case.get("scaled"):
        kwargs["scale"] = float(ck) ** -0.5
    differentiable = tuple(n for n in tensors if n not in ("bn_mean", "bn_var"))
    return Inputs(tensors, kwargs=kwargs, differentiable=differentiable)


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.conv2d(x, weight[:, :, None, None], bias)


def nonlocal2d_forward(
    non_local: Callable[..., torch.Tensor],
    x: torch.Tensor,
    wg: torch.Tensor,
    bg: torch.Tensor,
    wz: torch.Tensor,
    bz: torch.Tensor,
    bn_weight: torch.Tensor,
    bn_bias: torch.Tensor,
    bn_mean: torch.Tensor,
    bn_var: torch.Tensor,
    wt: torch.Tensor | None = None,
    bt: torch.Tensor | None = None,
    wp: torch.Tensor | None = None,
    bp: torch.Tensor | None = None,
    w: torch.Tensor | None = None,
    *,
    mode: str = "embedded_gaussian",
    sub_sample: bool = False,
    pool_order: str = "after_conv",
    scale: float | None = None,
) -> torch.Tensor:
    """NonLocal2d: ``z = BN_eval(W_z · non_local(θ(x), φ(x), g(x))) + x``, x: [B, C, H, W].

    ``sub_sample`` max-pools (2×2, stride 2, floor) the φ and g paths, after the
    1×1 conv (AlexHex7, mmcv) or before it (video-nonlocal-net).
    """

    def key_path(weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        if weight is None:  # gaussian: φ = x
            return F.max_pool2d(x, 2) if sub_sample else x
        if sub_sample and pool_order == "before_conv":
            return _conv1x1(F.max_pool2d(x, 2), weight, bias)
        y = _conv1x1(x, weight, bias)
        return F.max_pool2d(y, 2) if sub_sample else y

    theta = x if wt is None else _conv1x1(x, wt, bt)
    phi = key_path(wp, bp)
    g = key_path(wg, bg)
    extra = (w,) if w is not None else ()
    y = non_local(theta, phi, g, *extra, mode=mode, **({"scale": scale} if scale is not None else {}))
    z = _conv1x1(y, wz, bz)
    z = F.batch_norm(z, bn_mean, bn_var, bn_weight, bn_bias, training=False, eps=BN_EPS)
    return z + x


def prop_identity_at_init(module: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """BN weight and bias at their stated initialisation (0) ⇒ the block is the identity."""
    inputs = module_inputs(case)
    inputs.tensors["bn_weight"] = torch.zeros_like(inputs.tensors["bn_weight"])
    inputs.tensors["bn_bias"] = torch.zeros_like(inputs.tensors["bn_bias"])
    cast = inputs.to(dtype, device)
    with torch.no_grad():
        out = module(*cast.tensors.values(), **cast.kwargs)
    return close(out, cast.tensors["x"], property_atol(dtype), "BN scale 0 ⇒ output = input")


NONLOCAL2D = ModuleDef(
    name="nonlocal2d",
    params=MODULE_PARAMS,
    make_inputs=module_inputs,
    forward=nonlocal2d_forward,
    properties=(Property("identity_at_init", prop_identity_at_init, description="BN scale 0 ⇒ block = identity"),),
    description="NonLocal2d: θ/φ/g 1×1 convs to C/2, optional 2×2 max-pool (pool_order), W_z + BN(eval), residual",
)

NONLOCAL = define_mechanism(
    Mechanism(
        name="nonlocal",
        core="non_local",
        params=SHAPE,
        make_inputs=make_inputs,
        validate=validate,
        naive_work=naive_work,
        flops=flops,
        memory=memory,
        properties=PROPERTIES,
        modules=(NONLOCAL2D,),
        doc="Non-local block (Wang et al., CVPR 2018): non_local(theta, phi, g, w=None, *, mode, scale).",
    )
)
