"""Squeeze-and-Excitation: the core ``se(x, w1, b1, w2, b2)`` and the SE basic block.

See ``shared/specs/se.md``. With ``Cr`` hidden units (the rows of ``w1``)::

    z[b,c]       = mean_{y,x} x[b,c,y,x]                       squeeze
    u[b,r]       = max(0, Σ_c w1[r,c]·z[b,c] + b1[r])
    s[b,c]       = sigmoid(Σ_r w2[c,r]·u[b,r] + b2[c])
    out[b,c,y,x] = x[b,c,y,x]·s[b,c]                           excite

**Absent biases.** Every impl accepts ``b1``/``b2`` as ``None`` *or* as a
zero-size tensor (``shape [0]``), both meaning "no bias" (moskomule/senet.pytorch).
The runner passes tensors positionally, so a case with ``bias = false`` draws
zero-size ``b1``/``b2`` that are not differentiable.

**Zero hidden units.** ``Cr = C // r < 1`` is rejected by every impl and by the
module with a ``ValueError`` naming C, r and Cr (:func:`check_hidden`).
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

RELU_MARGIN = 1e-3  # |pre-ReLU| kept at least this far from the kink (gradcheck)

SHAPE = {
    "B": Param(int, min=1, doc="batch"),
    "C": Param(int, min=1, doc="channels"),
    "Cr": Param(int, min=1, doc="hidden units of the bottleneck (C // r); 0 is rejected"),
    "H": Param(int, min=1, doc="height"),
    "W": Param(int, min=1, doc="width"),
    "bias": Param(bool, default=True, doc="b1, b2 present (false: zero-size tensors = None)"),
}


def check_hidden(C: int, Cr: int, r: int | None = None, op: str = "se") -> None:
    """Raises ValueError when the bottleneck has no hidden unit (specs/se.md §2, "Hidden width").

    Args:
        C: channels.
        Cr: hidden units (rows of ``w1``).
        r: the reduction ratio when known (the module); the core only sees ``Cr``.
        op: who is checking, for the message.
    """
    if Cr >= 1:
        return
    ratio = f"r = {r}" if r is not None else f"r > C = {C} (w1 has {Cr} rows)"
    raise ValueError(
        f"{op}: the reduction leaves Cr = C // r = {Cr} hidden units for C = {C}, {ratio}; "
        "SE needs Cr >= 1 (a zero-width bottleneck would make the gate the constant sigmoid(b2))"
    )


def bias_or_none(b: torch.Tensor | None) -> torch.Tensor | None:
    """``None`` for an absent bias (``None`` or zero-size), else ``b``."""
    return None if b is None or b.numel() == 0 else b


def _pushed_from_kink(pre: torch.Tensor, margin: float) -> torch.Tensor:
    """A shift per hidden unit that moves every |pre| (over the batch) to ≥ margin."""
    shift = torch.zeros(pre.shape[1], dtype=pre.dtype)
    for r in range(pre.shape[1]):
        col = pre[:, r]
        while bool(((col + shift[r]).abs() < margin).any()):
            shift[r] += 2 * margin
    return shift


def draw_weights(case: Case, C: int, Cr: int, z: torch.Tensor | None, bias: bool) -> dict[str, torch.Tensor]:
    """w1 [Cr, C], b1 [Cr] (or [0]), w2 [C, Cr], b2 [C] (or [0]); |pre-ReLU| ≥ 1e-3 on ``z`` if given.

    Standard deviations keep pre-activations ~ N(0, 1), so gates spread over (0, 1).
    With a bias the margin is enforced by shifting b1; without, by nudging single
    entries of w1 (deterministic, so still seeded).
    """
    w1 = case.randn("w1", Cr, C, std=C**-0.5)
    w2 = case.randn("w2", C, Cr, std=Cr**-0.5)
    if bias:
        b1 = case.randn("b1", Cr, std=0.5)
        if z is not None:
            b1 = b1 + _pushed_from_kink(z @ w1.T + b1, RELU_MARGIN)
        b2 = case.randn("b2", C, std=0.5)
    else:
        b1 = torch.zeros(0, dtype=torch.float64)
        b2 = torch.zeros(0, dtype=torch.float64)
    if not bias and z is not None:
        pre = z @ w1.T
        small = (pre.abs() < RELU_MARGIN).any(0)
        if bool(small.any()):  # nudge one entry of the row at a time
            for r in torch.nonzero(small).flatten().tolist():
                for step in range(1, 1000):
                    trial = w1[r].clone()
                    trial[step % C] += 0.01 * step
                    if bool(((z @ trial).abs() >= RELU_MARGIN).all()):
                        w1[r] = trial
                        break
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}


def make_inputs(case: Case) -> Inputs:
    """x: [B, C, H, W] = unit noise + a per-(b, c) offset (so z is O(1)); weights from :func:`draw_weights`."""
    B, C, Cr, H, W = (case[k] for k in ("B", "C", "Cr", "H", "W"))
    bias = bool(case.get("bias", True))
    x = case.randn("x", B, C, H, W) + case.randn("x_offset", B, C, 1, 1)
    weights = draw_weights(case, C, Cr, x.mean((2, 3)), bias)
    diff = ("x", "w1", "b1", "w2", "b2") if bias else ("x", "w1", "w2")
    return Inputs({"x": x, **weights}, differentiable=diff)


def naive_work(case: Case) -> int:
    """Pool and scale loops over B·C·H·W plus the MLP's 2·B·C·Cr."""
    B, C, Cr, H, W = (case[k] for k in ("B", "C", "Cr", "H", "W"))
    return 2 * B * C * H * W + 2 * B * C * Cr


def flops(case: Case) -> float:
    """Pool adds + scale multiplies (2·BCHW) + two linear layers (4·B·C·Cr) + biases, ReLU, sigmoid (~4·BC)."""
    B, C, Cr, H, W = (case[k] for k in ("B", "C", "Cr", "H", "W"))
    return 2.0 * B * C * H * W + 4.0 * B * C * Cr + 4.0 * B * C + 2.0 * B * Cr


def memory(case: Case, dtype: torch.dtype) -> Mapping[str, float]:
    """Analytic bytes (specs/se.md §5): no attention map; z, u, s are B·(2C + Cr)."""
    B, C, Cr, H, W = (case[k] for k in ("B", "C", "Cr", "H", "W"))
    size = torch.empty((), dtype=dtype).element_size()
    return {
        "gate_stats": B * (2 * C + Cr) * size,
        "output": B * C * H * W * size,
        "ext_saved": (B * C * H * W + B * (2 * C + Cr)) * size,  # x + z, u, s
    }


def traffic(case: Case, dtype: torch.dtype, pass_: str) -> float:
    """Bytes an ideal two-pass kernel moves (N = B·C·H·W elements of ``dtype``).

    Forward: pooling reads x, scaling reads x again and writes out -> 3N
    (the gate depends on all of x[b], so one sweep cannot suffice unless x[b]
    stays in cache). Backward: ds = Σ g·x reads g and x, dx = g·s + dz/HW
    reads g again and writes dx -> 4N; fwd+bwd = 7N. Weights are read once per
    pass and their gradients written once: (2·C·Cr + Cr + C) elements.
    """
    B, C, Cr, H, W = (case[k] for k in ("B", "C", "Cr", "H", "W"))
    size = torch.empty((), dtype=dtype).element_size()
    n = B * C * H * W
    weights = 2 * C * Cr + (Cr + C if case.get("bias", True) else 0)
    if pass_ == "fwd":
        return float((3 * n + weights) * size)
    return float((7 * n + 3 * weights) * size)


# -- properties (specs/se.md §6) ---------------------------------------------------


def _small(case: Case) -> bool:
    return naive_work(case) <= NAIVE_WORK_BUDGET


def _run(fn: Callable[..., Any], tensors: Mapping[str, torch.Tensor], dtype: torch.dtype, device: str) -> torch.Tensor:
    args = [t.to(device=device, dtype=dtype) for t in tensors.values()]
    with torch.no_grad():
        return first_output(fn(*args)).detach().to(torch.float64).cpu()


def prop_gate_range(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """out = x·s with 0 < s < 1 constant over (y, x) per (b, c): |out| ≤ |x|, out/x constant."""
    t = make_inputs(case).tensors
    out = _run(fn, t, dtype, device)
    x = t["x"]
    atol = property_atol(dtype, float(x.abs().max()))
    if out.shape != x.shape:
        return PropertyOutcome(False, float("inf"), atol, f"out shape {tuple(out.shape)} != x {tuple(x.shape)}")
    excess = float((out.abs() - x.abs()).clamp_min(0).max())
    ratio = (out / x).flatten(2)  # x is continuous noise: no zeros
    spread = float((ratio.max(2).values - ratio.min(2).values).max())
    lo, hi = float(ratio.min()), float(ratio.max())
    ok = excess <= atol and spread <= 1e3 * atol and lo > 0.0 and hi < 1.0
    detail = f"|out| - |x| ≤ {excess:.3g}; out/x spread over space {spread:.3g}; out/x in [{lo:.4g}, {hi:.4g}]"
    return PropertyOutcome(ok, max(excess, spread), atol, ("" if ok else "gate not in (0,1) per channel: ") + detail)


def prop_spatial_permutation(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """Permuting the H·W positions of x permutes out identically (the gate sees only the mean)."""
    t = dict(make_inputs(case).tensors)
    B, C, H, W = t["x"].shape
    out = _run(fn, t, dtype, device)
    perm = torch.randperm(H * W, generator=case.generator("perm"))
    t["x"] = t["x"].flatten(2)[:, :, perm].reshape(B, C, H, W)
    out_p = _run(fn, t, dtype, device)
    expected = out.flatten(2)[:, :, perm].reshape(B, C, H, W)
    return close(out_p, expected, property_atol(dtype, float(t["x"].abs().max())), "spatial permutation")


def prop_zero_mean_pattern(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """Adding a zero-mean (per channel) spatial pattern to x leaves the gate s unchanged."""
    t = dict(make_inputs(case).tensors)
    x = t["x"]
    out = _run(fn, t, dtype, device)
    pattern = case.randn("pattern", *x.shape)
    pattern = pattern - pattern.mean((2, 3), keepdim=True)
    t["x"] = x + pattern
    out_p = _run(fn, t, dtype, device)
    # same gate ⇒ out_p = out + pattern·s = out·(x + pattern)/x
    expected = out / x * t["x"]
    return close(out_p, expected, 1e3 * property_atol(dtype, float(t["x"].abs().max())), "zero-mean pattern")


def prop_zero_w2(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """w2 = 0 ⇒ s = sigmoid(b2) (0.5 without bias) ⇒ out = x·sigmoid(b2)."""
    t = dict(make_inputs(case).tensors)
    t["w2"] = torch.zeros_like(t["w2"])
    out = _run(fn, t, dtype, device)
    b2 = t["b2"] if t["b2"].numel() else torch.zeros(t["x"].shape[1], dtype=torch.float64)
    expected = t["x"] * torch.sigmoid(b2)[None, :, None, None]
    return close(out, expected, property_atol(dtype, float(t["x"].abs().max())), "w2 = 0 ⇒ out = x·sigmoid(b2)")


def prop_rejects_zero_hidden(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """C = 8, r = 16 gives Cr = 0: the impl must raise ValueError naming C and Cr (never a constant gate)."""
    x = case.randn("x", 2, 8, 3, 5).to(device=device, dtype=dtype)
    w1 = torch.zeros(0, 8, dtype=dtype, device=device)
    w2 = torch.zeros(8, 0, dtype=dtype, device=device)
    b1 = torch.zeros(0, dtype=dtype, device=device)
    b2 = torch.zeros(8, dtype=dtype, device=device)
    try:
        with torch.no_grad():
            fn(x, w1, b1, w2, b2)
    except ValueError as exc:
        msg = str(exc)
        ok = "C = 8" in msg and "Cr" in msg and "r" in msg
        return PropertyOutcome(ok, 0.0 if ok else 1.0, 0.0, f"ValueError: {msg}"[:300])
    except Exception as exc:
        return PropertyOutcome(False, 1.0, 0.0, f"raised {type(exc).__name__} instead of ValueError: {exc}"[:300])
    return PropertyOutcome(False, 1.0, 0.0, "accepted Cr = 0 (C = 8, r = 16) silently")


PROPERTIES = (
    Property("gate_range", prop_gate_range, _small, "0 < out/x < 1, constant over space per (b, c)"),
    Property(
        "spatial_permutation", prop_spatial_permutation, lambda c: _small(c) and c["H"] * c["W"] > 1, "equivariance"
    ),
    Property("zero_mean_pattern", prop_zero_mean_pattern, _small, "zero-mean spatial pattern leaves s unchanged"),
    Property("zero_w2", prop_zero_w2, _small, "w2 = 0 ⇒ out = x·sigmoid(b2)"),
    Property("rejects_zero_hidden", prop_rejects_zero_hidden, lambda c: c["C"] == 4, "Cr = 0 raises ValueError"),
)


# -- module: SE basic residual block (specs/se.md §3) -------------------------------

MODULE_PARAMS = {
    "B": Param(int, min=1, doc="batch"),
    "C": Param(int, min=1, doc="channels (in = out, identity shortcut)"),
    "H": Param(int, min=1, doc="height"),
    "W": Param(int, min=1, doc="width"),
    "r": Param(int, min=1, default=16, doc="reduction ratio: Cr = C // r (must be >= 1)"),
    "bias": Param(bool, default=True, doc="SE layer biases"),
}


def module_inputs(case: Case) -> Inputs:
    """x [B, C, H, W]; conv3×3 weights [C, C, 3, 3]; eval-mode BN as per-channel scale/shift; SE weights.

    Raises:
        ValueError: C // r < 1.
    """
    B, C, H, W, r = (case[k] for k in ("B", "C", "H", "W", "r"))
    Cr = C // r
    check_hidden(C, Cr, r, op="se_basic_block")
    bias = bool(case.get("bias", True))
    t = {
        "x": case.randn("x", B, C, H, W),
        "conv1": case.randn("conv1", C, C, 3, 3, std=(9 * C) ** -0.5),
        "bn1_scale": 1.0 + case.randn("bn1_scale", C, std=0.2),
        "bn1_shift": case.randn("bn1_shift", C, std=0.2),
        "conv2": case.randn("conv2", C, C, 3, 3, std=(9 * C) ** -0.5),
        "bn2_scale": 1.0 + case.randn("bn2_scale", C, std=0.2),
        "bn2_shift": case.randn("bn2_shift", C, std=0.2) + 0.5,  # z of the SE input is O(1)
    }
    weights = draw_weights(case, C, Cr, None, bias)
    t.update(weights)
    diff = tuple(k for k in t if not (k in ("b1", "b2") and not bias))
    return Inputs(t, kwargs={"r": r}, differentiable=diff)


def se_basic_block(
    se: Callable[..., torch.Tensor],
    x: torch.Tensor,
    conv1: torch.Tensor,
    bn1_scale: torch.Tensor,
    bn1_shift: torch.Tensor,
    conv2: torch.Tensor,
    bn2_scale: torch.Tensor,
    bn2_shift: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    r: int = 16,
) -> torch.Tensor:
    """SE-ResNet basic block: ``relu(se(bn2(conv2(relu(bn1(conv1 x))))) + x)``; SE before the addition.

    x: [B, C, H, W]; conv*: [C, C, 3, 3] (padding 1); bn*: [C] eval-mode affine.
    """
    C = x.shape[1]
    check_hidden(C, C // r, r, op="se_basic_block")
    if w1.shape[0] != C // r:
        raise ValueError(f"se_basic_block: w1 has {w1.shape[0]} rows, expected C // r = {C} // {r} = {C // r}")
    h = F.conv2d(x, conv1, padding=1) * bn1_scale[:, None, None] + bn1_shift[:, None, None]
    h = torch.relu(h)
    h = F.conv2d(h, conv2, padding=1) * bn2_scale[:, None, None] + bn2_shift[:, None, None]
    h = se(h, w1, b1, w2, b2)
    return torch.relu(h + x)


SE_BLOCK = ModuleDef(
    name="se_basic_block",
    params=MODULE_PARAMS,
    make_inputs=module_inputs,
    forward=se_basic_block,
    description="SE-ResNet basic block: conv3×3-BN-ReLU-conv3×3-BN → SE → + shortcut → ReLU (BN eval)",
)

SE = define_mechanism(
    Mechanism(
        name="se",
        core="se",
        params=SHAPE,
        make_inputs=make_inputs,
        naive_work=naive_work,
        flops=flops,
        memory=memory,
        properties=PROPERTIES,
        modules=(SE_BLOCK,),
        traffic=traffic,
        doc="Squeeze-and-Excitation (Hu et al., CVPR 2018): se(x, w1, b1, w2, b2) = x · sigmoid(MLP(mean(x))).",
    )
)
