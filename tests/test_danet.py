"""DANet PAM and CAM: the ext ops (opcheck, gradcheck, fused == unfused, memory), the cost
models, and wrong implementations caught by ``attnbench run`` (specs/danet.md §6)."""

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
from impls.danet.mechanism import cam_flops, cam_inputs, pam_flops, pam_inputs
from impls.danet.vectorized import cam_vectorized, pam_vectorized

from .conftest import MutationRun

EXT_UNAVAILABLE = build.unavailable_reason("danet")
needs_ext = pytest.mark.skipif(EXT_UNAVAILABLE is not None, reason=f"ext unavailable: {EXT_UNAVAILABLE}")


def pam_case(**shape: int) -> Case:
    params = {"B": 2, "Cq": 3, "C": 5, "H": 6, "W": 3}
    params.update(shape)
    return Case("danet.pam", "pam", params)


def cam_case(sign: str = "code", **shape: int) -> Case:
    params: dict[str, object] = {"B": 2, "C": 7, "H": 3, "W": 6, "sign": sign}
    params.update(shape)
    return Case("danet.cam", "cam", params)


@needs_ext
def test_pam_opcheck() -> None:
    from impls.danet.ext import _pam_opcheck

    for op, args, kwargs in _pam_opcheck(pam_case(), torch.float64, "cpu"):
        torch.library.opcheck(op, args, kwargs)


@needs_ext
@pytest.mark.parametrize("sign", ["code", "paper"])
def test_cam_opcheck(sign: str) -> None:
    from impls.danet.ext import _cam_opcheck

    for op, args, kwargs in _cam_opcheck(cam_case(sign), torch.float64, "cpu"):
        torch.library.opcheck(op, args, kwargs)


@needs_ext
def test_pam_gradcheck_across_key_tiles() -> None:
    from impls.danet.ext import pam_ext_op

    inputs = pam_inputs(pam_case(H=4, W=3)).to(torch.float64, "cpu")
    args = tuple(inputs.tensors.values())
    assert torch.autograd.gradcheck(lambda *t: pam_ext_op(*t, key_block=5), args, nondet_tol=1e-12)


@needs_ext
@pytest.mark.parametrize("sign", ["code", "paper"])
def test_cam_gradcheck(sign: str) -> None:
    from impls.danet.ext import cam_ext

    inputs = cam_inputs(cam_case(sign, H=2, W=5)).to(torch.float64, "cpu")
    assert torch.autograd.gradcheck(lambda x: cam_ext(x, **inputs.kwargs), (inputs.tensors["x"],), nondet_tol=1e-12)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pam_fused_equals_unfused(dtype: torch.dtype) -> None:
    """Key tiles of 1 and 7 (online softmax across tiles) = one tile = the vectorized impl."""
    from impls.danet.ext import pam_ext_op

    inputs = pam_inputs(pam_case(H=5, W=4)).to(dtype, "cpu")
    args = tuple(inputs.tensors.values())
    gout = torch.randn(2, 5, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    results = []
    for fn in (
        lambda *t: pam_ext_op(*t, key_block=1),
        lambda *t: pam_ext_op(*t, key_block=7),
        lambda *t: pam_ext_op(*t, key_block=20),
        pam_vectorized,
    ):
        out = fn(*args)
        results.append((out.detach(), torch.autograd.grad(out, args, gout)))
    for out, grads in results[:-1]:
        torch.testing.assert_close(out, results[-1][0], atol=tol, rtol=tol)
        for g, g_ref in zip(grads, results[-1][1], strict=True):
            torch.testing.assert_close(g, g_ref, atol=tol, rtol=tol)


@needs_ext
def test_ext_rejects_bad_arguments_with_named_messages() -> None:
    from impls.danet.ext import _ops

    ops = _ops()
    with pytest.raises(RuntimeError, match="pam_forward: k must have q's shape"):
        ops.pam_forward(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 5, 4), torch.randn(2, 6, 4, 5), 0)
    with pytest.raises(RuntimeError, match="cam_forward: sign must be"):
        ops.cam_forward(torch.randn(2, 3, 4, 5), "plus")
    with pytest.raises(RuntimeError, match="cam_forward: x must have shape"):
        ops.cam_forward(torch.randn(3, 4, 5), "code")


@needs_ext
def test_pam_inference_memory_is_linear() -> None:
    from impls.danet.ext import pam_ext

    inputs = pam_inputs(pam_case(B=1, Cq=4, C=8, H=32, W=32)).to(torch.float32, "cpu")
    args = [t.detach() for t in inputs.tensors.values()]
    with torch.no_grad():
        ext_peak = peak_cpu(lambda: pam_ext(*args))
        vec_peak = peak_cpu(lambda: pam_vectorized(*args))
    assert vec_peak >= 2 * 1024 * 1024 * 4
    assert ext_peak * 4 < vec_peak, (ext_peak, vec_peak)


def test_pam_flops_match_flop_counter() -> None:
    c = pam_case(B=2, Cq=3, C=5, H=6, W=7)
    with FlopCounterMode(display=False) as counter:
        pam_inputs(c).call(pam_vectorized)
    assert counter.get_total_flops() == pam_flops(c) - 4 * 2 * 42 * 42


@pytest.mark.parametrize("sign", ["code", "paper"])
def test_cam_flops_match_flop_counter(sign: str) -> None:
    c = cam_case(sign, B=2, C=7, H=3, W=6)
    with FlopCounterMode(display=False) as counter:
        cam_inputs(c).call(cam_vectorized)
    assert counter.get_total_flops() == cam_flops(c) - 4 * 2 * 7 * 7


TINY_DANET = """
    name = "tiny_danet"
    mechanisms = ["danet.pam", "danet.cam"]
    [checks]
    timing = false
    memory = false
    gradcheck = false
    opcheck = false
    [profiles.quick]
    dtypes = ["float64"]
    [[profiles.quick.cases]]
    mechanism = "danet.pam"
    B = 2
    Cq = 2
    C = 3
    H = 4
    W = 5
    [[profiles.quick.cases]]
    mechanism = "danet.cam"
    B = 2
    C = 7
    H = 3
    W = 6
    [[profiles.quick.modules]]
    mechanism = "danet.pam"
    module = "dual_head"
    B = 2
    C = 8
    H = 4
    W = 3
"""


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    ("file", "name", "caught_by"),
    [
        ("danet_pam_softmax_over_queries.py", "pam_softmax_over_queries", {"forward", "property:rows_sum_to_one"}),
        ("danet_cam_attention_transposed.py", "cam_transposed", {"forward"}),
        ("danet_cam_sign_flipped.py", "cam_sign_flipped", {"forward", "property:rowmax_shift"}),
        ("danet_cam_softmax_dim1.py", "cam_softmax_dim1", {"forward", "property:rowmax_shift"}),
        ("danet_missing_gamma.py", "missing_gamma", {"module:dual_head:forward"}),
    ],
)
def test_wrong_danet_is_caught(
    run_mutation: Callable[[str, str, str], MutationRun], file: str, name: str, caught_by: set[str]
) -> None:
    run = run_mutation(TINY_DANET, file, name)
    assert run.code == 1
    failed = run.failed
    assert caught_by <= failed, failed
    assert run.vectorized_clean


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "shape",
    [
        {"B": 2, "Cq": 4, "C": 6, "H": 13, "W": 11},  # 143 positions: query tiles of 128, one partial
        {"B": 1, "Cq": 64, "C": 200, "H": 17, "W": 16},  # 272 positions: query tiles of 256, one partial
        {"B": 2, "Cq": 1, "C": 1, "H": 1, "W": 1},
        {"B": 1, "Cq": 2, "C": 3, "H": 2, "W": 1},
    ],
    ids=["odd-tiles", "wide-channels", "1x1", "tiny"],
)
@pytest.mark.parametrize("key_block", [9, 256])
def test_pam_ext_equals_float64_reference_on_tile_edges(
    dtype: torch.dtype, shape: dict[str, int], key_block: int
) -> None:
    """The CPU fast path (BLAS tiles, vector softmax, flash backward) forward and all grads."""
    from impls.danet.ext import pam_ext_op

    inputs = pam_inputs(pam_case(**shape)).to(torch.float64, "cpu")
    ref_args = tuple(t.detach().requires_grad_() for t in inputs.tensors.values())
    args = tuple(t.detach().to(dtype).requires_grad_() for t in ref_args)
    ref = pam_vectorized(*ref_args)
    gout = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref_grads = torch.autograd.grad(ref, ref_args, gout)
    out = pam_ext_op(*args, key_block=key_block)
    grads = torch.autograd.grad(out, args, gout.to(dtype))
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), g_ref, atol=tol, rtol=tol)
