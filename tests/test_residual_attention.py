"""Residual attention: the ext's ops, gradcheck through it, cost models, mutations.

Equivalence of every impl with the naive reference on the suite's quick cases
is tested by tests/test_impls.py; this file tests what is specific to the
mechanism. Build-dependent tests skip with the compiler's message where the
extension cannot be built.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from attnbench import build
from attnbench.cases import Case
from impls.residual_attention import ext
from impls.residual_attention.mechanism import KINDS, flops, make_inputs, memory, naive_work, traffic
from impls.residual_attention.vectorized import ran_vectorized

from .conftest import MutationRun

REASON = build.unavailable_reason("residual_attention")
needs_ext = pytest.mark.skipif(REASON is not None, reason=f"residual_attention extension unavailable: {REASON}")

GRADCHECK = [(2, 3, 4, 5), (1, 8, 6, 3)]  # specs/residual_attention.md §4


def case_of(B: int, C: int, H: int, W: int, kind: str) -> Case:
    return Case("residual_attention", "ran", {"B": B, "C": C, "H": H, "W": W, "kind": kind})


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- the extension ---------------------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", GRADCHECK, ids=str)
def test_opcheck_every_op(shape: tuple[int, int, int, int], kind: str) -> None:
    samples = ext._opcheck_samples(case_of(*shape, kind), torch.float64, "cpu")
    assert {op.__name__ for op, _, _ in samples} == {"ran_forward.default", "ran_backward.default"}
    assert any(isinstance(t, torch.Tensor) and not t.is_contiguous() for _, a, _ in samples for t in a)
    for op, args, kwargs in samples:
        torch.library.opcheck(op, args, kwargs)


@needs_ext
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", GRADCHECK, ids=str)
def test_gradcheck_through_ext(shape: tuple[int, int, int, int], kind: str) -> None:
    trunk, mask = make_inputs(case_of(*shape, kind)).to(torch.float64, "cpu").tensors.values()
    assert torch.autograd.gradcheck(lambda t, m: ext.ran_ext(t, m, kind), (trunk, mask), nondet_tol=1e-12)


@needs_ext
@pytest.mark.parametrize("kind", KINDS)
def test_ext_float32_on_a_larger_case(kind: str) -> None:
    """Blocks of 256 positions (channel) and many planes (spatial): a non-multiple size, channels_last input."""
    inputs = make_inputs(case_of(3, 37, 19, 23, kind)).to(torch.float32, "cpu")
    trunk, mask = (t.detach() for t in inputs.tensors.values())
    expected = ran_vectorized(trunk, mask, kind)
    torch.testing.assert_close(ext.ran_ext(trunk, mask, kind), expected, rtol=1e-5, atol=1e-5)
    cl = trunk.to(memory_format=torch.channels_last)
    torch.testing.assert_close(ext.ran_ext(cl, mask, kind), expected, rtol=1e-5, atol=1e-5)


@needs_ext
@pytest.mark.parametrize("kind", KINDS)
def test_ext_float32_vector_sigmoid_matches_float64(kind: str) -> None:
    """The float32 CPU kernels run the sigmoid kinds 8 lanes at a time with a polynomial exp
    (19·23 = 437 positions: whole vectors and a tail); forward and both gradients stay within
    4x the vectorized impl's float32 error against float64."""
    inputs = make_inputs(case_of(3, 37, 19, 23, kind))
    trunk64, mask64 = (t.detach().double() for t in inputs.tensors.values())
    gout = torch.randn(trunk64.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def run(fn: Callable[..., torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
        t, m = (x.to(dtype).requires_grad_(True) for x in (trunk64, mask64))
        out = fn(t, m, kind)
        return [out.detach().double(), *(d.double() for d in torch.autograd.grad(out, (t, m), gout.to(dtype)))]

    ref = run(ran_vectorized, torch.float64)
    ext_err = [float((a - r).abs().max()) for a, r in zip(run(ext.ran_ext, torch.float32), ref, strict=True)]
    vec_err = [float((a - r).abs().max()) for a, r in zip(run(ran_vectorized, torch.float32), ref, strict=True)]
    for e, v, r in zip(ext_err, vec_err, ref, strict=True):
        assert e <= 4 * v + 4 * 2.0**-23 * float(r.abs().max()), (ext_err, vec_err)


@needs_ext
def test_channel_kind_at_zero_norm_has_finite_gradients() -> None:
    """m = 0 at a position: the norm is clamped at 1e-12, f = 0; gradients stay finite (as F.normalize)."""
    trunk = torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    mask[:, :, 0, 0] = 0.0
    mask.requires_grad_(True)
    out = ext.ran_ext(trunk, mask, "channel")
    ref_t = trunk.detach().clone().requires_grad_(True)
    ref_m = mask.detach().clone().requires_grad_(True)
    ref = (1 + torch.nn.functional.normalize(ref_m, dim=1)) * ref_t
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (trunk, mask), g)
    want = torch.autograd.grad(ref, (ref_t, ref_m), g)
    torch.testing.assert_close(out, ref)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


@needs_ext
def test_ext_checks_its_inputs() -> None:
    trunk, mask = (t.float() for t in make_inputs(case_of(2, 3, 4, 5, "mixed")).tensors.values())
    ops = torch.ops.attnbench_residual_attention
    with pytest.raises(RuntimeError, match=r"ran_forward: kind must be 0 \(mixed\), .* or 2 \(spatial\), got 7"):
        ops.ran_forward(trunk, mask, 7)
    with pytest.raises(RuntimeError, match="ran_forward: mask_logits must have trunk's shape"):
        ops.ran_forward(trunk, mask[:, :2], 0)
    with pytest.raises(RuntimeError, match="ran_forward: mask_logits must have trunk's dtype"):
        ops.ran_forward(trunk, mask.double(), 0)
    with pytest.raises(ValueError, match="kind must be one of mixed, channel, spatial"):
        ext.ran_ext(trunk, mask, "both")


# -- cost models ----------------------------------------------------------------------


def test_cost_and_traffic_models() -> None:
    n = 2 * 3 * 4 * 5
    assert naive_work(case_of(2, 3, 4, 5, "spatial")) == 3 * n
    assert flops(case_of(2, 3, 4, 5, "mixed")) == 6 * n
    assert traffic(case_of(2, 3, 4, 5, "mixed"), torch.float32, "fwd") == 3 * n * 4
    assert traffic(case_of(2, 3, 4, 5, "mixed"), torch.float32, "fwd+bwd") == 8 * n * 4
    for kind in ("channel", "spatial"):
        assert traffic(case_of(2, 3, 4, 5, kind), torch.float16, "fwd") == 4 * n * 2
        assert traffic(case_of(2, 3, 4, 5, kind), torch.float64, "fwd+bwd") == 12 * n * 8
    assert memory(case_of(2, 3, 4, 5, "channel"), torch.float32)["ext_stats"] == 2 * 4 * 5 * 4
    assert memory(case_of(2, 3, 4, 5, "spatial"), torch.float32)["ext_stats"] == 2 * 2 * 3 * 4


# -- mutations caught through --impl ------------------------------------------------------

TINY_RAN = """
    name = "tiny_ran"
    mechanisms = ["residual_attention"]
    [checks]
    timing = false
    memory = false
    scaling = false
    gradcheck = false
    modules = false
    opcheck = false
    properties = false
    [profiles.quick]
    dtypes = ["float64"]
    [[profiles.quick.grids]]
    "B,C,H,W" = [[2, 3, 4, 5], [1, 5, 2, 2]]
    kind = ["mixed", "channel", "spatial"]
"""


@pytest.mark.parametrize(
    ("file", "name", "kinds"),
    [
        ("ran_no_residual.py", "no_residual", {"mixed", "channel", "spatial"}),
        ("ran_swapped_norm.py", "swapped_norm", {"channel", "spatial"}),
        ("ran_unbiased_var.py", "unbiased_var", {"spatial"}),
    ],
)
def test_wrong_ran_is_caught(
    run_mutation: Callable[[str, str, str], MutationRun], file: str, name: str, kinds: set[str]
) -> None:
    run = run_mutation(TINY_RAN, file, name)
    assert run.code == 1
    rows = run.rows
    failed_kinds = {
        r["case"].split("kind=")[1].split(",")[0]
        for r in rows
        if r["impl"] == name and r["check"] == "forward" and r["status"] == "fail"
    }
    assert failed_kinds == kinds
    assert run.vectorized_clean


def test_report_section_separates_per_call_overhead_from_real_gaps(tmp_path: Path) -> None:
    from impls.residual_attention.report import section

    header = "mechanism,impl,kind,case,dtype,device,pass,median_s,iqr_s,bytes_moved\n"
    rows = [  # (shape, vectorized s, ext s, bytes moved)
        ("B=1,C=1,H=2,W=2,kind=mixed", 30e-6, 50e-6, 48),  # smallest: the ext's fixed cost is 50 µs
        ("B=8,C=64,H=7,W=7,kind=mixed", 300e-6, 340e-6, 800e3),  # 40 µs slower: within the fixed cost
        ("B=8,C=1024,H=56,W=56,kind=mixed", 0.10, 0.20, 800e6),  # 100 ms slower: a real gap
        ("B=8,C=256,H=28,W=28,kind=mixed", 0.02, 0.01, 50e6),  # faster
    ]
    body = "".join(
        f'residual_attention,{impl},{impl},"residual_attention/ran/{case}",float32,cpu,fwd+bwd,{t},0.0,{moved}\n'
        for case, vec_s, ext_s, moved in rows
        for impl, t in (("vectorized", vec_s), ("ext", ext_s))
    )
    (tmp_path / "perf.csv").write_text(header + body)
    text = "\n".join(section(tmp_path, {"copy_bandwidth_bytes_per_s": {"cpu": 10e9}}))
    assert "ext ≥ vectorized at 1/4 shapes" in text
    assert "2 of those are tiny (under 100 µs) or slower by no more than the ext's fixed cost per call (50.0 µs" in text
    fresh_env = {"copy_bandwidth_bytes_per_s": {"cpu": 10e9}, "fresh_copy_bandwidth_bytes_per_s": {"cpu": 2e9}}
    assert "fresh memory" in "\n".join(section(tmp_path, fresh_env))  # largest moves 800 MB: a fresh mapping
    (tmp_path / "perf.csv").write_text(header + body.replace(",800000000.0\n", ",8000000.0\n"))
    assert "fresh memory" not in "\n".join(section(tmp_path, fresh_env))  # 8 MB: reused heap, no page faults
