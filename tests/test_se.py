"""Squeeze-and-Excitation: the ext's ops, Cr < 1 rejection, cost models, mutations.

Equivalence of every impl with the naive reference on the suite's quick cases
is tested by tests/test_impls.py; this file tests what is specific to SE.
Build-dependent tests skip with the compiler's message where the extension
cannot be built.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from attnbench import build
from attnbench.cases import Case
from attnbench.registry import REGISTRY
from impls.se import ext
from impls.se.mechanism import flops, make_inputs, memory, module_inputs, naive_work, traffic

from .conftest import MutationRun

REASON = build.unavailable_reason("se")
needs_ext = pytest.mark.skipif(REASON is not None, reason=f"se extension unavailable: {REASON}")

GRADCHECK = [(2, 4, 2, 3, 5, True), (1, 12, 5, 1, 9, True), (2, 4, 2, 3, 5, False)]  # specs/se.md §4


def case_of(B: int, C: int, Cr: int, H: int, W: int, bias: bool = True) -> Case:
    return Case("se", "se", {"B": B, "C": C, "Cr": Cr, "H": H, "W": W, "bias": bias})


def ids(shape: tuple[object, ...]) -> str:
    return "B={},C={},Cr={},H={},W={},bias={}".format(*shape)


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- the extension ---------------------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("shape", GRADCHECK, ids=ids)
def test_opcheck_every_op(shape: tuple[int, int, int, int, int, bool]) -> None:
    samples = ext._opcheck_samples(case_of(*shape), torch.float64, "cpu")
    names = {op.__name__ for op, _, _ in samples}
    assert names == {"se_forward.default", "se_backward.default"}, names
    assert any(isinstance(t, torch.Tensor) and not t.is_contiguous() for _, a, _ in samples for t in a)
    for op, args, kwargs in samples:
        torch.library.opcheck(op, args, kwargs)


@needs_ext
@pytest.mark.parametrize("shape", GRADCHECK, ids=ids)
def test_gradcheck_through_ext(shape: tuple[int, int, int, int, int, bool]) -> None:
    inputs = make_inputs(case_of(*shape)).to(torch.float64, "cpu")
    t = inputs.tensors
    diff = [n for n in t if n in inputs.differentiable]

    def fn(*args: torch.Tensor) -> torch.Tensor:
        full = dict(t)
        full.update(zip(diff, args, strict=True))
        return ext.se_ext(*full.values())

    assert torch.autograd.gradcheck(fn, tuple(t[n] for n in diff), nondet_tol=1e-12)


@needs_ext
def test_ext_matches_vectorized_on_a_larger_case_and_writes_everything() -> None:
    from impls.se.vectorized import se_vectorized

    inputs = make_inputs(case_of(4, 64, 4, 13, 11)).to(torch.float32, "cpu")
    args = [t.detach() for t in inputs.tensors.values()]
    out = ext.se_ext(*args)
    torch.testing.assert_close(out, se_vectorized(*args), rtol=1e-5, atol=1e-5)
    # channels_last input: read through .contiguous(), not misread
    x_cl = args[0].to(memory_format=torch.channels_last)
    torch.testing.assert_close(ext.se_ext(x_cl, *args[1:]), out)


@needs_ext
def test_ext_checks_its_inputs() -> None:
    t = {k: v.float() for k, v in make_inputs(case_of(2, 4, 2, 3, 5)).tensors.items()}
    with pytest.raises(RuntimeError, match=r"se_forward: w2 must have shape \[C, Cr\]"):
        torch.ops.attnbench_se.se_forward(t["x"], t["w1"], t["b1"], t["w2"].T.contiguous(), t["b2"])
    with pytest.raises(RuntimeError, match="se_forward: weights must have x's dtype"):
        torch.ops.attnbench_se.se_forward(t["x"], t["w1"].double(), t["b1"], t["w2"], t["b2"])


# -- Cr < 1 is rejected ------------------------------------------------------------------


def test_every_impl_rejects_zero_hidden_units() -> None:
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    w1, w2 = torch.zeros(0, 8, dtype=torch.float64), torch.zeros(8, 0, dtype=torch.float64)
    b1, b2 = torch.zeros(0, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    checked = []
    for impl in REGISTRY.impls_for("se"):
        if not impl.builtin or (impl.available is not None and impl.available()):
            continue
        with pytest.raises(ValueError, match=r"Cr = C // r = 0 hidden units for C = 8, r > C = 8") as info:
            impl.fn(x, w1, b1, w2, b2)
        assert "Cr >= 1" in str(info.value)
        checked.append(impl.name)
    assert {"naive", "vectorized", "conv_module"} <= set(checked)
    if REASON is None:
        assert "ext" in checked
        with pytest.raises(RuntimeError, match="se_forward: the reduction leaves Cr = 0 hidden units for C = 8"):
            ext.ensure_loaded()
            torch.ops.attnbench_se.se_forward(x, w1, None, w2, None)


def test_module_rejects_zero_hidden_units() -> None:
    case = Case(
        "se", "se_basic_block", {"B": 2, "C": 8, "H": 3, "W": 5, "r": 16, "bias": True}, tags=frozenset({"module"})
    )
    with pytest.raises(ValueError, match=r"se_basic_block: .*Cr = C // r = 0 hidden units for C = 8, r = 16"):
        module_inputs(case)


# -- cost models ----------------------------------------------------------------------


def test_cost_and_traffic_models() -> None:
    case = case_of(2, 64, 4, 7, 9)
    n = 2 * 64 * 7 * 9
    assert naive_work(case) == 2 * n + 2 * 2 * 64 * 4
    assert flops(case) == pytest.approx(2 * n + 4 * 2 * 64 * 4 + 4 * 2 * 64 + 2 * 2 * 4)
    weights = 2 * 64 * 4 + 4 + 64
    assert traffic(case, torch.float32, "fwd") == 4 * (3 * n + weights)
    assert traffic(case, torch.float64, "fwd+bwd") == 8 * (7 * n + 3 * weights)
    assert traffic(case_of(2, 64, 4, 7, 9, bias=False), torch.float32, "fwd") == 4 * (3 * n + 2 * 64 * 4)
    # linear in B·H·W at fixed weights; memory model has no attention map
    assert traffic(case_of(4, 64, 4, 7, 9), torch.float32, "fwd") - 4 * weights == 2 * (
        traffic(case, torch.float32, "fwd") - 4 * weights
    )
    model = memory(case, torch.float32)
    assert "attention_map" not in model and model["gate_stats"] == 4 * 2 * (2 * 64 + 4)


def test_inputs_keep_relu_away_from_its_kink() -> None:
    for shape in GRADCHECK:
        t = make_inputs(case_of(*shape)).tensors
        b1 = t["b1"] if t["b1"].numel() else 0.0
        pre = t["x"].mean((2, 3)) @ t["w1"].T + b1
        assert float(pre.abs().min()) >= 1e-3


# -- mutations caught through --impl ------------------------------------------------------

TINY_SE = """
    name = "tiny_se"
    mechanisms = ["se"]
    [checks]
    timing = false
    memory = false
    scaling = false
    gradcheck = false
    modules = false
    opcheck = false
    [profiles.quick]
    dtypes = ["float64"]
    [[profiles.quick.cases]]
    B = 2
    C = 4
    Cr = 2
    H = 3
    W = 5
    [[profiles.quick.cases]]
    B = 2
    C = 16
    Cr = 1
    H = 7
    W = 3
    bias = false
"""


@pytest.mark.parametrize(
    ("file", "name"),
    [
        ("se_per_pixel_gate.py", "per_pixel_gate"),
        ("se_max_pool.py", "max_pool"),
        ("se_softmax_gate.py", "softmax_gate"),
    ],
)
def test_wrong_se_is_caught(run_mutation: Callable[[str, str, str], MutationRun], file: str, name: str) -> None:
    run = run_mutation(TINY_SE, file, name)
    assert run.code == 1
    failed = run.failed
    assert "forward" in failed, failed
    assert run.vectorized_clean


# -- report section ---------------------------------------------------------------------


def test_report_section_compares_ext_with_vectorized(tmp_path: Path) -> None:
    from impls.se.report import section

    case = "se/se/B=32,C=64,Cr=4,H=56,W=56,bias=true"
    moved = traffic(case_of(32, 64, 4, 56, 56), torch.float32, "fwd")
    rows = [
        ("vectorized", "vectorized", 0.004),
        ("ext", "ext", 0.002),
        ("conv_module", "peer", 0.005),
    ]
    header = "mechanism,impl,kind,case,dtype,device,pass,median_s,iqr_s,bytes_moved\n"
    body = "".join(f'se,{i},{k},"{case}",float32,cpu,fwd,{t},0.0001,{moved}\n' for i, k, t in rows)
    (tmp_path / "perf.csv").write_text(header + body)
    env = {"copy_bandwidth_bytes_per_s": {"cpu": 20e9}}
    text = "\n".join(section(tmp_path, env))
    assert "## SE: compiled vs vectorized, bandwidth" in text
    assert "2.00×" in text and "ext ≥ vectorized at 1/1 shapes" in text
    assert f"{moved / 0.002 / 1e9:.2f}" in text and f"{100 * moved / 0.002 / 20e9:.0f}%" in text
    assert "fresh memory" not in text  # no fresh-copy measurement in env: no such sentence
    # below half the copy bandwidth: the fresh-memory copy is named next to it
    slow = {"copy_bandwidth_bytes_per_s": {"cpu": 400e9}, "fresh_copy_bandwidth_bytes_per_s": {"cpu": 100e9}}
    text = "\n".join(section(tmp_path, slow))
    assert "fresh memory" in text and "100.0 GB/s in this run, 25% of the copy" in text
    assert f"the ext reaches {100 * moved / 0.002 / 100e9:.0f}%" in text
    # no rows of this mechanism: no section
    (tmp_path / "perf.csv").write_text(header + body.replace("se,", "ccnet,"))
    assert section(tmp_path, env) == []


@needs_ext
@pytest.mark.parametrize(("B", "C", "Cr", "H", "W"), [(1, 64, 4, 112, 112), (8, 2048, 512, 7, 7)])
def test_ext_long_reductions_stay_within_rule_k_in_float32(B: int, C: int, Cr: int, H: int, W: int) -> None:
    """The pooling sum (12544 terms) and the MLP sums (2048 terms) accumulate in double
    on the CPU: in float they drifted 3-12x past the vectorized impl's error."""
    case = case_of(B, C, Cr, H, W)
    inputs = make_inputs(case)
    gout = case.randn("gout", B, C, H, W)

    def grads(impl: str, dtype: torch.dtype) -> list[torch.Tensor]:
        t = inputs.to(dtype, "cpu")
        out = t.call(REGISTRY.impls["se"][impl].fn)
        wrt = [t.tensors[n] for n in t.differentiable]
        return [out.detach().double(), *(g.double() for g in torch.autograd.grad(out, wrt, gout.to(dtype)))]

    ref = grads("vectorized", torch.float64)
    ext_err = [float((a - r).abs().max()) for a, r in zip(grads("ext", torch.float32), ref, strict=True)]
    vec_err = [float((a - r).abs().max()) for a, r in zip(grads("vectorized", torch.float32), ref, strict=True)]
    eps = 2.0**-23
    for e, v, r in zip(ext_err, vec_err, ref, strict=True):
        assert e <= 2 * v + 2 * eps * float(r.abs().max()), (ext_err, vec_err)


@needs_ext
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("C", "Cr", "H", "W"),
    [
        (64, 63, 5, 4),  # C·Cr below the GEMM threshold
        (128, 64, 5, 4),  # above it: one GEMM over the batch
        (128, 32, 32, 32),  # above it on planes large enough for batch groups (1 MiB each in float64)
    ],
)
def test_ext_forward_mlp_paths_agree_with_vectorized(C: int, Cr: int, H: int, W: int, bias: bool) -> None:
    case = case_of(3, C, Cr, H, W, bias=bias)
    t = make_inputs(case).to(torch.float64, "cpu")
    gout = case.randn("gout", 3, C, H, W)
    results = []
    for impl in ("ext", "vectorized"):
        out = t.call(REGISTRY.impls["se"][impl].fn)
        wrt = [t.tensors[n] for n in t.differentiable]
        results.append([out, *torch.autograd.grad(out, wrt, gout)])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@needs_ext
def test_ext_records_autograd_only_when_an_input_needs_grad() -> None:
    """build.call_op dispatches below Autograd when nothing needs grad; with grad the registered
    rule runs as an autograd.Function, with the gradients of the op's own registration."""
    case = case_of(2, 8, 2, 3, 3)
    t = make_inputs(case).to(torch.float64, "cpu")
    fn = REGISTRY.impls["se"]["ext"].fn
    with torch.no_grad():
        plain = t.call(fn)
    assert plain.grad_fn is None and not plain.requires_grad
    out = t.call(fn)
    assert out.grad_fn is not None
    torch.testing.assert_close(out.detach(), plain, rtol=0, atol=0)
    wrt = [t.tensors[n] for n in t.differentiable]
    fast = torch.autograd.grad(out, wrt, torch.ones_like(out))  # build.call_op's autograd.Function
    x, w1, b1, w2, b2 = (t.tensors[n] for n in ("x", "w1", "b1", "w2", "b2"))
    direct, *_ = torch.ops.attnbench_se.se_forward.default(x, w1, b1, w2, b2)  # torch.library's autograd
    assert "_OpFunction" in type(out.grad_fn).__name__ and direct.grad_fn is not None
    slow = torch.autograd.grad(direct, wrt, torch.ones_like(direct))
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_copy_bandwidth_measures_touched_and_fresh_copies() -> None:
    from attnbench.measure.bandwidth import copy_bandwidth

    touched = copy_bandwidth(nbytes=4 * 2**20, repeats=3)
    fresh = copy_bandwidth(nbytes=4 * 2**20, repeats=3, fresh=True)
    assert 1e8 < touched < 1e13 and 1e8 < fresh < 1e13, (touched, fresh)
