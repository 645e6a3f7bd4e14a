"""Dual attention (DANet, Fu et al., CVPR 2019): cores ``pam(q, k, v)`` and ``cam(x)``.

See ``shared/specs/danet.md``. N = H·W positions, row-major.

    PAM: E = qᵀk [B, N, N];  A = softmax_m E;            out[b,c,n] = Σ_m A[b,n,m] v[b,c,m]
    CAM: E = X Xᵀ [B, C, C]; A = softmax_j(rowmax − E);  out[b,i,n] = Σ_j A[b,i,j] X[b,j,n]

CAM's canonical form is the official code's ``rowmax − E`` (= softmax(−E));
``cam(x, sign="paper")`` computes the paper's softmax(+E). Cases pass
``sign`` only when it is ``"paper"``, so ``cam(x)`` stays the canonical call.

Modules: ``dual_head`` (on ``danet.pam``) is the DANet head's two attention
branches, ``(γp·pam(Wq x, Wk x, Wv x) + x) + (γc·cam(x) + x)`` with the CAM
branch computed by a fixed vectorized CAM; ``cam_module`` (on ``danet.cam``) is
``γ·cam(x) + x``. An impl may bring its own whole-module implementation with
``register(..., modules={"dual_head": forward})`` (the ModuleDef forward's
signature, core first): it is then compared instead of the module assembled
around the core (how a fused module, or a wrong one, is checked).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from attnbench.cases import Case
from attnbench.checks.properties import close, first_output, property_atol
from attnbench.registry import Inputs, Mechanism, ModuleDef, Param, Property, PropertyOutcome, define_mechanism

SIGNS = ("code", "paper")

PAM_SHAPE = {
    "B": Param(int, min=1, doc="batch"),
    "Cq": Param(int, min=1, doc="query/key channels"),
    "C": Param(int, min=1, doc="value channels"),
    "H": Param(int, min=1, doc="height"),
    "W": Param(int, min=1, doc="width"),
}
CAM_SHAPE = {
    "B": Param(int, min=1, doc="batch"),
    "C": Param(int, min=1, doc="channels"),
    "H": Param(int, min=1, doc="height"),
    "W": Param(int, min=1, doc="width"),
    "sign": Param(str, choices=SIGNS, default="code", doc="code: softmax(rowmax − E); paper: softmax(E)"),
}


def check_sign(sign: str) -> None:
    if sign not in SIGNS:
        raise ValueError(f"cam: sign must be one of {', '.join(SIGNS)}, got {sign!r}")


# -- PAM -------------------------------------------------------------------------------


def pam_inputs(case: Case) -> Inputs:
    """q, k: [B, Cq, H, W] with std Cq^(−1/4); v: [B, C, H, W]."""
    B, Cq, C, H, W = (case[k] for k in ("B", "Cq", "C", "H", "W"))
    std = Cq**-0.25
    return Inputs(
        {
            "q": case.randn("q", B, Cq, H, W, std=std),
            "k": case.randn("k", B, Cq, H, W, std=std),
            "v": case.randn("v", B, C, H, W),
        },
        differentiable=("q", "k", "v"),
    )


def pam_work(case: Case) -> int:
    return case["B"] * (case["H"] * case["W"]) ** 2


def pam_flops(case: Case) -> float:
    """2·B·N²·(Cq + C) (energy + aggregation) + 4·B·N² (softmax)."""
    B, Cq, C = case["B"], case["Cq"], case["C"]
    entries = B * (case["H"] * case["W"]) ** 2
    return 2.0 * entries * (Cq + C) + 4.0 * entries


def pam_memory(case: Case, dtype: torch.dtype) -> Mapping[str, float]:
    B, C = case["B"], case["C"]
    N = case["H"] * case["W"]
    size = torch.empty((), dtype=dtype).element_size()
    return {
        "attention_map": B * N * N * size,
        "vectorized_extra": 2 * B * N * N * size,
        "fused_extra": B * N * (C + 2) * size,
    }


def _call(fn: Callable[..., Any], inputs: Inputs, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, Inputs]:
    inputs = inputs.to(dtype, device)
    with torch.no_grad():
        return first_output(inputs.call(fn)), inputs


def _permute_positions(t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return t.flatten(2)[:, :, perm].reshape(t.shape).contiguous()


def _scale_of(inputs: Inputs) -> float:
    return max(float(t.detach().abs().max()) for t in inputs.tensors.values() if t.numel())


def prop_pam_constant_values(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """v constant per (b, c) ⇒ out = v: rows of A sum to 1."""
    B, C, H, W = case["B"], case["C"], case["H"], case["W"]
    const = case.randn("vconst", B, C, 1, 1).expand(B, C, H, W).contiguous()
    inputs = pam_inputs(case)
    inputs.tensors["v"] = const
    out, _ = _call(fn, inputs, dtype, device)
    return close(out, const, property_atol(dtype, float(const.abs().max())), "v constant ⇒ out = v")


def prop_pam_zero_query(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """q = 0 ⇒ out[b, c, n] = mean_m v[b, c, m]."""
    inputs = pam_inputs(case)
    inputs.tensors["q"] = torch.zeros_like(inputs.tensors["q"])
    out, _ = _call(fn, inputs, dtype, device)
    v = inputs.tensors["v"]
    expected = v.mean((2, 3), keepdim=True).expand_as(v)
    return close(out, expected, property_atol(dtype, float(v.abs().max())), "q = 0 ⇒ mean over positions")


def prop_pam_joint_permutation(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """Permuting the positions of q, k, v jointly permutes out (PAM ignores the layout)."""
    inputs = pam_inputs(case)
    out, cast = _call(fn, inputs, dtype, device)
    perm = torch.randperm(case["H"] * case["W"], generator=case.generator("perm"))
    permuted = Inputs({n: _permute_positions(t, perm) for n, t in inputs.tensors.items()})
    out_p, _ = _call(fn, permuted, dtype, device)
    expected = _permute_positions(out.detach().double().cpu(), perm)
    return close(out_p, expected, property_atol(dtype, 4 * _scale_of(cast)), "joint permutation permutes out")


def prop_pam_key_permutation(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """Permuting the key positions of k and v jointly (queries fixed) leaves out unchanged."""
    inputs = pam_inputs(case)
    out, cast = _call(fn, inputs, dtype, device)
    perm = torch.randperm(case["H"] * case["W"], generator=case.generator("perm_keys"))
    permuted = Inputs({n: (_permute_positions(t, perm) if n in ("k", "v") else t) for n, t in inputs.tensors.items()})
    out_p, _ = _call(fn, permuted, dtype, device)
    return close(out_p, out, property_atol(dtype, 4 * _scale_of(cast)), "key permutation ⇒ out unchanged")


PAM_PROPERTIES = (
    Property("rows_sum_to_one", prop_pam_constant_values, description="v constant ⇒ out = v"),
    Property("zero_query_mean", prop_pam_zero_query, description="q = 0 ⇒ out = mean_m v"),
    Property(
        "position_permutation",
        prop_pam_joint_permutation,
        lambda c: c["H"] * c["W"] > 1,
        "jointly permuting q, k, v permutes out",
    ),
    Property(
        "key_permutation",
        prop_pam_key_permutation,
        lambda c: c["H"] * c["W"] > 1,
        "jointly permuting keys of k and v leaves out unchanged",
    ),
)


# -- CAM -------------------------------------------------------------------------------


def cam_inputs(case: Case) -> Inputs:
    """x: [B, C, H, W] with std N^(−1/4), so energies E = X Xᵀ are O(1)."""
    B, C, H, W = (case[k] for k in ("B", "C", "H", "W"))
    kwargs = {"sign": "paper"} if case.get("sign", "code") == "paper" else {}
    return Inputs({"x": case.randn("x", B, C, H, W, std=(H * W) ** -0.25)}, kwargs=kwargs, differentiable=("x",))


def cam_work(case: Case) -> int:
    return case["B"] * case["C"] ** 2 * case["H"] * case["W"]


def cam_flops(case: Case) -> float:
    """2·B·C²·N (energy) + 2·B·C²·N (aggregation) + 4·B·C² (softmax)."""
    B, C = case["B"], case["C"]
    N = case["H"] * case["W"]
    return 4.0 * B * C * C * N + 4.0 * B * C * C


def cam_memory(case: Case, dtype: torch.dtype) -> Mapping[str, float]:
    size = torch.empty((), dtype=dtype).element_size()
    return {"attention_map": case["B"] * case["C"] ** 2 * size}


def _cam_expected(x: torch.Tensor, sign: str) -> torch.Tensor:
    """softmax(∓E)·X in float64, without the rowmax subtraction."""
    X = x.detach().double().cpu().flatten(2)
    energy = X @ X.transpose(1, 2)
    attn = torch.softmax(energy if sign == "paper" else -energy, dim=-1)
    return (attn @ X).reshape(x.shape)


def prop_cam_rowmax_shift(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """softmax(rowmax − E) = softmax(−E): out equals the shift-free form computed in float64."""
    inputs = cam_inputs(case)
    out, _ = _call(fn, inputs, dtype, device)
    expected = _cam_expected(inputs.tensors["x"], case.get("sign", "code"))
    return close(out, expected, property_atol(dtype, 4 * float(expected.abs().max())), "A = softmax(−E)")


def prop_cam_channel_permutation(
    fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str
) -> PropertyOutcome:
    """Permuting the channels of x permutes out the same way."""
    inputs = cam_inputs(case)
    out, cast = _call(fn, inputs, dtype, device)
    perm = torch.randperm(case["C"], generator=case.generator("perm_channels"))
    permuted = Inputs({"x": inputs.tensors["x"][:, perm].contiguous()}, dict(inputs.kwargs))
    out_p, _ = _call(fn, permuted, dtype, device)
    expected = out.detach().double().cpu()[:, perm]
    return close(out_p, expected, property_atol(dtype, 4 * _scale_of(cast)), "channel permutation permutes out")


def prop_cam_spatial_permutation(
    fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str
) -> PropertyOutcome:
    """Permuting the positions of x permutes out the same way."""
    inputs = cam_inputs(case)
    out, cast = _call(fn, inputs, dtype, device)
    perm = torch.randperm(case["H"] * case["W"], generator=case.generator("perm_positions"))
    permuted = Inputs({"x": _permute_positions(inputs.tensors["x"], perm)}, dict(inputs.kwargs))
    out_p, _ = _call(fn, permuted, dtype, device)
    expected = _permute_positions(out.detach().double().cpu(), perm)
    return close(out_p, expected, property_atol(dtype, 4 * _scale_of(cast)), "position permutation permutes out")


def prop_cam_closed_form(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """Orthogonal channels of equal squared norm s (E = s·I) ⇒ A_ii = e^(−s)/Z, A_ij = 1/Z, Z = e^(−s) + C − 1."""
    B, C, H, W = case["B"], case["C"], case["H"], case["W"]
    N, s = H * W, 1.5
    basis = torch.linalg.qr(case.randn("orth", B, N, C)).Q  # [B, N, C], orthonormal columns
    x = (s**0.5 * basis.transpose(1, 2)).reshape(B, C, H, W).contiguous()
    out, _ = _call(fn, Inputs({"x": x}, cam_inputs(case).kwargs), dtype, device)
    sign = -1.0 if case.get("sign", "code") == "code" else 1.0
    self_w = torch.exp(torch.tensor(sign * s, dtype=torch.float64))
    z = self_w + C - 1
    attn = torch.full((C, C), 1.0, dtype=torch.float64) / z
    attn.fill_diagonal_(float(self_w / z))
    expected = (attn @ x.flatten(2)).reshape(x.shape)
    return close(out, expected, property_atol(dtype, 4.0), "orthogonal channels: closed-form A")


CAM_PROPERTIES = (
    Property("rowmax_shift", prop_cam_rowmax_shift, description="softmax(rowmax − E) = softmax(−E)"),
    Property("channel_permutation", prop_cam_channel_permutation, lambda c: c["C"] > 1, "channel equivariance"),
    Property(
        "position_permutation", prop_cam_spatial_permutation, lambda c: c["H"] * c["W"] > 1, "position equivariance"
    ),
    Property(
        "closed_form",
        prop_cam_closed_form,
        lambda c: c["C"] <= c["H"] * c["W"],
        "orthogonal equal-norm channels ⇒ closed-form A",
    ),
)


# -- modules (specs/danet.md §3) --------------------------------------------------------


def cam_reference(x: torch.Tensor, sign: str = "code") -> torch.Tensor:
    """The CAM used inside ``dual_head``: official-code form, plain PyTorch."""
    X = x.flatten(2)
    energy = X @ X.transpose(1, 2)
    if sign == "paper":
        attn = torch.softmax(energy, dim=-1)
    else:
        attn = torch.softmax(energy.amax(-1, keepdim=True) - energy, dim=-1)
    return (attn @ X).reshape(x.shape)


DUAL_PARAMS = {
    "B": Param(int, min=1, doc="batch"),
    "C": Param(int, min=8, doc="channels (Cq = C // 8)"),
    "H": Param(int, min=1, doc="height"),
    "W": Param(int, min=1, doc="width"),
    "gamma_p": Param(float, default=0.7, doc="PAM residual scale (0 hides every bug)"),
    "gamma_c": Param(float, default=0.6, doc="CAM residual scale (0 hides every bug)"),
}


def dual_inputs(case: Case) -> Inputs:
    """x: [B, C, H, W] (std N^(−1/4) for the CAM energies); PAM 1×1 convs; gamma_p, gamma_c scalars."""
    B, C, H, W = (case[k] for k in ("B", "C", "H", "W"))
    Cq = C // 8
    xstd = (H * W) ** -0.25
    wstd = Cq**-0.25 / (C**0.5 * xstd)  # PAM energies ~ N(0, 1)
    return Inputs(
        {
            "x": case.randn("x", B, C, H, W, std=xstd),
            "wq": case.randn("wq", Cq, C, std=wstd),
            "bq": case.randn("bq", Cq, std=0.1),
            "wk": case.randn("wk", Cq, C, std=wstd),
            "bk": case.randn("bk", Cq, std=0.1),
            "wv": case.randn("wv", C, C, std=C**-0.5),
            "bv": case.randn("bv", C, std=0.1),
            "gamma_p": torch.tensor(float(case["gamma_p"]), dtype=torch.float64),
            "gamma_c": torch.tensor(float(case["gamma_c"]), dtype=torch.float64),
        },
        differentiable=("x", "wq", "bq", "wk", "bk", "wv", "bv", "gamma_p", "gamma_c"),
    )


def dual_head_forward(
    pam: Callable[..., torch.Tensor],
    x: torch.Tensor,
    wq: torch.Tensor,
    bq: torch.Tensor,
    wk: torch.Tensor,
    bk: torch.Tensor,
    wv: torch.Tensor,
    bv: torch.Tensor,
    gamma_p: torch.Tensor,
    gamma_c: torch.Tensor,
) -> torch.Tensor:
    """PAM_Module(x) + CAM_Module(x) = (γp·pam(Wq x, Wk x, Wv x) + x) + (γc·cam(x) + x)."""
    q = F.conv2d(x, wq[:, :, None, None], bq)
    k = F.conv2d(x, wk[:, :, None, None], bk)
    v = F.conv2d(x, wv[:, :, None, None], bv)
    pam_branch = gamma_p * pam(q, k, v) + x
    cam_branch = gamma_c * cam_reference(x) + x
    return pam_branch + cam_branch


def prop_dual_identity_at_init(
    module: Callable[..., Any], case: Case, dtype: torch.dtype, device: str
) -> PropertyOutcome:
    """γp = γc = 0 (their initialisation) ⇒ each branch is the identity, the head returns 2x."""
    inputs = dual_inputs(case)
    inputs.tensors["gamma_p"] = torch.tensor(0.0, dtype=torch.float64)
    inputs.tensors["gamma_c"] = torch.tensor(0.0, dtype=torch.float64)
    cast = inputs.to(dtype, device)
    with torch.no_grad():
        out = module(*cast.tensors.values())
    return close(out, 2 * cast.tensors["x"], property_atol(dtype), "γ = 0 ⇒ output = 2x")


DUAL_HEAD = ModuleDef(
    name="dual_head",
    params=DUAL_PARAMS,
    make_inputs=dual_inputs,
    forward=dual_head_forward,
    properties=(Property("identity_at_init", prop_dual_identity_at_init, description="γ = 0 ⇒ 2x"),),
    description="DANet head branches: (γp·pam(Wq x, Wk x, Wv x) + x) + (γc·cam(x) + x), Cq = C // 8",
)

CAM_MODULE_PARAMS = {
    "B": Param(int, min=1, doc="batch"),
    "C": Param(int, min=1, doc="channels"),
    "H": Param(int, min=1, doc="height"),
    "W": Param(int, min=1, doc="width"),
    "gamma": Param(float, default=0.6, doc="residual scale β (0 hides every bug)"),
}


def cam_module_inputs(case: Case) -> Inputs:
    B, C, H, W = (case[k] for k in ("B", "C", "H", "W"))
    return Inputs(
        {
            "x": case.randn("x", B, C, H, W, std=(H * W) ** -0.25),
            "gamma": torch.tensor(float(case["gamma"]), dtype=torch.float64),
        },
        differentiable=("x", "gamma"),
    )


def cam_module_forward(cam: Callable[..., torch.Tensor], x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """CAM_Module: γ·cam(x) + x."""
    return gamma * cam(x) + x


CAM_MODULE = ModuleDef(
    name="cam_module",
    params=CAM_MODULE_PARAMS,
    make_inputs=cam_module_inputs,
    forward=cam_module_forward,
    description="CAM_Module: γ·cam(x) + x",
)

PAM = define_mechanism(
    Mechanism(
        name="danet.pam",
        core="pam",
        params=PAM_SHAPE,
        make_inputs=pam_inputs,
        naive_work=pam_work,
        flops=pam_flops,
        memory=pam_memory,
        properties=PAM_PROPERTIES,
        modules=(DUAL_HEAD,),
        doc="DANet position attention pam(q, k, v): softmax over all H·W keys, no scaling.",
    )
)

CAM = define_mechanism(
    Mechanism(
        name="danet.cam",
        core="cam",
        params=CAM_SHAPE,
        make_inputs=cam_inputs,
        naive_work=cam_work,
        flops=cam_flops,
        memory=cam_memory,
        properties=CAM_PROPERTIES,
        modules=(CAM_MODULE,),
        doc="DANet channel attention cam(x): softmax(rowmax − E) over channels (official code; sign='paper').",
    )
)
