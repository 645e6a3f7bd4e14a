"""Multi-head attention (specs/mhsa.md): fully masked rows, the fused ext, mutations.

Every impl is also checked against the float64 naive reference on the suites'
quick cases by tests/test_impls.py; this file covers what is specific to mhsa.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from attnbench import build
from attnbench.cases import Case
from attnbench.registry import REGISTRY
from impls.mhsa import ext, mechanism, peers
from impls.mhsa.naive import attention_naive
from impls.mhsa.vectorized import attention_vectorized

from .conftest import EXAMPLES, MutationRun

REGISTRY.discover()
BUILTIN = [i.name for i in REGISTRY.impls_for("mhsa") if i.builtin]


def _ext_or_skip() -> None:
    reason = build.unavailable_reason("mhsa")
    if reason:
        pytest.skip(f"mhsa extension unavailable: {reason}")


def _inputs(
    B: int, h: int, L: int, S: int, d: int, dv: int, dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    std = d**-0.25
    q = torch.randn(B, h, L, d, generator=gen, dtype=torch.float64) * std
    k = torch.randn(B, h, S, d, generator=gen, dtype=torch.float64) * std
    v = torch.randn(B, h, S, dv, generator=gen, dtype=torch.float64)
    return tuple(t.to(dtype).requires_grad_(True) for t in (q, k, v))  # type: ignore[return-value]


def _dead_rows_mask() -> torch.Tensor:
    """[2, 4]: batch 0 pads keys 0 and 2 (with causal, its row 0 has no key); batch 1 pads every key."""
    return torch.tensor([[True, False, True, False], [True, True, True, True]])


# -- fully masked rows: 0 output, exactly 0 gradient, never NaN (every impl) ---------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("impl", BUILTIN)
def test_fully_masked_rows_are_zero_without_nan(impl: str, causal: bool) -> None:
    if impl == "ext":
        _ext_or_skip()
    fn = REGISTRY.impls["mhsa"][impl].fn
    q, k, v = _inputs(2, 2, 6, 4, 3, 3)
    mask = _dead_rows_mask()
    out = fn(q, k, v, mask, causal=causal)
    dead = torch.zeros(2, 6, dtype=torch.bool)
    dead[1] = True
    if causal:
        dead[0, 0] = True  # row 0 sees key 0 only, which is padded
    assert torch.isfinite(out).all()
    assert (out.detach()[dead[:, None, :, None].expand_as(out)] == 0).all()
    gout = torch.zeros_like(out)
    gout[dead[:, None, :, None].expand_as(out)] = 1.0
    grads = torch.autograd.grad(out, (q, k, v), gout, allow_unused=True)
    for name, g in zip("qkv", grads, strict=True):
        if g is not None:
            assert torch.isfinite(g).all(), f"NaN in d{name}"
            assert (g == 0).all(), f"d{name} from fully masked rows is not exactly 0"
    full = torch.autograd.grad(fn(q, k, v, mask, causal=causal), (q, k, v), torch.ones_like(out), allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in full)


def test_masked_fill_mutation_is_not_nan_free() -> None:
    """Mutation 10's premise (torch.where after A·V leaks NaN into dv) holds in this torch."""
    q, k, v = _inputs(2, 1, 3, 4, 2, 2)
    mask = _dead_rows_mask()
    logits = (q @ k.transpose(-2, -1)).masked_fill(mask[:, None, None, :], float("-inf"))
    out = torch.softmax(logits, -1) @ v
    out = torch.where(~mask.all(-1)[:, None, None, None], out, torch.zeros(()))
    (dv,) = torch.autograd.grad(out.sum(), (v,))
    assert torch.isnan(dv).any()


def test_peer_probe_records_behaviour() -> None:
    for call in ("sdpa", "nn_mha"):
        b = peers.probe(call, "cpu", torch.float64)
        assert b.output in ("0", "NaN", "uniform average", "other")
        assert b.gradient in ("0", "NaN", "non-zero")


def test_causal_is_upper_left() -> None:
    """L=2, S=5: row 0 sees key 0 only (specs/mhsa.md §2, checked against SDPA's is_causal)."""
    q, k, v = _inputs(1, 1, 2, 5, 3, 2)
    out = attention_naive(q, k, v, causal=True)
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0], rtol=0, atol=1e-15)
    torch.testing.assert_close(attention_vectorized(q, k, v, causal=True), out, rtol=1e-12, atol=1e-12)


def test_flops_formula() -> None:
    case = Case("mhsa", "attention", {"B": 2, "h": 3, "L": 5, "S": 7, "d": 4, "dv": 6})
    entries = 2 * 3 * 5 * 7
    assert mechanism.flops(case) == 2.0 * entries * (4 + 6) + 4.0 * entries


# -- the fused ext: gradcheck, opcheck, validation ------------------------------------


@pytest.mark.parametrize(
    ("mask", "causal"),
    [(None, False), (None, True), ("padding", False), ("dead", True), ("dead", False)],
)
def test_ext_gradcheck(mask: str | None, causal: bool) -> None:
    _ext_or_skip()
    q, k, v = _inputs(2, 2, 6, 4, 3, 2)
    kpm = None
    if mask == "padding":
        kpm = torch.tensor([[False, True, False, False], [False, False, False, True]])
    elif mask == "dead":
        kpm = _dead_rows_mask()
    assert torch.autograd.gradcheck(
        lambda a, b, c: ext.attention_ext(a, b, c, kpm, causal=causal), (q, k, v), nondet_tol=1e-12
    )


def test_ext_fully_masked_rows_lse_and_exact_zero_gradient() -> None:
    _ext_or_skip()
    o = ext.ops()
    q, k, v = _inputs(2, 2, 6, 4, 3, 2)
    out, lse = o.flash_forward(q, k, v, _dead_rows_mask(), True, 0.5)
    assert (out[1] == 0).all() and (out[0, :, 0] == 0).all()
    assert (lse[1] == -math.inf).all() and (lse[0, :, 0] == -math.inf).all()
    assert torch.isfinite(lse[0, :, 1:]).all()
    gout = torch.zeros_like(out)
    gout[1] = 1.0
    gout[0, :, 0] = 1.0
    dq, dk, dv = o.flash_backward(gout, q, k, v, _dead_rows_mask(), out, lse, True, 0.5)
    for g in (dq, dk, dv):
        assert (g == 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ext_opcheck(dtype: torch.dtype) -> None:
    _ext_or_skip()
    case = Case("mhsa", "attention", {"B": 2})
    samples = ext.opcheck_samples(case, dtype, "cpu")
    assert {str(op) for op, _, _ in samples} == {
        "attnbench_mhsa.flash_forward.default",
        "attnbench_mhsa.flash_backward.default",
    }
    for op, args, kwargs in samples:
        torch.library.opcheck(op, args, kwargs)


def test_ext_matches_vectorized_on_an_image_sized_case() -> None:
    """A 16×16 feature map with several key tiles, padding and causal, float32."""
    _ext_or_skip()
    q, k, v = _inputs(1, 2, 256, 200, 16, 8, dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    mask = torch.rand(1, 200, generator=gen) < 0.3
    for causal in (False, True):
        got = ext.attention_ext(q, k, v, mask, causal=causal)
        want = attention_vectorized(q, k, v, mask, causal=causal)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(got)
        for a, b in zip(torch.autograd.grad(got, (q, k, v), g), torch.autograd.grad(want, (q, k, v), g), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _tile_mask(B: int, S: int, kind: str, seed: int) -> torch.Tensor | None:
    """Padding masks that stress the packed key tiles: random, a padded tail, whole tiles padded."""
    if kind == "none":
        return None
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, S, generator=gen) < 0.3
    if kind == "tail":
        mask[:, S // 2 :] = True  # the last keys (and, for S > 128, whole key tiles) padded
    elif kind == "head":
        mask[:, : min(S - 1, 70)] = True  # causal: the first rows see nothing
    elif kind == "dead":
        mask[-1] = True  # one batch element with no key at all
    return mask


# L, S, d, dv: not multiples of the tiles (32/64 rows, 64 keys) nor of the vector
# width (8 floats / 4 doubles); L = 1; L != S both ways; d != dv.
_TILE_SHAPES = [(1, 1, 3, 5), (1, 130, 7, 9), (70, 131, 33, 17), (129, 65, 8, 16), (64, 64, 32, 32), (33, 200, 1, 3)]


@pytest.mark.parametrize("shape", _TILE_SHAPES, ids=lambda s: "L{}_S{}_d{}_dv{}".format(*s))
@pytest.mark.parametrize("mask_kind", ["none", "random", "tail", "head", "dead"])
@pytest.mark.parametrize("causal", [False, True])
def test_ext_tiles_match_reference(shape: tuple[int, int, int, int], mask_kind: str, causal: bool) -> None:
    """Forward and all gradients of the tiled CPU kernels against the float64 vectorized impl, both dtypes."""
    _ext_or_skip()
    L, S, d, dv = shape
    B, h = 2, 2
    mask = _tile_mask(B, S, mask_kind, seed=L * 1000 + S)
    q, k, v = _inputs(B, h, L, S, d, dv, seed=d + dv)
    want = attention_vectorized(q, k, v, mask, causal=causal, scale=0.9 * d**-0.5)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    want_grads = torch.autograd.grad(want, (q, k, v), g)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        q2, k2, v2 = (t.detach().to(dtype).requires_grad_(True) for t in (q, k, v))
        got = ext.attention_ext(q2, k2, v2, mask, causal=causal, scale=0.9 * d**-0.5)
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
        grads = torch.autograd.grad(got, (q2, k2, v2), g.to(dtype))
        for name, a, b in zip("qkv", grads, want_grads, strict=True):
            torch.testing.assert_close(a.double(), b, rtol=tol, atol=4 * tol, msg=lambda m, n=name: f"d{n}: {m}")
        if mask is not None:  # padded keys get exactly 0
            padded = mask[:, None, :, None]
            assert (grads[1][padded.expand_as(grads[1])] == 0).all()
            assert (grads[2][padded.expand_as(grads[2])] == 0).all()


def test_ext_is_deterministic_across_threads() -> None:
    """Forward and backward give bitwise the same result on 1 and 2 threads and on repeated calls."""
    _ext_or_skip()
    q, k, v = _inputs(2, 3, 100, 150, 16, 24, dtype=torch.float32)
    mask = _tile_mask(2, 150, "random", seed=1)
    g = torch.randn(2, 3, 100, 24, generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            out = ext.attention_ext(q, k, v, mask, causal=True)
            results.append((out, *torch.autograd.grad(out, (q, k, v), g)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_ext_scale_zero_is_mean_of_allowed_values() -> None:
    _ext_or_skip()
    q, k, v = (t.detach() for t in _inputs(1, 1, 5, 70, 3, 4, dtype=torch.float32))
    mask = torch.zeros(1, 70, dtype=torch.bool)
    mask[0, 10:] = True
    out = ext.attention_ext(q, k, v, mask, causal=False, scale=0.0)
    torch.testing.assert_close(out, v[:, :, :10].mean(-2, keepdim=True).expand_as(out), rtol=1e-6, atol=1e-6)


def test_ext_rejects_bad_inputs_with_clear_messages() -> None:
    _ext_or_skip()
    o = ext.ops()
    q, k, v = (t.detach() for t in _inputs(2, 1, 3, 4, 2, 2))
    with pytest.raises(RuntimeError, match="flash_forward: mask must be bool"):
        o.flash_forward(q, k, v, torch.zeros(2, 4), False, 1.0)
    with pytest.raises(RuntimeError, match=r"flash_forward: v must have shape \[B, h, S, dv\]"):
        o.flash_forward(q, k, v[:, :, :3], None, False, 1.0)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        o.flash_forward(q.half(), k.half(), v.half(), None, False, 1.0)


def test_ext_outputs_are_fresh_on_each_call() -> None:
    _ext_or_skip()
    q, k, v = (t.detach() for t in _inputs(2, 2, 5, 7, 4, 3))
    first = ext.attention_ext(q, k, v, None, causal=True)
    second = ext.attention_ext(q, k, v, None, causal=True)
    assert torch.equal(first, second)


# -- mutations caught through the CLI --------------------------------------------------

TINY_MHSA = """
    name = "tiny_mhsa"
    mechanisms = ["mhsa"]
    [checks]
    timing = false
    memory = false
    [profiles.quick]
    dtypes = ["float64", "float32"]
    [[profiles.quick.cases]]
    B = 2
    h = 2
    L = 5
    S = 7
    d = 4
    dv = 3
    mask = "padding"
    causal = true
    [[profiles.quick.cases]]
    B = 1
    h = 2
    L = 7
    S = 3
    d = 4
    dv = 5
    causal = true
    [[profiles.quick.cases]]
    B = 2
    h = 2
    L = 4
    S = 6
    d = 4
    dv = 4
    mask = "full_row"
    [[profiles.quick.gradcheck]]
    B = 2
    h = 1
    L = 3
    S = 4
    d = 2
    dv = 2
    mask = "full_row"
    [[profiles.quick.modules]]
    module = "encoder"
    B = 2
    d_model = 8
    h = 2
    H = 2
    W = 3
    d_ff = 12
"""


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    ("file", "name", "caught_by"),
    [
        ("mhsa_inverted_mask.py", "inverted_mask", "forward"),
        ("mhsa_no_scale.py", "no_scale", "forward"),
        ("mhsa_causal_lower_right.py", "causal_lower_right", "forward"),
        ("mhsa_softmax_over_queries.py", "softmax_over_queries", "forward"),
        ("mhsa_pos_in_value.py", "pos_in_value", "module:encoder:forward"),
        ("mhsa_where_after_av.py", "where_after_av", "backward:v"),
    ],
)
def test_wrong_mhsa_is_caught(
    run_mutation: Callable[[str, str, str], MutationRun], file: str, name: str, caught_by: str
) -> None:
    run = run_mutation(TINY_MHSA, file, name)
    assert run.code == 1
    failed = run.failed
    assert caught_by in failed, failed
    assert run.vectorized_clean


def test_lower_right_causal_passes_when_square(
    run_cli: Callable[..., int], write_suite: Callable[..., Path], tmp_path: Path
) -> None:
    """The alignment only matters for L != S: on square cases the mutation is invisible (why the grid has L != S)."""
    suite = write_suite(
        'mechanisms = ["mhsa"]\n[checks]\ntiming = false\nmemory = false\ngradcheck = false\n'
        "[profiles.quick]\n[[profiles.quick.cases]]\nB = 2\nh = 1\nL = 5\nS = 5\nd = 3\ndv = 2\ncausal = true\n"
    )
    out = tmp_path / "out"
    code = run_cli(
        "run",
        suite,
        "--impl",
        EXAMPLES / "wrong" / "mhsa_causal_lower_right.py",
        "--only",
        "causal_lower_right",
        "--out",
        out,
        "--quiet",
    )
    assert code == 0
