"""JIT build and cache of the compiled extensions in ``impls/<mech>/csrc/``.

Each mechanism's ``csrc/`` holds ``<mech>.h`` (math written once, host/device),
``<mech>.cpp`` (CPU kernels and the ``TORCH_LIBRARY`` schema) and
``<mech>_cuda.cu`` (CUDA kernels). :func:`load` compiles them with
``torch.utils.cpp_extension`` into a folder named by a hash of the sources,
flags, compiler, torch and Python versions, so a rerun loads the cached
library without invoking the compiler. A failing or missing compiler raises
:class:`BuildError` with the compiler's message; the ext impls turn that into
``skip`` rows (see :func:`unavailable_reason`).

``attnbench build --check-cuda`` compiles every ``.cu`` with ``nvcc -c`` (no GPU
needed) so CUDA code never rots on CPU-only CI.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from attnbench.errors import UsageError
from attnbench.measure.env import usable_cores

IMPLS_DIR = Path(__file__).resolve().parent.parent / "impls"
# Headers shared by several mechanisms (softmax tiles, the CUDA stream/guard shim):
# on every include path and hashed into every build key.
COMMON_CSRC = IMPLS_DIR / "_common" / "csrc"
# No -std here: torch's cpp_extension passes the standard its headers need (c++17 or
# c++20); a later -std=c++17 would silently override it.
CFLAGS = ["-O3", "-fopenmp", "-march=native", "-ffp-contract=fast"]
LDFLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]
CUDA_ARCHS = ("75", "80", "86", "90")


class BuildError(RuntimeError):
    """The extension could not be compiled or loaded; the message says why."""


_lock = threading.Lock()
_loaded: dict[str, str] = {}
_failed: dict[str, str] = {}


def cache_root() -> Path:
    """``$ATTNBENCH_CACHE`` or ``~/.cache/attnbench`` (a clean clone rebuilds once)."""
    env = os.environ.get("ATTNBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "attnbench"


def sources(mech: str) -> tuple[list[Path], list[Path], list[Path], list[Path]]:
    """(cpp sources, cuda sources, C++ headers, CUDA headers) of ``impls/<mech>/csrc`` and the shared folder."""
    csrc = IMPLS_DIR / mech / "csrc"
    if not csrc.is_dir():
        raise BuildError(f"{mech}: no csrc folder at {csrc}")
    folders = (csrc, COMMON_CSRC)
    headers = [p for f in folders for p in sorted(f.glob("*.h"))]
    cuda_headers = [p for f in folders for p in sorted(f.glob("*.cuh"))]
    return sorted(csrc.glob("*.cpp")), sorted(csrc.glob("*.cu")), headers, cuda_headers


def include_dirs(mech: str) -> list[str]:
    return [str(IMPLS_DIR / mech / "csrc"), str(COMMON_CSRC)]


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def _compiler_version(cmd: str) -> str:
    """The compiler's identity for the cache key: resolved path, size and mtime.

    Read from the file system, not by running ``--version``, so that loading a cached
    build starts no process at all.
    """
    exe = shutil.which(cmd)
    if exe is None:
        raise BuildError(f"no C++ compiler: {cmd!r} is not on PATH (set CXX or install g++)")
    real = Path(exe).resolve()
    try:
        st = real.stat()
    except OSError as exc:
        raise BuildError(f"C++ compiler {exe} cannot be read: {exc}") from exc
    return f"{real}:{st.st_size}:{st.st_mtime_ns}"


def want_cuda() -> bool:
    """Build the CUDA sources too: only where this torch can run them."""
    return torch.cuda.is_available() and torch.version.cuda is not None and os.environ.get("ATTNBENCH_NO_CUDA") != "1"


def nvcc_path() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _cuda_home() -> str | None:
    """The toolkit root of nvcc (``nvcc`` may be a wrapper or link outside it, e.g. /usr/local/bin)."""
    nvcc = nvcc_path()
    if not nvcc:
        return None
    for candidate in (Path(nvcc).resolve().parent.parent, Path(nvcc).parent.parent, Path("/usr/local/cuda")):
        if (candidate / "include" / "cuda_runtime.h").exists():
            return str(candidate)
    return str(Path(nvcc).resolve().parent.parent)


def build_key(mech: str, cuda: bool) -> str:
    cpp, cu, headers, cuda_headers = sources(mech)
    h = hashlib.sha256()
    # a CPU-only build does not read the CUDA files: editing them must not rebuild it
    for p in cpp + headers + (cu + cuda_headers if cuda else []):
        h.update(str(p.relative_to(IMPLS_DIR)).encode())
        h.update(p.read_bytes())
    from attnbench.measure.env import cpu_model

    for part in (
        CFLAGS,
        LDFLAGS,
        NVCC_FLAGS if cuda else [],
        [torch.__version__, sys.version, cpu_model(), _compiler_version(_compiler()), str(cuda)],
    ):
        h.update(repr(part).encode())
    return h.hexdigest()[:16]


def load(mech: str, verbose: bool = False) -> str:
    """Builds (or finds in the cache) and loads ``impls/<mech>/csrc``; returns the library path.

    Raises:
        BuildError: no compiler, a compile error (with its output) or a load failure.
    """
    with _lock:
        if mech in _loaded:
            return _loaded[mech]
        if mech in _failed:
            raise BuildError(_failed[mech])
        try:
            path = _build(mech, verbose)
        except BuildError as exc:
            _failed[mech] = str(exc)
            raise
        except Exception as exc:  # cpp_extension raises RuntimeError/CalledProcessError/OSError
            _failed[mech] = _compiler_message(exc)
            raise BuildError(_failed[mech]) from exc
        _loaded[mech] = path
        return path


# op (an OpOverload) -> its (setup_context, backward), as given to register_autograd
_autograd_rules: dict[Any, tuple[Any, Any]] = {}


def register_autograd(op: Any, backward: Any, setup_context: Any) -> None:
    """``torch.library.register_autograd`` for ``op`` (an OpOverload such as
    ``torch.ops.ns.name.default``), and the same rule for :func:`call_op`'s fast path.

    The op's first output is its differentiable result; further outputs are statistics
    for the backward, whose gradients the rule must accept as ``None``."""
    torch.library.register_autograd(op, backward, setup_context=setup_context)
    _autograd_rules[op] = (setup_context, backward)


class _OpFunction(torch.autograd.Function):
    """Runs an op below the Autograd key and its registered rule as a plain autograd.Function."""

    @staticmethod
    def forward(ctx: Any, op: Any, *args: Any) -> Any:
        setup_context, _ = _autograd_rules[op]
        with torch._C._AutoDispatchBelowAutograd():
            output = op(*args)
        setup_context(ctx, args, output)
        ctx.attnbench_op = op
        first = output[0] if isinstance(output, tuple) else output
        ctx.attnbench_first = (first.shape, first.dtype, first.device)
        ctx.set_materialize_grads(False)  # no zero tensors for the statistics outputs (scores: B·N·M)
        return output

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        _, backward = _autograd_rules[ctx.attnbench_op]
        if grads[0] is None:  # the result's gradient is undefined (gradcheck tries it): zeros
            shape, dtype, device = ctx.attnbench_first
            grads = (torch.zeros(shape, dtype=dtype, device=device), *grads[1:])
        return (None, *backward(ctx, *grads))


def call_op(op: Any, *args: Any) -> Any:
    """Calls a ``torch.library`` op whose autograd rule is registered from Python.

    The dispatcher's way to such a rule costs per call: under ``no_grad`` the rule
    only redispatches (~15 µs), with autograd ``torch.library``'s wrapper adds
    argument handling around it (~150 µs on this VM for a residual-attention op on
    25k elements, where the whole fwd+bwd of the two-op vectorized form takes
    ~700 µs). So when autograd has nothing to record (grad mode off, or no tensor
    argument requires grad) the op is dispatched below the Autograd key, and when
    it has, and the rule was registered through :func:`register_autograd`, the same
    rule runs as a plain ``autograd.Function``. The op's own registration stays, for
    callers of ``torch.ops`` (and ``opcheck``).
    """
    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        if op in _autograd_rules:
            return _OpFunction.apply(op, *args)
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _compiler_message(exc: BaseException) -> str:
    text = str(exc)
    output = getattr(exc, "output", None)
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    if output:
        text = f"{text}\n{output}"
    errors = [ln for ln in text.splitlines() if "error" in ln.lower()]
    head = " | ".join(errors[:4]) if errors else " ".join(text.split())[:400]
    return f"extension build failed: {head}"[:800]


def _build(mech: str, verbose: bool) -> str:
    cuda = want_cuda()
    cpp, cu, _, _ = sources(mech)
    if not cpp:
        raise BuildError(f"{mech}: no .cpp sources in impls/{mech}/csrc")
    key = build_key(mech, cuda)
    name = f"attnbench_{mech}_{key}"
    folder = cache_root() / "ext" / name
    lib = folder / f"{name}.so"
    if lib.exists():  # cached: no compiler, no ninja
        torch.ops.load_library(str(lib))
        return str(lib)
    folder.mkdir(parents=True, exist_ok=True)
    from torch.utils import cpp_extension

    srcs = [str(p) for p in cpp]
    cuda_flags: list[str] = []
    if cuda:
        home = _cuda_home()
        if home:
            os.environ.setdefault("CUDA_HOME", home)
            cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
        srcs += [str(p) for p in cu]
        cuda_flags = NVCC_FLAGS + ["-DATTNBENCH_CUDA"]
    cpp_extension.load(
        name=name,
        sources=srcs,
        extra_cflags=CFLAGS + (["-DATTNBENCH_CUDA"] if cuda else []),
        extra_ldflags=LDFLAGS,
        extra_cuda_cflags=cuda_flags,
        extra_include_paths=include_dirs(mech),
        build_directory=str(folder),
        with_cuda=cuda,
        is_python_module=False,
        verbose=verbose,
    )
    if not lib.exists():
        raise BuildError(f"{mech}: the build produced no {lib.name} in {folder}")
    return str(lib)


def unavailable_reason(mech: str) -> str | None:
    """``None`` if the extension loads, else the reason (used as an Impl's ``available``)."""
    try:
        load(mech)
    except BuildError as exc:
        return str(exc)
    return None


# -- nvcc -c: CUDA sources compile everywhere -----------------------------------------


def cuda_sources(mech: str | None = None) -> list[Path]:
    folders = [IMPLS_DIR / mech] if mech else sorted(p for p in IMPLS_DIR.iterdir() if p.is_dir())
    return sorted(p for f in folders for p in (f / "csrc").glob("*.cu"))


def check_cuda(mech: str | None = None, arch: str = "75") -> list[tuple[Path, bool, str]]:
    """Compiles each ``.cu`` with ``nvcc -c`` against torch's headers; returns (file, ok, output).

    Raises:
        BuildError: nvcc is not available.
    """
    nvcc = nvcc_path()
    if nvcc is None:
        raise BuildError("nvcc not found (not on PATH, CUDA_HOME unset): CUDA sources not compiled")
    from torch.utils import cpp_extension

    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    includes.append(f"-I{sysconfig.get_paths()['include']}")
    with tempfile.TemporaryDirectory() as tmp:

        def compile_one(cu: Path) -> tuple[Path, bool, str]:
            cmd = [
                nvcc,
                "-c",
                str(cu),
                "-o",
                str(Path(tmp) / (cu.stem + ".o")),
                *NVCC_FLAGS,
                f"-gencode=arch=compute_{arch},code=sm_{arch}",
                "-DATTNBENCH_CUDA",
                "-Xcompiler",
                "-fPIC",
                f"-I{cu.parent}",
                f"-I{COMMON_CSRC}",
                *includes,
                "-D_GLIBCXX_USE_CXX11_ABI=1",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            return cu, proc.returncode == 0, (proc.stdout + proc.stderr).strip()

        # one nvcc per core: each file takes minutes (four dtypes of templates)
        with ThreadPoolExecutor(max_workers=usable_cores()) as pool:
            results = list(pool.map(compile_one, cuda_sources(mech)))
    return results


# -- CLI: attnbench build [MECH] [--check-cuda] --------------------------------------------


def add_command(sub: Any) -> None:
    p = sub.add_parser("build", help="compile extensions ahead of time (and nvcc -c every .cu)")
    p.add_argument("mechanism", nargs="?", help="one mechanism folder (default: all with csrc/)")
    p.add_argument("--check-cuda", action="store_true", help="compile every .cu with nvcc -c (no GPU needed)")
    p.add_argument("--verbose", action="store_true")


def cmd_build(args: argparse.Namespace) -> int:
    from attnbench.cli import console

    mechs = (
        [args.mechanism]
        if args.mechanism
        else sorted(p.name for p in IMPLS_DIR.iterdir() if (p / "csrc").is_dir() and any((p / "csrc").glob("*.cpp")))
    )
    if args.mechanism and not (IMPLS_DIR / args.mechanism / "csrc").is_dir():
        known = sorted(p.name for p in IMPLS_DIR.iterdir() if (p / "csrc").is_dir())
        raise UsageError(
            f"build {args.mechanism}: no impls/{args.mechanism}/csrc; mechanisms with csrc: {', '.join(known)}"
        )
    code = 0
    if args.check_cuda:
        try:
            results = check_cuda(args.mechanism)
        except BuildError as exc:
            console.print(f"[yellow]check-cuda skipped:[/] {exc}")
            return 2
        for cu, ok, output in results:
            console.print(f"{'[green]ok[/]' if ok else '[red]FAILED[/]'}  nvcc -c {cu.relative_to(IMPLS_DIR.parent)}")
            if not ok:
                console.print(output)
                code = 1
        if not results:
            console.print("no .cu sources found")
        return code
    for mech in mechs:
        try:
            path = load(mech, verbose=args.verbose)
            console.print(f"[green]ok[/]  {mech}: {path}")
        except BuildError as exc:
            console.print(f"[red]FAILED[/]  {mech}: {exc}")
            code = 1
    return code
