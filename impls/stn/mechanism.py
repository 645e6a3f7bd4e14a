"""Spatial transformer: the cores ``bilinear_sample`` and ``affine_grid`` and the STN module.

See ``shared/specs/stn.md``. Two cores, registered as ``"stn.bilinear_sample"``
and ``"stn.affine_grid"``:

    affine_grid(theta [B,2,3], size (B,C,Ho,Wo), align_corners) -> grid [B,Ho,Wo,2]   (x, y)
    bilinear_sample(inp [B,C,H,W], grid [B,Ho,Wo,2], align_corners) -> [B,C,Ho,Wo]  zeros padding

Cases choose the grid by kind: ``random`` draws U(−1.3, 1.3) (reaches outside the
image, so zero padding matters); ``identity``, ``translate``, ``rotate``,
``zoom_in`` (scale-up: θ scale < 1) and ``zoom_out`` (scale-down, reaching
outside) build it from a θ that differs per batch element. Every case grid is
then nudged ≥ 1e-3 away from integer sample coordinates, where the sampler is
not differentiable (so float32 rounding cannot pick a different one-sided
derivative than the float64 reference); exact integer coordinates are checked by
the ``identity``, ``hflip`` and ``integer_coordinates`` properties instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from attnbench.cases import Case
from attnbench.checks.properties import close, first_output, property_atol
from attnbench.registry import Inputs, Mechanism, ModuleDef, Param, Property, PropertyOutcome, define_mechanism

GRID_KINDS = ("random", "identity", "translate", "rotate", "zoom_in", "zoom_out")
NUDGE = 1e-3  # distance kept from integer sample coordinates (specs/stn.md §2)
RANDOM_RANGE = 1.3  # grids drawn U(−1.3, 1.3)

SAMPLE_PARAMS = {
    "B": Param(int, min=1, doc="batch"),
    "C": Param(int, min=1, doc="channels"),
    "H": Param(int, min=1, doc="input height"),
    "W": Param(int, min=1, doc="input width"),
    "Ho": Param(int, min=1, doc="output height"),
    "Wo": Param(int, min=1, doc="output width"),
    "align_corners": Param(bool, default=False, doc="±1 = centres (True) or outer edges (False) of border pixels"),
    "grid": Param(str, choices=GRID_KINDS, default="random", doc="how the sampling grid is drawn"),
}

AFFINE_PARAMS = {
    "B": Param(int, min=1, doc="batch"),
    "C": Param(int, min=1, default=3, doc="channels of size (unused by the grid)"),
    "Ho": Param(int, min=1, doc="output height"),
    "Wo": Param(int, min=1, doc="output width"),
    "align_corners": Param(bool, default=False, doc="base coordinates at pixel centres (False) or ±1 corners"),
    "theta": Param(str, choices=GRID_KINDS, default="random", doc="how θ is drawn"),
}


# -- coordinates (float64 helpers for inputs and properties; not an impl) ---------------


def base_coords(n: int, align_corners: bool) -> torch.Tensor:
    """The n normalised pixel coordinates of one axis (float64); a size-1 axis gives 0."""
    j = torch.arange(n, dtype=torch.float64)
    if n == 1:
        return torch.zeros(1, dtype=torch.float64)
    return -1 + 2 * j / (n - 1) if align_corners else (2 * j + 1) / n - 1


def affine_grid_f64(theta: torch.Tensor, Ho: int, Wo: int, align_corners: bool) -> torch.Tensor:
    """θ [B, 2, 3] -> grid [B, Ho, Wo, 2] in float64 (the spec's formula, for inputs only)."""
    x = base_coords(Wo, align_corners)[None, :].expand(Ho, Wo)
    y = base_coords(Ho, align_corners)[:, None].expand(Ho, Wo)
    base = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [Ho, Wo, 3]
    return torch.einsum("hwk,brk->bhwr", base, theta.to(torch.float64))


def unnormalize(g: torch.Tensor, size: int, align_corners: bool) -> torch.Tensor:
    return (g + 1) / 2 * (size - 1) if align_corners else ((g + 1) * size - 1) / 2


def normalize(i: torch.Tensor, size: int, align_corners: bool) -> torch.Tensor:
    """Inverse of :func:`unnormalize` (size-1 axes with align_corners map everything to 0)."""
    if align_corners:
        return 2 * i / (size - 1) - 1 if size > 1 else torch.zeros_like(i)
    return (2 * i + 1) / size - 1


def nudge_from_integers(grid: torch.Tensor, H: int, W: int, align_corners: bool) -> torch.Tensor:
    """Moves every sample coordinate within NUDGE of an integer to exactly NUDGE away from it."""
    out = grid.clone()
    for axis, size in ((0, W), (1, H)):
        if align_corners and size == 1:
            continue  # ix ≡ 0 whatever g is, and d out / d g ≡ 0: nothing to nudge
        i = unnormalize(grid[..., axis], size, align_corners)
        nearest = torch.round(i)
        d = i - nearest
        close_to = d.abs() < NUDGE
        moved = nearest + torch.where(d < 0, -NUDGE, NUDGE)
        out[..., axis] = torch.where(close_to, normalize(moved, size, align_corners), grid[..., axis])
    return out


def make_theta(kind: str, B: int, case: Case) -> torch.Tensor:
    """θ [B, 2, 3] of a named kind; parameters differ per batch element (drawn from the case seed)."""
    u = case.rand(f"theta_{kind}", B, 4)  # per-b parameters in [0, 1)
    theta = torch.zeros(B, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    if kind == "identity":
        return theta
    if kind == "random":  # near the identity, every entry perturbed
        return theta + case.randn("theta", B, 2, 3, std=0.25)
    if kind == "translate":
        theta[:, :, 2] = (u[:, :2] - 0.5) * 1.2  # up to ±0.6: part of the image moves outside
        return theta
    if kind == "rotate":
        sign = torch.where(u[:, 2] < 0.5, -1.0, 1.0)
        angle = sign * (math.pi / 8 + u[:, 3] * math.pi / 4)  # ±(22.5°..67.5°)
        theta[:, 0, 0] = angle.cos()
        theta[:, 0, 1] = -angle.sin()
        theta[:, 1, 0] = angle.sin()
        theta[:, 1, 1] = angle.cos()
        theta[:, :, 2] = (u[:, :2] - 0.5) * 0.2
        return theta
    if kind in ("zoom_in", "zoom_out"):
        lo, hi = (0.4, 0.75) if kind == "zoom_in" else (1.3, 2.0)
        scale = lo + (hi - lo) * u[:, 2:4]  # anisotropic
        theta[:, 0, 0] = scale[:, 0]
        theta[:, 1, 1] = scale[:, 1]
        theta[:, :, 2] = (u[:, :2] - 0.5) * 0.3
        return theta
    raise ValueError(f"unknown grid/theta kind {kind!r}; allowed: {', '.join(GRID_KINDS)}")


def make_grid(case: Case) -> torch.Tensor:
    """The case's sampling grid [B, Ho, Wo, 2], float64, nudged away from integer coordinates."""
    B, H, W, Ho, Wo, ac = (case[k] for k in ("B", "H", "W", "Ho", "Wo", "align_corners"))
    kind = case["grid"]
    if kind == "random":
        grid = case.rand("grid", B, Ho, Wo, 2, low=-RANDOM_RANGE, high=RANDOM_RANGE)
    else:
        grid = affine_grid_f64(make_theta(kind, B, case), Ho, Wo, ac)
    return nudge_from_integers(grid, H, W, ac)


def sample_inputs(case: Case) -> Inputs:
    """inp: [B, C, H, W] ~ N(0, 1); grid: [B, Ho, Wo, 2] (x, y); align_corners as a keyword."""
    B, C, H, W = (case[k] for k in ("B", "C", "H", "W"))
    return Inputs(
        {"inp": case.randn("inp", B, C, H, W), "grid": make_grid(case)},
        kwargs={"align_corners": case["align_corners"]},
        differentiable=("inp", "grid"),
    )


def affine_inputs(case: Case) -> Inputs:
    """theta: [B, 2, 3]; size = (B, C, Ho, Wo) and align_corners as keywords."""
    B, C, Ho, Wo = (case[k] for k in ("B", "C", "Ho", "Wo"))
    return Inputs(
        {"theta": make_theta(case["theta"], B, case)},
        kwargs={"size": (B, C, Ho, Wo), "align_corners": case["align_corners"]},
        differentiable=("theta",),
    )


# -- cost -------------------------------------------------------------------------------


def sample_work(case: Case) -> int:
    """Naive loop iterations: one per output pixel (its C channels are one vector operation)."""
    return case["B"] * case["Ho"] * case["Wo"]


def sample_flops(case: Case) -> float:
    """≈ 8 FLOP per output element (3 MAC + weights) plus ≈ 10 per grid point (unnormalise, floor, weights)."""
    B, C, Ho, Wo = (case[k] for k in ("B", "C", "Ho", "Wo"))
    return 8.0 * B * C * Ho * Wo + 10.0 * B * Ho * Wo


def sample_memory(case: Case, dtype: torch.dtype) -> Mapping[str, float]:
    """Bytes of the largest intermediates (specs/stn.md §5)."""
    B, C, Ho, Wo = (case[k] for k in ("B", "C", "Ho", "Wo"))
    size = torch.empty((), dtype=dtype).element_size()
    return {
        "attention_map": B * C * Ho * Wo * size,  # the output: a fused kernel needs nothing more
        "vectorized_gathers": 4 * B * C * Ho * Wo * size,
        "vectorized_index_weight": 4 * B * Ho * Wo * (8 + size),
    }


def sample_traffic(case: Case, dtype: torch.dtype, pass_: str) -> float:
    """Compulsory bytes: read input and grid, write output (fwd); plus gout, input and grads (bwd)."""
    B, C, H, W, Ho, Wo = (case[k] for k in ("B", "C", "H", "W", "Ho", "Wo"))
    size = torch.empty((), dtype=dtype).element_size()
    inp, grid, out = B * C * H * W, B * Ho * Wo * 2, B * C * Ho * Wo
    fwd = inp + grid + out
    return float(size * (fwd if pass_ == "fwd" else fwd + out + inp + grid + inp + grid))


def affine_work(case: Case) -> int:
    return case["B"] * case["Ho"] * case["Wo"]


def affine_flops(case: Case) -> float:
    return 12.0 * case["B"] * case["Ho"] * case["Wo"]  # 6 MAC per output point


def affine_traffic(case: Case, dtype: torch.dtype, pass_: str) -> float:
    size = torch.empty((), dtype=dtype).element_size()
    grid = case["B"] * case["Ho"] * case["Wo"] * 2
    return float(size * (grid if pass_ == "fwd" else 2 * grid))


# -- properties of bilinear_sample (specs/stn.md §6) ------------------------------------


def _sample(fn: Callable[..., Any], inp: torch.Tensor, grid: torch.Tensor, ac: bool, dtype: torch.dtype, device: str):
    with torch.no_grad():
        return first_output(fn(inp.to(device, dtype), grid.to(device, dtype), align_corners=ac))


def _corner_masks(grid: torch.Tensor, H: int, W: int, ac: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, Ho, Wo] bool: all four corners inside, all four outside."""
    ix = unnormalize(grid[..., 0], W, ac)
    iy = unnormalize(grid[..., 1], H, ac)
    x0, y0 = ix.floor(), iy.floor()
    x_in = [(x >= 0) & (x <= W - 1) for x in (x0, x0 + 1)]
    y_in = [(y >= 0) & (y <= H - 1) for y in (y0, y0 + 1)]
    inside = [xi & yi for xi in x_in for yi in y_in]
    return inside[0] & inside[1] & inside[2] & inside[3], ~(inside[0] | inside[1] | inside[2] | inside[3])


def prop_identity(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """Identity θ, output size = input size, same align_corners in both cores ⇒ out = inp exactly."""
    B, C, H, W, ac = (case[k] for k in ("B", "C", "H", "W", "align_corners"))
    inp = case.randn("inp", B, C, H, W)
    theta = torch.tensor([[1.0, 0, 0], [0, 1, 0]], dtype=torch.float64).expand(B, 2, 3)
    out = _sample(fn, inp, affine_grid_f64(theta, H, W, ac), ac, dtype, device)
    return close(out, inp, property_atol(dtype, 4.0), f"identity θ reproduces the input (align_corners={ac})")


def prop_hflip(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """θ = [[−1,0,0],[0,1,0]] ⇒ an exact horizontal flip (both modes)."""
    B, C, H, W, ac = (case[k] for k in ("B", "C", "H", "W", "align_corners"))
    inp = case.randn("inp", B, C, H, W)
    theta = torch.tensor([[-1.0, 0, 0], [0, 1, 0]], dtype=torch.float64).expand(B, 2, 3)
    out = _sample(fn, inp, affine_grid_f64(theta, H, W, ac), ac, dtype, device)
    return close(out, inp.flip(-1), property_atol(dtype, 4.0), f"θ = diag(−1, 1) flips x (align_corners={ac})")


def prop_constant_image(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """Constant image c ⇒ c where all four corners are inside, 0 where all four are outside."""
    B, C, H, W, ac = (case[k] for k in ("B", "C", "H", "W", "align_corners"))
    c = 1.75
    grid = make_grid(case)
    out = _sample(fn, torch.full((B, C, H, W), c, dtype=torch.float64), grid, ac, dtype, device).double().cpu()
    inside, outside = _corner_masks(grid, H, W, ac)
    expected = out.clone()
    expected[inside[:, None].expand_as(out)] = c
    expected[outside[:, None].expand_as(out)] = 0.0
    n_in, n_out = int(inside.sum()), int(outside.sum())
    return close(out, expected, property_atol(dtype, 4.0), f"constant {c}: {n_in} inside, {n_out} outside points")


def prop_affine_image(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """inp = a·x + b·y + d per channel ⇒ out = a·ix + b·iy + d wherever all four corners are inside."""
    B, C, H, W, ac = (case[k] for k in ("B", "C", "H", "W", "align_corners"))
    coef = case.randn("affine_image", 3, C)
    a, b, d = (coef[i][None, :, None, None] for i in range(3))
    ys = torch.arange(H, dtype=torch.float64)[:, None]
    xs = torch.arange(W, dtype=torch.float64)[None, :]
    inp = (a * xs + b * ys + d).expand(B, C, H, W).contiguous()
    grid = make_grid(case)
    out = _sample(fn, inp, grid, ac, dtype, device).double().cpu()
    ix = unnormalize(grid[..., 0], W, ac)[:, None]
    iy = unnormalize(grid[..., 1], H, ac)[:, None]
    expected = a * ix + b * iy + d
    inside, _ = _corner_masks(grid, H, W, ac)
    mask = inside[:, None].expand_as(out)
    scale = float(inp.abs().max())
    return close(
        out[mask], expected[mask], property_atol(dtype, 4 * scale), f"affine image at {int(inside.sum())} points"
    )


def prop_integer_coordinates(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """Integer (ix, iy) inside the image returns that pixel."""
    B, C, H, W, Ho, Wo, ac = (case[k] for k in ("B", "C", "H", "W", "Ho", "Wo", "align_corners"))
    inp = case.randn("inp", B, C, H, W)
    gen = case.generator("integer_coordinates")
    xs = torch.randint(0, W, (B, Ho, Wo), generator=gen)
    ys = torch.randint(0, H, (B, Ho, Wo), generator=gen)
    grid = torch.stack([normalize(xs.double(), W, ac), normalize(ys.double(), H, ac)], dim=-1)
    out = _sample(fn, inp, grid, ac, dtype, device)
    b = torch.arange(B)[:, None, None]
    expected = inp[b, :, ys, xs].permute(0, 3, 1, 2)  # [B, C, Ho, Wo]
    return close(out, expected, property_atol(dtype, 4.0), "integer coordinates return the pixel")


def prop_adjoint(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """The input gradient is the transpose of the sampling: ⟨S x, y⟩ = ⟨x, Sᵀ y⟩ (Sᵀ y by autograd's vjp)."""
    B, C, Ho, Wo, ac = (case[k] for k in ("B", "C", "Ho", "Wo", "align_corners"))
    inputs = sample_inputs(case).to(dtype, device)
    x, grid = inputs.tensors["inp"], inputs.tensors["grid"].detach()
    y = case.randn("adjoint_y", B, C, Ho, Wo).to(device, dtype)
    out = first_output(fn(x, grid, align_corners=ac))
    (st_y,) = torch.autograd.grad(out, x, y, allow_unused=True)
    if st_y is None:
        return PropertyOutcome(False, float("inf"), 0.0, "no gradient w.r.t. the input")
    lhs = float((out.detach().double() * y.double()).sum())
    rhs = float((x.detach().double() * st_y.double()).sum())
    scale = float((out.detach().double() * y.double()).abs().sum()) + 1.0
    atol = property_atol(dtype, scale)
    err = abs(lhs - rhs)
    return PropertyOutcome(err <= atol, err, atol, f"⟨Sx, y⟩ = {lhs:.12g}, ⟨x, Sᵀy⟩ = {rhs:.12g}")


def _shape_property(case: Case) -> bool:
    """Properties that ignore the case grid run once per shape (on the random-grid and identity cases)."""
    return bool(case["grid"] in ("random", "identity"))


SAMPLE_PROPERTIES = (
    Property("identity", prop_identity, _shape_property, "identity θ, same size and align_corners ⇒ out = inp"),
    Property("hflip", prop_hflip, _shape_property, "θ = [[−1,0,0],[0,1,0]] ⇒ exact horizontal flip"),
    Property("constant_image", prop_constant_image, description="constant c ⇒ c inside, 0 fully outside"),
    Property("affine_image", prop_affine_image, description="a·x + b·y + d reproduced at interior points"),
    Property("integer_coordinates", prop_integer_coordinates, _shape_property, "integer (ix, iy) ⇒ that pixel"),
    Property("adjoint", prop_adjoint, description="input gradient is the transpose of the sampling"),
)


# -- properties of affine_grid ----------------------------------------------------------


def _affine(fn: Callable[..., Any], case: Case, theta: torch.Tensor, dtype: torch.dtype, device: str) -> torch.Tensor:
    B, C, Ho, Wo = (case[k] for k in ("B", "C", "Ho", "Wo"))
    with torch.no_grad():
        return first_output(fn(theta.to(device, dtype), size=(B, C, Ho, Wo), align_corners=case["align_corners"]))


def prop_base_grid(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """Identity θ gives the base coordinates: pixel centres (False) or −1…+1 (True); a size-1 axis gives 0."""
    B, Ho, Wo, ac = (case[k] for k in ("B", "Ho", "Wo", "align_corners"))
    theta = torch.tensor([[1.0, 0, 0], [0, 1, 0]], dtype=torch.float64).expand(B, 2, 3)
    out = _affine(fn, case, theta, dtype, device)
    x = base_coords(Wo, ac)[None, None, :].expand(B, Ho, Wo)
    y = base_coords(Ho, ac)[None, :, None].expand(B, Ho, Wo)
    return close(out, torch.stack([x, y], -1), property_atol(dtype), f"base grid (align_corners={ac})")


def prop_translation(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """θ's last column adds a constant: grid(θ + [0 | t]) = grid(θ) + t, and t enters as (x, y)."""
    theta = make_theta(case["theta"], case["B"], case)
    shift = torch.zeros_like(theta)
    shift[:, 0, 2], shift[:, 1, 2] = 0.25, -0.5
    out = _affine(fn, case, theta, dtype, device)
    moved = _affine(fn, case, theta + shift, dtype, device)
    expected = out.double().cpu() + torch.tensor([0.25, -0.5], dtype=torch.float64)
    return close(moved, expected, property_atol(dtype, 4.0), "translation by (0.25, −0.5)")


AFFINE_PROPERTIES = (
    Property("base_grid", prop_base_grid, description="identity θ ⇒ the base coordinates"),
    Property("translation", prop_translation, description="θ[:, :, 2] translates the grid by (x, y)"),
)


# -- the STN module (specs/stn.md §3), defined on bilinear_sample ------------------------

MODULE_PARAMS = {
    "B": Param(int, min=1, doc="batch"),
    "C": Param(int, min=1, doc="channels"),
    "H": Param(int, min=1, doc="height"),
    "W": Param(int, min=1, doc="width"),
    "hidden": Param(int, min=1, default=4, doc="channels of the localisation conv"),
    "align_corners": Param(bool, default=False, doc="used by both affine_grid and the sampler"),
}
POOL = 2  # the localisation net pools its features to POOL × POOL


def module_inputs(case: Case) -> Inputs:
    """x: [B, C, H, W]; conv3×3 (C → hidden) and linear (hidden·4 → 6) weights.

    The last linear layer is *not* at its identity init (weight 0, bias = identity):
    its weight and the bias' offset from the identity are small random numbers, so
    θ is near the identity yet every sampler bug shows.
    """
    B, C, H, W, hidden = (case[k] for k in ("B", "C", "H", "W", "hidden"))
    identity = torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=torch.float64)
    return Inputs(
        {
            "x": case.randn("x", B, C, H, W),
            "w1": case.randn("w1", hidden, C, 3, 3, std=(9 * C) ** -0.5),
            "b1": case.randn("b1", hidden, std=0.1),
            "w2": case.randn("w2", 6, hidden * POOL * POOL, std=0.1),
            "b2": identity + case.randn("b2", 6, std=0.1),
        },
        kwargs={"align_corners": case["align_corners"]},
        differentiable=("x", "w1", "b1", "w2", "b2"),
    )


def stn_forward(
    bilinear_sample: Callable[..., torch.Tensor],
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    align_corners: bool = False,
) -> torch.Tensor:
    """STN(x) = bilinear_sample(x, affine_grid(loc_net(x).view(B, 2, 3), x.shape)).

    The module is defined on ``stn.bilinear_sample``: the impl under test is the
    sampler; θ → grid uses the vectorized ``affine_grid`` (checked on its own by
    the ``stn.affine_grid`` cases). loc_net = conv3×3 → tanh → avg-pool to 2×2 →
    linear → θ (tanh instead of ReLU: no kinks for gradcheck).
    """
    from impls.stn.vectorized import affine_grid_vectorized

    features = torch.tanh(F.conv2d(x, w1, b1, padding=1))
    pooled = F.adaptive_avg_pool2d(features, POOL).flatten(1)
    theta = (pooled @ w2.t() + b2).view(-1, 2, 3)
    grid = affine_grid_vectorized(theta, tuple(x.shape), align_corners=align_corners)
    return bilinear_sample(x, grid, align_corners=align_corners)


def prop_module_identity_init(
    module: Callable[..., Any], case: Case, dtype: torch.dtype, device: str
) -> PropertyOutcome:
    """At the published init (last layer weight 0, bias = identity) the module returns its input."""
    inputs = module_inputs(case)
    inputs.tensors["w2"] = torch.zeros_like(inputs.tensors["w2"])
    inputs.tensors["b2"] = torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=torch.float64)
    inputs = inputs.to(dtype, device)
    with torch.no_grad():
        out = first_output(module(*inputs.tensors.values(), **inputs.kwargs))
    return close(out, inputs.tensors["x"], property_atol(dtype, 4.0), "identity init ⇒ STN(x) = x")


STN_MODULE = ModuleDef(
    name="stn",
    params=MODULE_PARAMS,
    make_inputs=module_inputs,
    forward=stn_forward,
    properties=(
        Property("identity_init", prop_module_identity_init, description="zero last layer + identity bias ⇒ x"),
    ),
    description="localisation net (conv3×3, tanh, pool, linear) → θ → affine_grid (vectorized) → bilinear_sample",
)


BILINEAR_SAMPLE = define_mechanism(
    Mechanism(
        name="stn.bilinear_sample",
        core="bilinear_sample",
        params=SAMPLE_PARAMS,
        make_inputs=sample_inputs,
        naive_work=sample_work,
        flops=sample_flops,
        memory=sample_memory,
        properties=SAMPLE_PROPERTIES,
        modules=(STN_MODULE,),
        traffic=sample_traffic,
        doc="Spatial transformer bilinear sampler (Jaderberg et al., NeurIPS 2015): "
        "bilinear_sample(inp, grid, align_corners), zeros padding, grid in (x, y).",
    )
)

AFFINE_GRID = define_mechanism(
    Mechanism(
        name="stn.affine_grid",
        core="affine_grid",
        params=AFFINE_PARAMS,
        make_inputs=affine_inputs,
        naive_work=affine_work,
        flops=affine_flops,
        properties=AFFINE_PROPERTIES,
        traffic=affine_traffic,
        doc="Spatial transformer affine grid: affine_grid(theta, size, align_corners) -> [B, Ho, Wo, 2] (x, y).",
    )
)
