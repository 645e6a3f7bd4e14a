"""Spatial transformer: the compiled ops, determinism, properties and the mutations the suite must catch."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from attnbench import build
from attnbench.cases import Case
from attnbench.registry import REGISTRY
from impls.stn import mechanism, vectorized

from .conftest import MutationRun

REGISTRY.discover()
EXT_REASON = build.unavailable_reason("stn")
needs_ext = pytest.mark.skipif(EXT_REASON is not None, reason=f"stn extension unavailable: {EXT_REASON}")


def sample_case(align_corners: bool, **params: object) -> Case:
    base = {"B": 2, "C": 3, "H": 4, "W": 5, "Ho": 3, "Wo": 6, "align_corners": align_corners, "grid": "random"}
    base.update(params)
    return Case("stn.bilinear_sample", "bilinear_sample", base)


def affine_case(align_corners: bool) -> Case:
    return Case(
        "stn.affine_grid",
        "affine_grid",
        {"B": 2, "C": 3, "Ho": 5, "Wo": 4, "align_corners": align_corners, "theta": "random"},
    )


def ext_fns() -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    from impls.stn import ext

    return ext.bilinear_sample_ext, ext.affine_grid_ext


# -- compiled ops ------------------------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("align_corners", [False, True])
def test_opcheck_every_ext_op(align_corners: bool) -> None:
    from impls.stn import ext

    samples = ext.sample_opcheck(sample_case(align_corners), torch.float64, "cpu")
    samples += ext.affine_opcheck(affine_case(align_corners), torch.float64, "cpu")
    names = {str(op) for op, _, _ in samples}
    assert {n.split(".")[-2] for n in names} == {
        "bilinear_forward",
        "bilinear_backward",
        "affine_grid_forward",
        "affine_grid_backward",
    }
    for op, args, kwargs in samples:
        torch.library.opcheck(op, args, kwargs)


@needs_ext
@pytest.mark.parametrize("align_corners", [False, True])
def test_gradcheck_through_ext(align_corners: bool) -> None:
    sample, affine = ext_fns()
    inputs = mechanism.sample_inputs(sample_case(align_corners))
    inp, grid = (t.detach().requires_grad_(True) for t in inputs.tensors.values())
    assert torch.autograd.gradcheck(
        lambda i, g: sample(i, g, align_corners=align_corners), (inp, grid), nondet_tol=1e-12
    )
    theta = mechanism.affine_inputs(affine_case(align_corners)).tensors["theta"].requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: affine(t, (2, 3, 5, 4), align_corners=align_corners), (theta,), nondet_tol=1e-12
    )


@needs_ext
@pytest.mark.parametrize("batch", [1, 4])
def test_cpu_input_gradient_is_deterministic(batch: int) -> None:
    """Bitwise equal across calls with 2 threads, and equal to the 1-thread result (both parallel paths)."""
    sample, _ = ext_fns()
    case = sample_case(False, B=batch, C=5, H=9, W=11, Ho=40, Wo=37)
    inputs = mechanism.sample_inputs(case).to(torch.float32, "cpu")
    inp, grid = inputs.tensors["inp"], inputs.tensors["grid"]
    gout = case.randn("gout", batch, 5, 40, 37).float()
    before = torch.get_num_threads()
    grads = []
    try:
        for threads in (2, 2, 1):
            torch.set_num_threads(threads)
            out = sample(inp, grid, align_corners=False)
            grads.append(torch.autograd.grad(out, (inp, grid), gout))
    finally:
        torch.set_num_threads(before)
    for g in grads[1:]:
        assert torch.equal(g[0], grads[0][0]) and torch.equal(g[1], grads[0][1])


@needs_ext
def test_ext_rejects_bad_shapes_with_the_op_name() -> None:
    sample, _ = ext_fns()
    with pytest.raises(RuntimeError, match="bilinear_forward: grid must have shape"):
        sample(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 3))


# -- properties --------------------------------------------------------------------------


def sample_impls() -> list[str]:
    names = ["vectorized", "grid_sample"]
    return names + (["ext"] if EXT_REASON is None else [])


@pytest.mark.parametrize("impl", sample_impls())
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("prop", [mechanism.prop_identity, mechanism.prop_hflip, mechanism.prop_adjoint])
def test_identity_flip_adjoint(impl: str, align_corners: bool, prop: Callable[..., object]) -> None:
    fn = REGISTRY.impls["stn.bilinear_sample"][impl].fn
    for dtype in (torch.float64, torch.float32):
        outcome = prop(fn, sample_case(align_corners, H=6, W=7), dtype, "cpu")
        assert outcome.passed, outcome.detail  # type: ignore[attr-defined]


def test_identity_property_catches_mismatched_align_corners() -> None:
    def wrong(inp: torch.Tensor, grid: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
        return vectorized.bilinear_sample_vectorized(inp, grid, align_corners=not align_corners)

    assert not mechanism.prop_identity(wrong, sample_case(False, H=6, W=7), torch.float64, "cpu").passed


def test_legacy_adapter_matches_canonical_and_skips_align_corners_false() -> None:
    legacy = REGISTRY.impls["stn.bilinear_sample"]["legacy_bhwd"]
    assert legacy.unsupported_reason(sample_case(False), "float64", "cpu")
    assert legacy.unsupported_reason(sample_case(True), "float64", "cpu") is None
    inputs = mechanism.sample_inputs(sample_case(True)).to(torch.float64, "cpu")
    ref = vectorized.bilinear_sample_vectorized(*inputs.tensors.values(), align_corners=True)
    out = legacy.fn(*inputs.tensors.values(), align_corners=True)
    torch.testing.assert_close(out, ref)


def test_case_grids_avoid_integer_coordinates() -> None:
    for ac in (False, True):
        for kind in mechanism.GRID_KINDS:
            case = sample_case(ac, grid=kind, H=6, W=9, Ho=6, Wo=9)
            grid = mechanism.make_grid(case)
            for axis, size in ((0, 9), (1, 6)):
                i = mechanism.unnormalize(grid[..., axis], size, ac)
                assert float((i - i.round()).abs().min()) >= mechanism.NUDGE * (1 - 1e-9), (ac, kind, axis)


# -- mutations (specs/stn.md §6) through the command line --------------------------------

TINY_STN = """
    name = "tiny_stn"
    mechanisms = ["stn.bilinear_sample"]
    [checks]
    timing = false
    memory = false
    [profiles.quick]
    dtypes = ["float64"]
    [[profiles.quick.cases]]
    B = 2
    C = 3
    H = 4
    W = 5
    Ho = 3
    Wo = 6
    align_corners = false
    [[profiles.quick.cases]]
    B = 2
    C = 2
    H = 7
    W = 3
    Ho = 5
    Wo = 5
    align_corners = true
"""


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    ("file", "name", "caught_by"),
    [
        ("stn_align_corners_flipped.py", "align_corners_flipped", "forward"),
        ("stn_xy_swapped.py", "xy_swapped", "forward"),
        ("stn_border_padding.py", "border_padding", "forward"),
        ("stn_grid_detached.py", "grid_detached", "backward:grid"),
    ],
)
def test_wrong_sampler_is_caught(
    run_mutation: Callable[[str, str, str], MutationRun], file: str, name: str, caught_by: str
) -> None:
    run = run_mutation(TINY_STN, file, name)
    assert run.code == 1
    failed = run.failed
    assert caught_by in failed, failed
    assert run.vectorized_clean
