"""The CCNet compiled extension: op registration, gradients, fused path, input checks, build.

Equivalence with the naive reference on the suite's cases is tested for every
impl (``ext`` included) by tests/test_impls.py; this file tests what is
specific to the extension. Build-dependent tests skip with the compiler's
message where the extension cannot be built.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from attnbench import build
from attnbench.cases import Case
from impls.ccnet import ext
from impls.ccnet.vectorized import cca_vectorized

ROOT = Path(__file__).resolve().parent.parent
REASON = build.unavailable_reason("ccnet")
needs_ext = pytest.mark.skipif(REASON is not None, reason=f"ccnet extension unavailable: {REASON}")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available here")

GRADCHECK_SHAPES = [(2, 2, 3, 3, 4), (1, 3, 2, 4, 2)]  # (B, Cq, C, H, W), specs/ccnet.md §3
SHAPES = [*GRADCHECK_SHAPES, (2, 3, 4, 4, 5), (1, 2, 3, 1, 6), (2, 2, 3, 5, 1), (1, 1, 1, 1, 1), (2, 5, 7, 18, 19)]


def case_of(shape: tuple[int, ...]) -> Case:
    B, Cq, C, H, W = shape
    return Case("ccnet", "cca", {"B": B, "Cq": Cq, "C": C, "H": H, "W": W})


def inputs(shape: tuple[int, ...], dtype: torch.dtype = torch.float64, device: str = "cpu") -> list[torch.Tensor]:
    from impls.ccnet.mechanism import make_inputs

    tensors = make_inputs(case_of(shape)).to(dtype, device).tensors
    return [tensors[n].detach() for n in ("q", "k", "v")]


def shape_id(shape: tuple[int, ...]) -> str:
    return "B={},Cq={},C={},H={},W={}".format(*shape)


# -- opcheck ---------------------------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("shape", GRADCHECK_SHAPES, ids=shape_id)
def test_opcheck_every_op(shape: tuple[int, ...]) -> None:
    samples = ext.opcheck_samples(case_of(shape), torch.float64, "cpu")
    assert {op.__name__.split(".")[0] for op, _, _ in samples} == set(ext.OPS)
    assert any(not t.is_contiguous() for _, args, _ in samples for t in args), "no non-contiguous sample"
    for op, args, kwargs in samples:
        torch.library.opcheck(op, args, kwargs)


@needs_ext
@pytest.mark.parametrize("op_name", ext.OPS)
def test_opcheck_contiguous_and_noncontiguous(op_name: str) -> None:
    samples = ext.opcheck_samples(case_of((2, 3, 4, 4, 5)), torch.float32, "cpu")
    ((op, args, kwargs),) = [s for s in samples if s[0].__name__ == f"{op_name}.default"]
    for layout in (torch.Tensor.contiguous, ext.noncontiguous):
        moved = tuple(layout(a.detach()).requires_grad_(a.requires_grad) for a in args)
        assert all(m.is_contiguous() == (layout is torch.Tensor.contiguous) for m in moved)
        torch.library.opcheck(op, moved, kwargs)


# -- gradcheck -------------------------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("shape", GRADCHECK_SHAPES, ids=shape_id)
def test_gradcheck_cca(shape: tuple[int, ...]) -> None:
    q, k, v = (t.requires_grad_() for t in inputs(shape))
    assert torch.autograd.gradcheck(ext.cca_ext, (q, k, v), nondet_tol=1e-12)


@needs_ext
@pytest.mark.parametrize("shape", GRADCHECK_SHAPES, ids=shape_id)
def test_gradcheck_each_op(shape: tuple[int, ...]) -> None:
    ops = ext.ops()
    q, k, v = inputs(shape)
    with torch.no_grad():
        attn = torch.softmax(ops.ca_weight(q, k), dim=1)
    assert torch.autograd.gradcheck(ops.ca_weight, (q.clone().requires_grad_(), k.clone().requires_grad_()))
    assert torch.autograd.gradcheck(ops.ca_map, (attn.clone().requires_grad_(), v.clone().requires_grad_()))
    energy = ops.ca_weight(q, k)
    assert torch.autograd.gradcheck(ops.ca_softmax, (energy.clone().requires_grad_(),))


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_softmax_op_equals_torch_softmax(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    ops = ext.ops()
    q, k, _ = inputs(shape, dtype)
    energy = (3.0 * ops.ca_weight(q, k)).requires_grad_()  # wide range: tests the max subtraction
    grad = torch.randn(energy.shape, dtype=dtype, generator=torch.Generator().manual_seed(3))
    got = ops.ca_softmax(energy)
    want = torch.softmax(energy, dim=1)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, energy, grad)[0], torch.autograd.grad(want, energy, grad)[0])


@needs_ext
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_backward_ops_match_autograd_of_vectorized(shape: tuple[int, ...]) -> None:
    """ca_weight_backward/ca_map_backward, composed with softmax, equal autograd of the vectorized impl."""
    q, k, v = (t.requires_grad_() for t in inputs(shape))
    gout = torch.randn(v.shape, dtype=v.dtype, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(ext.cca_ext(q, k, v), (q, k, v), gout)
    want = torch.autograd.grad(cca_vectorized(q, k, v), (q, k, v), gout)
    for g, w, name in zip(got, want, "qkv", strict=True):
        torch.testing.assert_close(g, w, msg=lambda m, n=name: f"grad {n}: {m}")


# -- fused path, buffers -----------------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_fused_equals_two_op_path(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    ops = ext.ops()
    q, k, v = inputs(shape, dtype)
    two_op = ops.ca_map(torch.softmax(ops.ca_weight(q, k), dim=1), v)
    fused = ops.cca_fused(q, k, v)
    assert fused.is_contiguous() and fused.shape == v.shape
    torch.testing.assert_close(fused, two_op)
    with torch.no_grad():  # the impl takes the fused path without gradients
        torch.testing.assert_close(ext.cca_ext(q, k, v), two_op)


@needs_ext
@pytest.mark.parametrize("shape", [(2, 3, 4, 4, 5), (2, 5, 7, 18, 19)], ids=shape_id)
def test_calling_twice_and_nan_filled_memory_cannot_leak(shape: tuple[int, ...]) -> None:
    """Spec mutation 7: an output allocated with empty and accumulated with += would show old memory."""
    ops = ext.ops()
    q, k, v = inputs(shape, torch.float32)
    energy = ops.ca_weight(q, k)
    attn = torch.softmax(energy, dim=1)
    gout = torch.randn_like(v)
    first = [
        energy,
        ops.ca_map(attn, v),
        ops.cca_fused(q, k, v),
        *ops.ca_weight_backward(energy, q, k),
        *ops.ca_map_backward(gout, attn, v),
        ops.ca_softmax(energy),
        ops.ca_softmax_backward(energy, attn),
    ]
    for _ in range(3):
        # freed NaN buffers of every output size: the allocator hands them back to the next op
        junk = [torch.full_like(t, float("nan")) for t in first for _ in range(2)]
        del junk
        again = [
            ops.ca_weight(q, k),
            ops.ca_map(attn, v),
            ops.cca_fused(q, k, v),
            *ops.ca_weight_backward(energy, q, k),
            *ops.ca_map_backward(gout, attn, v),
            ops.ca_softmax(energy),
            ops.ca_softmax_backward(energy, attn),
        ]
        for a, b in zip(first, again, strict=True):
            assert torch.isfinite(b).all()
            assert torch.equal(a, b), "a second call differs: outputs depend on uninitialised memory"


@needs_ext
def test_noncontiguous_inputs_are_not_misread() -> None:
    ops = ext.ops()
    q, k, v = inputs((2, 3, 4, 4, 5), torch.float32)
    views = [ext.noncontiguous(t) for t in (q, k, v)]
    channels_last = [t.to(memory_format=torch.channels_last) for t in (q, k, v)]
    want = ops.cca_fused(q, k, v)
    torch.testing.assert_close(ops.cca_fused(*views), want, rtol=0, atol=0)
    torch.testing.assert_close(ops.cca_fused(*channels_last), want, rtol=0, atol=0)
    torch.testing.assert_close(ops.ca_weight(views[0], views[1]), ops.ca_weight(q, k), rtol=0, atol=0)


# -- input checks ----------------------------------------------------------------------


@needs_ext
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda o, q, k, v: o.ca_weight(q, k[:, :2]), r"attnbench_ccnet::ca_weight: k must be \[B, Cq, H, W\]"),
        (lambda o, q, k, v: o.ca_weight(q, k.double()), r"attnbench_ccnet::ca_weight: k must have dtype Float"),
        (lambda o, q, k, v: o.ca_weight(q[0], k), r"attnbench_ccnet::ca_weight: q must be 4-D"),
        (lambda o, q, k, v: o.ca_weight(q.half(), k.half()), r"attnbench_ccnet::ca_weight: CPU kernels support"),
        (lambda o, q, k, v: o.ca_map(q, v), r"attnbench_ccnet::ca_map: attn must be \[B, H\+W-1, H, W\]"),
        (
            lambda o, q, k, v: o.ca_map_backward(q, o.ca_weight(q, k), v),
            r"attnbench_ccnet::ca_map_backward: grad_out must be \[B, C, H, W\]",
        ),
        (
            lambda o, q, k, v: o.ca_weight_backward(v, q, k),
            r"attnbench_ccnet::ca_weight_backward: grad_energy must be \[B, H\+W-1, H, W\]",
        ),
        (lambda o, q, k, v: o.cca_fused(q, k, v[:, :, :2]), r"attnbench_ccnet::cca_fused: v must be"),
        (lambda o, q, k, v: o.cca_fused(q, k, v.double()), r"attnbench_ccnet::cca_fused: v must have dtype Float"),
        (lambda o, q, k, v: o.ca_softmax(v), r"attnbench_ccnet::ca_softmax: energy must be \[B, H\+W-1, H, W\]"),
    ],
    ids=[
        "k-shape",
        "k-dtype",
        "q-dim",
        "cpu-half",
        "attn-shape",
        "grad_out",
        "grad_energy",
        "v-shape",
        "v-dtype",
        "softmax-shape",
    ],
)
def test_errors_name_op_and_argument(call: Callable[..., object], message: str) -> None:
    q, k, v = inputs((2, 3, 4, 4, 5), torch.float32)
    with pytest.raises(RuntimeError, match=message):
        call(ext.ops(), q, k, v)


def test_supports_declares_cpu_dtypes() -> None:
    case = case_of((2, 3, 4, 4, 5))
    assert ext.supports(case, "float32", "cpu") is None
    assert "float32/float64 only" in str(ext.supports(case, "float16", "cpu"))


# -- build -----------------------------------------------------------------------------

TINY_SUITE = """
    name = "tiny_ext"
    mechanisms = ["ccnet"]
    [checks]
    timing = false
    memory = false
    [profiles.quick]
    dtypes = ["float32"]
    [[profiles.quick.cases]]
    B = 2
    Cq = 3
    C = 4
    H = 4
    W = 5
    [[profiles.quick.gradcheck]]
    B = 1
    Cq = 2
    C = 2
    H = 3
    W = 2
"""


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "attnbench.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, check=False
    )


def test_missing_compiler_turns_ext_rows_into_skips(tmp_path: Path) -> None:
    """No compiler: the run finishes and every ext row is a skip naming the compiler problem."""
    suite = tmp_path / "tiny_ext"
    suite.mkdir()
    (suite / "suite.toml").write_text(textwrap.dedent(TINY_SUITE))
    env = {**os.environ, "CXX": "/nonexistent/c++", "ATTNBENCH_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "out"
    proc = run_cli(["run", str(suite), "--only", "ext,vectorized", "--out", str(out), "--quiet"], env, ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out / "checks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ext_rows = [r for r in rows if r["impl"] == "ext"]
    assert ext_rows and all(r["status"] == "skip" for r in ext_rows), ext_rows
    assert all("/nonexistent/c++" in r["detail"] and "compiler" in r["detail"] for r in ext_rows), ext_rows[0]
    assert any(r["impl"] == "vectorized" and r["status"] == "pass" for r in rows)


def test_failing_compiler_message_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "broken-c++"
    fake.write_text("#!/bin/sh\necho 'broken-c++ 1.0'\necho 'fatal error: this compiler is broken' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("ATTNBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "_loaded", {})
    monkeypatch.setattr(build, "_failed", {})
    reason = build.unavailable_reason("ccnet")
    assert reason is not None and "error" in reason.lower(), reason


CACHED_LOAD = """
import subprocess, sys
import torch.utils.cpp_extension as cpp_extension
calls = []
def forbid(name):
    def call(*args, **kwargs):
        calls.append(name)
        raise AssertionError(f"{name} called on a cached load: {args!r}")
    return call
cpp_extension.load = forbid("cpp_extension.load")
subprocess.Popen = forbid("subprocess.Popen")
from attnbench import build
print(build.load("ccnet"))
"""


@needs_ext
def test_second_process_loads_from_cache_without_compiling() -> None:
    """A rerun costs nothing: the cached library loads without running the compiler, ninja or any process."""
    proc = subprocess.run([sys.executable, "-c", CACHED_LOAD], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == build.load("ccnet")


@needs_ext
def test_openmp_is_compiled_in() -> None:
    """-fopenmp in cflags and ldflags: at::parallel_for's pragma became a GOMP call (else it runs on one thread)."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    lib = build.load("ccnet")
    symbols = subprocess.run([nm, "-D", lib], capture_output=True, text=True, check=True).stdout
    assert "GOMP_parallel" in symbols or "omp_get_num_threads" in symbols, "extension built without OpenMP"
    deps = subprocess.run(["ldd", lib], capture_output=True, text=True, check=False).stdout
    assert "gomp" in deps or "libomp" in deps or "iomp" in deps, deps


OMP_PROBE = """
import os, torch
torch.set_num_threads(2)
from impls.ccnet import ext
ops = ext.ops()
q, k, v = (torch.randn(2, c, 32, 32) for c in (16, 16, 32))
before = len(os.listdir("/proc/self/task"))
ops.cca_fused(q, k, v)
print(before, len(os.listdir("/proc/self/task")))
"""


@needs_ext
def test_parallel_for_runs_on_two_threads() -> None:
    """With 2 threads, the first large call starts an OpenMP worker (a build without -fopenmp would not)."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs /proc to count threads")
    proc = subprocess.run([sys.executable, "-c", OMP_PROBE], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    before, after = map(int, proc.stdout.split())
    assert after > before, f"no worker thread started ({before} -> {after} threads): at::parallel_for ran serially"


def test_build_key_follows_shared_headers_and_ignores_cuda_files_on_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Editing impls/_common/csrc rebuilds its users; a CUDA-only edit leaves a CPU build cached."""
    impls = tmp_path / "impls"
    for folder in ("non_local", "_common"):
        shutil.copytree(ROOT / "impls" / folder / "csrc", impls / folder / "csrc")
    monkeypatch.setattr(build, "IMPLS_DIR", impls)
    monkeypatch.setattr(build, "COMMON_CSRC", impls / "_common" / "csrc")
    cpu, gpu = build.build_key("non_local", cuda=False), build.build_key("non_local", cuda=True)
    with open(impls / "_common" / "csrc" / "softmax_tiles_cuda.cuh", "a") as f:
        f.write("// edited\n")
    assert build.build_key("non_local", cuda=False) == cpu
    assert build.build_key("non_local", cuda=True) != gpu
    with open(impls / "_common" / "csrc" / "softmax_math.h", "a") as f:
        f.write("// edited\n")
    assert build.build_key("non_local", cuda=False) != cpu
    assert str(impls / "_common" / "csrc") in build.include_dirs("non_local")


def test_check_cuda_compiles_the_cu_sources() -> None:
    if build.nvcc_path() is None:
        pytest.skip("nvcc not found: CUDA sources cannot be compiled here")
    assert [p.name for p in build.cuda_sources("ccnet")] == ["ccnet_cuda.cu"]


# -- CUDA ------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [*SHAPES, (1, 8, 16, 33, 17)], ids=shape_id)
def test_cuda_ops_match_cpu(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    assert ext.has_cuda_kernels(), "the extension was built without CUDA kernels"
    q, k, v = (t.requires_grad_() for t in inputs(shape))
    gout = torch.randn(v.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    want_out = cca_vectorized(q, k, v)
    want_grads = torch.autograd.grad(want_out, (q, k, v), gout)
    qc, kc, vc = (t.detach().to("cuda", dtype).requires_grad_() for t in (q, k, v))
    out = ext.cca_ext(qc, kc, vc)
    grads = torch.autograd.grad(out, (qc, kc, vc), gout.to("cuda", dtype))
    with torch.no_grad():
        fused = ext.cca_ext(qc, kc, vc)
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    for got, want in [(out, want_out), (fused, want_out), *zip(grads, want_grads, strict=True)]:
        torch.testing.assert_close(got.double().cpu(), want.detach(), rtol=tol, atol=tol)


@pytest.mark.cuda
@needs_cuda
@needs_ext
@pytest.mark.parametrize("shape", GRADCHECK_SHAPES, ids=shape_id)
def test_cuda_gradcheck_and_opcheck(shape: tuple[int, ...]) -> None:
    q, k, v = (t.to("cuda").requires_grad_() for t in inputs(shape))
    assert torch.autograd.gradcheck(ext.cca_ext, (q, k, v), nondet_tol=1e-12)
    for op, args, kwargs in ext.opcheck_samples(case_of(shape), torch.float64, "cuda"):
        torch.library.opcheck(op, args, kwargs)


@pytest.mark.cuda
@needs_cuda
@needs_ext
def test_cuda_fused_handles_sizes_off_the_block() -> None:
    """Widths 1, 7, 17, 33 and a map too wide for 32-pixel tiles: nothing truncated (specs gotcha 6)."""
    ops = ext.ops()
    for shape in [(1, 2, 3, 7, 1), (2, 3, 5, 17, 7), (1, 4, 6, 33, 33), (1, 2, 3, 700, 3)]:
        q, k, v = inputs(shape, torch.float32, "cuda")
        two_op = ops.ca_map(torch.softmax(ops.ca_weight(q, k), dim=1), v)
        torch.testing.assert_close(ops.cca_fused(q, k, v), two_op)
