"""Non-local block: the ext ops (opcheck, gradcheck, fused == unfused, memory), the cost
model, and wrong implementations caught by ``attnbench run`` (specs/nonlocal.md §6)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attnbench import build
from attnbench.cases import Case
from attnbench.measure.memory import peak_cpu
from impls.non_local.mechanism import flops, make_inputs
from impls.non_local.naive import non_local_naive
from impls.non_local.vectorized import non_local_vectorized

from .conftest import MutationRun

MODES = [("embedded_gaussian", False), ("gaussian", True), ("dot", False), ("concat", False)]
EXT_UNAVAILABLE = build.unavailable_reason("non_local")
needs_ext = pytest.mark.skipif(EXT_UNAVAILABLE is not None, reason=f"ext unavailable: {EXT_UNAVAILABLE}")


def case(mode: str, scaled: bool = False, **shape: int) -> Case:
    params = {"B": 2, "Ck": 3, "Cv": 4, "H": 6, "W": 7, "Hk": 3, "Wk": 4, "mode": mode, "scaled": scaled}
    params.update(shape)
    return Case("nonlocal", "non_local", params)


@needs_ext
@pytest.mark.parametrize(("mode", "scaled"), MODES)
def test_ext_opcheck(mode: str, scaled: bool) -> None:
    from impls.non_local.ext import _opcheck_samples

    for op, args, kwargs in _opcheck_samples(case(mode, scaled), torch.float64, "cpu"):
        torch.library.opcheck(op, args, kwargs)


@needs_ext
@pytest.mark.parametrize(("mode", "scaled"), MODES)
def test_ext_gradcheck_across_key_tiles(mode: str, scaled: bool) -> None:
    from impls.non_local.ext import non_local_ext_op

    inputs = make_inputs(case(mode, scaled, H=3, W=4, Hk=2, Wk=3)).to(torch.float64, "cpu")
    args = tuple(inputs.tensors.values())
    assert torch.autograd.gradcheck(
        lambda *t: non_local_ext_op(*t, key_block=4, **inputs.kwargs), args, nondet_tol=1e-12
    )


@needs_ext
@pytest.mark.parametrize(("mode", "scaled"), MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_equals_unfused(mode: str, scaled: bool, dtype: torch.dtype) -> None:
    """Key tiles of 1 and 5 (online softmax across tiles) = one tile = the vectorized impl."""
    from impls.non_local.ext import non_local_ext_op

    inputs = make_inputs(case(mode, scaled, H=5, W=6, Hk=4, Wk=5)).to(dtype, "cpu")
    args = tuple(inputs.tensors.values())
    gout = torch.randn(2, 4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    results = []
    for fn in (
        lambda *t: non_local_ext_op(*t, key_block=1, **inputs.kwargs),
        lambda *t: non_local_ext_op(*t, key_block=5, **inputs.kwargs),
        lambda *t: non_local_ext_op(*t, key_block=20, **inputs.kwargs),
        lambda *t: non_local_vectorized(*t, **inputs.kwargs),
    ):
        out = fn(*args)
        results.append((out.detach(), torch.autograd.grad(out, args, gout)))
    for out, grads in results[:-1]:
        torch.testing.assert_close(out, results[-1][0], atol=tol, rtol=tol)
        for g, g_ref in zip(grads, results[-1][1], strict=True):
            torch.testing.assert_close(g, g_ref, atol=tol, rtol=tol)


@needs_ext
def test_ext_rejects_bad_arguments_with_named_messages() -> None:
    from impls.non_local.ext import _ops

    ops = _ops()
    theta, phi, g = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 2, 2), torch.randn(2, 4, 2, 3)
    with pytest.raises(RuntimeError, match="nl_forward: g must have shape"):
        ops.nl_forward(theta, phi, g, None, "dot", 1.0, 0)
    with pytest.raises(RuntimeError, match="nl_forward: w"):
        ops.nl_forward(theta, phi, torch.randn(2, 4, 2, 2), None, "concat", 1.0, 0)
    with pytest.raises(RuntimeError, match="mode must be"):
        ops.nl_forward(theta, phi, torch.randn(2, 4, 2, 2), None, "gauss", 1.0, 0)


@needs_ext
def test_inference_path_memory_is_linear_in_keys() -> None:
    """Under no_grad the ext keeps one [N, tile] score tile, the vectorized impl two [N, M] matrices."""
    from impls.non_local.ext import non_local_ext

    inputs = make_inputs(case("embedded_gaussian", B=1, Ck=8, Cv=8, H=32, W=32, Hk=32, Wk=32)).to(torch.float32, "cpu")
    args = [t.detach() for t in inputs.tensors.values()]
    with torch.no_grad():
        ext_peak = peak_cpu(lambda: non_local_ext(*args, **inputs.kwargs))
        vec_peak = peak_cpu(lambda: non_local_vectorized(*args, **inputs.kwargs))
    assert vec_peak >= 2 * 1024 * 1024 * 4  # scores + probabilities
    assert ext_peak * 4 < vec_peak, (ext_peak, vec_peak)


@pytest.mark.parametrize(("mode", "scaled"), MODES)
def test_flops_match_flop_counter_on_matmuls(mode: str, scaled: bool) -> None:
    """FlopCounterMode counts the vectorized impl's matmuls; flops() adds softmax / ReLU work on top."""
    c = case(mode, scaled, B=2, Ck=5, Cv=6, H=7, W=9, Hk=3, Wk=4)
    inputs = make_inputs(c)
    with FlopCounterMode(display=False) as counter:
        inputs.call(non_local_vectorized)
    entries = 2 * 63 * 12
    elementwise = {"embedded_gaussian": 4 * entries, "gaussian": 4 * entries, "dot": 0, "concat": 2 * entries}[mode]
    assert counter.get_total_flops() == flops(c) - elementwise


TINY_NONLOCAL = """
    name = "tiny_nonlocal"
    mechanisms = ["nonlocal"]
    [checks]
    timing = false
    memory = false
    gradcheck = false
    opcheck = false
    [profiles.quick]
    dtypes = ["float64"]
    [[profiles.quick.grids]]
    "B,Ck,Cv,H,W,Hk,Wk" = [[2, 3, 4, 4, 5, 4, 5], [2, 3, 4, 6, 7, 3, 3]]
    mode = ["embedded_gaussian", "dot", "concat"]
"""


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    ("file", "name", "caught_by"),
    [
        ("nonlocal_dot_by_n.py", "dot_by_n", {"forward", "property:normalised_by_keys"}),
        ("nonlocal_softmax_over_queries.py", "softmax_over_queries", {"forward", "property:rows_sum_to_one"}),
        ("nonlocal_flatten_order.py", "flatten_order", {"forward", "property:key_permutation"}),
    ],
)
def test_wrong_nonlocal_is_caught(
    run_mutation: Callable[[str, str, str], MutationRun], file: str, name: str, caught_by: set[str]
) -> None:
    run = run_mutation(TINY_NONLOCAL, file, name)
    assert run.code == 1
    failed = run.failed
    assert caught_by <= failed, failed
    assert run.vectorized_clean


def _ext_vs_float64_reference(
    mode: str, scaled: bool, dtype: torch.dtype, key_block: int, **shape: int
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor, tuple[torch.Tensor, ...]]:
    from impls.non_local.ext import non_local_ext_op

    inputs = make_inputs(case(mode, scaled, **shape)).to(torch.float64, "cpu")
    ref_args = tuple(t.detach().requires_grad_() for t in inputs.tensors.values())
    args = tuple(t.detach().to(dtype).requires_grad_() for t in ref_args)
    ref = non_local_vectorized(*ref_args, **inputs.kwargs)
    gout = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref_grads = torch.autograd.grad(ref, ref_args, gout)
    out = non_local_ext_op(*args, key_block=key_block, **inputs.kwargs)
    grads = torch.autograd.grad(out, args, gout.to(dtype))
    return out, grads, ref, ref_grads


@needs_ext
@pytest.mark.parametrize(("mode", "scaled"), MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "shape",
    [
        # query tiles of 128 (Ck + Cv < 256) and 256 rows, neither a multiple; keys ≠ queries
        {"B": 2, "Ck": 5, "Cv": 7, "H": 13, "W": 23, "Hk": 9, "Wk": 31},
        {"B": 1, "Ck": 130, "Cv": 131, "H": 17, "W": 19, "Hk": 7, "Wk": 5},
        {"B": 2, "Ck": 1, "Cv": 1, "H": 1, "W": 1, "Hk": 1, "Wk": 1},
        {"B": 1, "Ck": 2, "Cv": 3, "H": 1, "W": 3, "Hk": 2, "Wk": 1},
    ],
    ids=["odd-tiles", "wide-channels", "1x1", "tiny"],
)
@pytest.mark.parametrize("key_block", [7, 256])
def test_ext_equals_float64_reference_on_tile_edges(
    mode: str, scaled: bool, dtype: torch.dtype, shape: dict[str, int], key_block: int
) -> None:
    """The CPU fast paths (BLAS tiles + vector softmax, concat sweep) forward and all grads."""
    out, grads, ref, ref_grads = _ext_vs_float64_reference(mode, scaled, dtype, key_block, **shape)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), g_ref, atol=tol, rtol=tol)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_concat_ties_at_zero_follow_relu(dtype: torch.dtype) -> None:
    """Pre-activations exactly 0 (a_i = −b_j) give f = 0 and ReLU'(0) = 0, as torch.relu."""
    from impls.non_local.ext import non_local_ext_op

    theta = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, 1.0], dtype=torch.float64).view(1, 1, 2, 3)
    phi = torch.tensor([1.0, 0.0, -1.0, -2.0], dtype=torch.float64).view(1, 1, 2, 2)
    g = torch.randn(1, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w = torch.tensor([1.0, 1.0], dtype=torch.float64)
    ref_args = tuple(t.clone().requires_grad_() for t in (theta, phi, g, w))
    args = tuple(t.detach().to(dtype).requires_grad_() for t in ref_args)
    ref = non_local_vectorized(*ref_args, mode="concat")
    out = non_local_ext_op(*args, mode="concat")
    gout = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref_grads = torch.autograd.grad(ref, ref_args, gout)
    grads = torch.autograd.grad(out, args, gout.to(dtype))
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=1e-6)
    for gr, gr_ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(gr.double(), gr_ref, atol=1e-6, rtol=1e-6)


@needs_ext
@pytest.mark.parametrize("mode", ["embedded_gaussian", "concat"])
def test_ext_backward_is_deterministic_with_threads(mode: str) -> None:
    """Two threads and B = 1: the softmax backward splits the key tiles into chunks (dq summed in order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [
            _ext_vs_float64_reference(mode, False, torch.float32, 16, B=1, Ck=6, Cv=5, H=9, W=10, Hk=8, Wk=9)
            for _ in range(2)
        ]
    finally:
        torch.set_num_threads(threads)
    (out, grads, ref, ref_grads), (out2, grads2, _, _) = runs
    assert torch.equal(out, out2)
    for g, g2, g_ref in zip(grads, grads2, ref_grads, strict=True):
        assert torch.equal(g, g2)
        torch.testing.assert_close(g.double(), g_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


# -- report section ---------------------------------------------------------------------


def test_report_section_names_why_the_ext_is_slower(tmp_path: Path) -> None:
    from impls.non_local.report import section

    big = "B=2,Ck=256,Cv=256,H=56,Hk=56,W=56,Wk=56,mode={},scaled=false"  # too many scores to keep
    tiny = "B=1,Ck=1,Cv=1,H=1,Hk=1,W=1,Wk=1,mode=embedded_gaussian,scaled=false"
    kept = "B=2,Ck=256,Cv=256,H=28,Hk=28,W=28,Wk=28,mode=gaussian,scaled=true"
    rows = [  # (case, pass, vectorized s, ext s, flops)
        (big.format("embedded_gaussian"), "fwd+bwd", 0.0758, 0.0843, 1.2e9),  # slower: recompute
        (big.format("embedded_gaussian"), "fwd", 0.0258, 0.0234, 4e8),  # faster: no line
        (big.format("dot"), "fwd", 0.0223, 0.0250, 4e8),  # slower: not the recompute reason
        (tiny, "fwd+bwd", 0.00044, 0.00046, 8.0),  # overhead, though above SMALL_S
        (kept, "fwd+bwd", 0.0758, 0.0790, 1.2e9),  # slower though the scores are kept: not "recomputes"
    ]
    header = "mechanism,impl,kind,case,dtype,device,pass,median_s,iqr_s,peak_bytes,flops\n"
    body = "".join(
        f'nonlocal,{impl},{impl},"nonlocal/non_local/{case}",float32,cpu,{p},{t},0.0,1000,{fl}\n'
        for case, p, vec_s, ext_s, fl in rows
        for impl, t in (("vectorized", vec_s), ("ext", ext_s))
    )
    (tmp_path / "perf.csv").write_text(header + body)
    text = "\n".join(section(tmp_path, {}))
    misses = [line for line in text.splitlines() if line.startswith("- `nonlocal`")]
    assert len(misses) == 4, misses
    kept_line = next(m for m in misses if "H=28" in m)
    assert "keeps the scores" in kept_line and "recomputes" not in kept_line
    recompute, dot, overhead = (
        next(m for m in misses if key in m) for key in ("Wk=56,mode=embedded_gaussian", "mode=dot", "Ck=1,")
    )
    assert "recomputes the scores" in recompute and "Ck=256" in recompute
    assert "O((N+M)·C)" in dot and "recomputes" not in dot
    assert "per-call overhead" in overhead
    assert "1.10×" in text  # the faster forward's speed-up (0.0258 / 0.0234) is in the table


# -- scores kept for the backward ------------------------------------------------------


@needs_ext
@pytest.mark.parametrize(("mode", "scaled"), MODES[:2])
def test_kept_scores_backward_matches_recompute_and_passes_gradcheck(
    mode: str, scaled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from impls.non_local import ext

    inputs = make_inputs(case(mode, scaled, H=3, W=4, Hk=2, Wk=3)).to(torch.float64, "cpu")
    args = tuple(inputs.tensors.values())
    theta, phi = args[0], args[1]
    scale = float(inputs.kwargs.get("scale") or 1.0)
    _, _, scores = ext._ops().nl_forward(*(a.detach() for a in args), None, mode, scale, 4, True)
    expected = scale * torch.einsum("bcn,bcm->bnm", theta.detach().flatten(2), phi.detach().flatten(2))
    torch.testing.assert_close(scores, expected, rtol=1e-12, atol=1e-12)

    def grads(keep_from_ck: int) -> tuple[torch.Tensor, ...]:
        monkeypatch.setattr(ext, "KEEP_SCORES_MIN_CK", keep_from_ck)
        out = ext.non_local_ext_op(*args, key_block=4, **inputs.kwargs)
        return torch.autograd.grad(out, args, torch.ones_like(out))

    kept, recomputed = grads(0), grads(10**9)
    for a, b in zip(kept, recomputed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    naive_out = non_local_naive(*args, **inputs.kwargs)  # the float64 loop reference
    naive = torch.autograd.grad(naive_out, args, torch.ones_like(naive_out))
    for a, b in zip(kept, naive, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    monkeypatch.setattr(ext, "KEEP_SCORES_MIN_CK", 0)
    assert torch.autograd.gradcheck(lambda *t: ext.non_local_ext_op(*t, key_block=4, **inputs.kwargs), args)


def test_scores_are_kept_only_for_autograd_on_small_wide_softmax_cases() -> None:
    from impls.non_local.ext import KEEP_SCORES_MAX_BYTES, _keep_scores

    def t(*shape: int, grad: bool = True) -> torch.Tensor:
        return torch.zeros(*shape, requires_grad=grad)

    small = (t(2, 256, 28, 28), t(2, 256, 14, 14), t(2, 256, 14, 14))
    assert _keep_scores(*small, None, "embedded_gaussian") and _keep_scores(*small, None, "gaussian")
    assert not _keep_scores(*small, None, "dot")
    with torch.no_grad():  # inference: the memory-lean path, never N×M
        assert not _keep_scores(*small, None, "embedded_gaussian")
    assert not _keep_scores(*(x.detach() for x in small), None, "embedded_gaussian")
    narrow = (t(2, 32, 28, 28), t(2, 32, 28, 28), t(2, 32, 28, 28))
    assert not _keep_scores(*narrow, None, "embedded_gaussian")  # Ck < 64: recomputing is cheap
    big = (t(2, 256, 56, 56), t(2, 256, 56, 56), t(2, 256, 56, 56))
    assert KEEP_SCORES_MAX_BYTES < 2 * 3136 * 3136 * 4
    assert not _keep_scores(*big, None, "embedded_gaussian")
