"""Criss-cross attention (CCNet): the core ``cca(q, k, v)`` and the RCCA module.

See ``shared/specs/ccnet.md``. Every pixel (y, x) attends to the H+W−1 pixels
of its row and column (itself counted once):

    e(b,y,x,u)   = Σ_c q[b,c,y,x] · k[b,c,u]          u ∈ Ω(y,x)
    A            = softmax over Ω(y,x)
    out[b,c,y,x] = Σ_u A(b,y,x,u) · v[b,c,u]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from attnbench.cases import Case
from attnbench.checks.properties import all_of, close, first_output, property_atol
from attnbench.registry import Inputs, Mechanism, ModuleDef, Param, Property, PropertyOutcome, define_mechanism

SHAPE = {
    "B": Param(int, min=1, doc="batch"),
    "Cq": Param(int, min=1, doc="query/key channels"),
    "C": Param(int, min=1, doc="value channels"),
    "H": Param(int, min=1, doc="height"),
    "W": Param(int, min=1, doc="width"),
}


def make_inputs(case: Case) -> Inputs:
    """q, k: [B, Cq, H, W] with std Cq^(−1/4) (energies ~ N(0, 1)); v: [B, C, H, W]."""
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


def naive_work(case: Case) -> int:
    return case["B"] * case["H"] * case["W"] * (case["H"] + case["W"] - 1)


def flops(case: Case) -> float:
    """Forward FLOPs of the core: 2·B·N·L·(Cq + C) MACs-as-FLOPs + softmax ≈ 4 per entry."""
    B, Cq, C, H, W = (case[k] for k in ("B", "Cq", "C", "H", "W"))
    entries = B * H * W * (H + W - 1)
    return 2.0 * entries * (Cq + C) + 4.0 * entries


def memory(case: Case, dtype: torch.dtype) -> Mapping[str, float]:
    """Analytic bytes (specs/ccnet.md §4): the attention map and what each design keeps."""
    B, C, H, W = (case[k] for k in ("B", "C", "H", "W"))
    size = torch.empty((), dtype=dtype).element_size()
    entries = B * H * W * (H + W - 1)
    return {
        "attention_map": entries * size,
        # energy + attention of the [B, H, W, H+W] layout, both kept for backward
        "vectorized_saved": 2 * B * H * W * (H + W) * size,
        # E and A of the two-op design
        "ext_saved": 2 * entries * size,
        "fused_inference": B * C * H * W * size,
        "nonlocal_map": B * (H * W) ** 2 * size,
    }


# -- properties (specs/ccnet.md §5) --------------------------------------------------


def _call(
    fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str, **override: torch.Tensor
) -> tuple[torch.Tensor, Inputs]:
    inputs = make_inputs(case)
    inputs.tensors.update(override)
    inputs = inputs.to(dtype, device)
    with torch.no_grad():
        return first_output(inputs.call(fn)), inputs


def prop_constant_values(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """v constant per (b, c) ⇒ out = v: the weights over Ω sum to 1."""
    B, C = case["B"], case["C"]
    const = case.randn("vconst", B, C, 1, 1).expand(B, C, case["H"], case["W"]).contiguous()
    out, inputs = _call(fn, case, dtype, device, v=const)
    return close(out, inputs.tensors["v"], property_atol(dtype, float(const.abs().max())), "v constant ⇒ out = v")


def prop_zero_query(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """q = 0 ⇒ out is the plain mean over exactly the H+W−1 criss-cross pixels."""
    H, W = case["H"], case["W"]
    q0 = torch.zeros(case["B"], case["Cq"], H, W, dtype=torch.float64)
    out, inputs = _call(fn, case, dtype, device, q=q0)
    v = inputs.tensors["v"].detach().to(torch.float64).cpu()
    expected = (v.sum(3, keepdim=True) + v.sum(2, keepdim=True) - v) / (H + W - 1)
    return close(out, expected, property_atol(dtype, float(v.abs().max())), "q = 0 ⇒ uniform over H+W−1")


def prop_transpose(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """cca(qᵀ, kᵀ, vᵀ) = cca(q, k, v)ᵀ (swap H and W)."""
    out, inputs = _call(fn, case, dtype, device)
    t = [x.detach().transpose(2, 3).contiguous() for x in inputs.tensors.values()]
    with torch.no_grad():
        out_t = first_output(fn(*t))
    return close(out_t, out.transpose(2, 3), property_atol(dtype, 4.0), "transposition")


def prop_permutation(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """Independent permutations of rows and columns commute with cca."""
    out, inputs = _call(fn, case, dtype, device)
    rows = torch.randperm(case["H"], generator=case.generator("perm_rows")).to(device)
    cols = torch.randperm(case["W"], generator=case.generator("perm_cols")).to(device)
    permuted = [x.detach()[:, :, rows][:, :, :, cols].contiguous() for x in inputs.tensors.values()]
    with torch.no_grad():
        out_p = first_output(fn(*permuted))
    return close(out_p, out[:, :, rows][:, :, :, cols], property_atol(dtype, 4.0), "row/column permutation")


def prop_single_row(fn: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """H = 1 (or W = 1) equals ordinary softmax attention along the line, scale 1."""
    out, inputs = _call(fn, case, dtype, device)
    q, k, v = (x.detach().to(torch.float64).cpu().flatten(2) for x in inputs.tensors.values())
    attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # [B, N, N]
    expected = (v @ attn.transpose(1, 2)).reshape(out.shape)
    return close(out, expected, property_atol(dtype, 4.0), "1-D softmax attention")


PROPERTIES = (
    Property("rows_sum_to_one", prop_constant_values, description="v constant ⇒ out = v"),
    Property("exactly_criss_cross", prop_zero_query, description="q = 0 ⇒ mean over the H+W−1 criss-cross pixels"),
    Property("transpose", prop_transpose, description="cca(qᵀ,kᵀ,vᵀ) = cca(q,k,v)ᵀ"),
    Property("permutation", prop_permutation, lambda c: c["H"] * c["W"] > 1, "row/column permutation equivariance"),
    Property("single_line", prop_single_row, lambda c: c["H"] == 1 or c["W"] == 1, "H=1 or W=1 is 1-D attention"),
)


# -- module: recurrent criss-cross attention (specs/ccnet.md §2.3) ---------------------

MODULE_PARAMS = {
    "B": Param(int, min=1, doc="batch"),
    "C": Param(int, min=8, doc="channels (Cq = C // 8)"),
    "H": Param(int, min=1, doc="height"),
    "W": Param(int, min=1, doc="width"),
    "R": Param(int, min=1, default=2, doc="recurrences (shared weights)"),
    "gamma": Param(float, default=0.7, doc="residual scale (0 hides every bug)"),
}


def module_inputs(case: Case) -> Inputs:
    """x: [B, C, H, W]; 1×1 conv weights and biases; gamma as a differentiable scalar."""
    B, C, H, W = (case[k] for k in ("B", "C", "H", "W"))
    Cq = C // 8
    wstd = Cq**-0.25 / C**0.5  # query/key energies ~ N(0, 1) for unit-variance x
    return Inputs(
        {
            "x": case.randn("x", B, C, H, W),
            "wq": case.randn("wq", Cq, C, std=wstd),
            "bq": case.randn("bq", Cq, std=0.1),
            "wk": case.randn("wk", Cq, C, std=wstd),
            "bk": case.randn("bk", Cq, std=0.1),
            "wv": case.randn("wv", C, C, std=C**-0.5),
            "bv": case.randn("bv", C, std=0.1),
            "gamma": torch.tensor(float(case["gamma"]), dtype=torch.float64),
        },
        kwargs={"R": case["R"]},
        differentiable=("x", "wq", "bq", "wk", "bk", "wv", "bv", "gamma"),
    )


def rcca_forward(
    cca: Callable[..., torch.Tensor],
    x: torch.Tensor,
    wq: torch.Tensor,
    bq: torch.Tensor,
    wk: torch.Tensor,
    bk: torch.Tensor,
    wv: torch.Tensor,
    bv: torch.Tensor,
    gamma: torch.Tensor,
    R: int = 2,
) -> torch.Tensor:
    """RCCA: ``x ← gamma · cca(Wq x, Wk x, Wv x) + x``, R times with the same weights."""
    for _ in range(R):
        q = F.conv2d(x, wq[:, :, None, None], bq)
        k = F.conv2d(x, wk[:, :, None, None], bk)
        v = F.conv2d(x, wv[:, :, None, None], bv)
        x = gamma * cca(q, k, v) + x
    return x


def prop_receptive_field(module: Callable[..., Any], case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """out[:, :, y, x] depends on exactly row y ∪ column x after R = 1, on every pixel after R ≥ 2."""
    H, W, R = case["H"], case["W"], case["R"]
    inputs = module_inputs(case).to(dtype, device)
    outcomes = []
    for y, x in {(0, 0), (H // 2, W // 2), (H - 1, W - 1)}:
        for t in inputs.tensors.values():
            t.grad = None
        out = module(*inputs.tensors.values(), R=R)
        out[:, :, y, x].sum().backward()
        grad = inputs.tensors["x"].grad
        assert grad is not None
        depends = (grad.abs().sum((0, 1)) > 0).cpu()
        if R == 1:
            expected = torch.zeros(H, W, dtype=torch.bool)
            expected[y, :] = True
            expected[:, x] = True
        else:
            expected = torch.ones(H, W, dtype=torch.bool)
        wrong = int((depends != expected).sum())
        detail = f"R={R}: pixel ({y},{x}) depends on {int(depends.sum())} pixels, expected {int(expected.sum())}"
        outcomes.append(PropertyOutcome(wrong == 0, float(wrong), 0.0, detail))
    return all_of(outcomes)


RCCA = ModuleDef(
    name="rcca",
    params=MODULE_PARAMS,
    make_inputs=module_inputs,
    forward=rcca_forward,
    properties=(
        Property("receptive_field", prop_receptive_field, description="row ∪ column after R=1, all after R=2"),
    ),
    description="recurrent criss-cross attention: 1×1 convs to C/8, C/8, C; gamma residual; R recurrences",
)

CCNET = define_mechanism(
    Mechanism(
        name="ccnet",
        core="cca",
        params=SHAPE,
        make_inputs=make_inputs,
        naive_work=naive_work,
        flops=flops,
        memory=memory,
        properties=PROPERTIES,
        modules=(RCCA,),
        doc="Criss-cross attention (Huang et al., CCNet, ICCV 2019): cca(q, k, v) over each pixel's row and column.",
    )
)
