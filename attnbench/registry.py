"""Mechanisms, implementations and their discovery.

Built-in mechanisms live in ``impls/<mechanism>/`` and register themselves when
their package is imported; there is no central list. A user's file passed with
``--impl`` uses the same :func:`register` decorator and is a first-class
citizen::

    import attnbench

    @attnbench.register("ccnet", kind="vectorized", name="my_cca")
    def my_cca(q, k, v):
        ...
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import pkgutil
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnbench.cases import DTYPES, Case
from attnbench.errors import UsageError

KINDS = ("naive", "vectorized", "ext", "peer", "user")
NAIVE_WORK_BUDGET = 200_000  # inner-loop iterations (specs/README.md §2)
# Differentiating through the naive loops builds one autograd node per scalar op and
# costs 4-8x the forward (CCNet at 9e4 iterations: 5 s forward, 40 s backward), so a
# reference that needs gradients gets a quarter of the budget.
NAIVE_GRAD_WORK_BUDGET = NAIVE_WORK_BUDGET // 4


@dataclass(frozen=True)
class Param:
    """One case parameter of a mechanism (a suite key).

    Attributes:
        type: ``int``, ``float``, ``bool`` or ``str``.
        min: smallest allowed value (numbers).
        choices: allowed values (strings), or ``None`` for any.
        default: value used when a case omits the key; ``None`` means required
            unless ``optional`` is set.
        optional: the key may be absent (the value is then ``None``).
        doc: one line for ``attnbench list`` and error messages.
    """

    type: type
    min: float | None = None
    choices: tuple[Any, ...] | None = None
    default: Any = None
    optional: bool = False
    doc: str = ""

    def describe(self) -> str:
        parts = [self.type.__name__]
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.choices is not None:
            parts.append("one of " + ", ".join(repr(c) for c in self.choices))
        if self.optional:
            parts.append("optional")
        return " ".join(parts)

    def validate(self, key: str, value: Any) -> str | None:
        """Returns why ``value`` is not allowed for ``key``, or ``None``."""
        if value is None and (self.optional or self.default is not None):
            return None
        ok_type = isinstance(value, self.type) and not (self.type is not bool and isinstance(value, bool))
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            ok_type = True
        if not ok_type:
            return f"{key} = {value!r} must be {self.describe()}"
        if self.min is not None and value < self.min:
            return f"{key} = {value!r} must be {self.describe()}"
        if self.choices is not None and value not in self.choices:
            return f"{key} = {value!r} must be {self.describe()}"
        return None


@dataclass
class Inputs:
    """The arguments of one call of a core, drawn in float64 on the CPU.

    Attributes:
        tensors: positional tensor arguments, in call order.
        kwargs: keyword arguments (options such as ``mode`` or ``scale``).
        differentiable: names in ``tensors`` whose gradients are compared.
    """

    tensors: dict[str, torch.Tensor]
    kwargs: dict[str, Any] = field(default_factory=dict)
    differentiable: tuple[str, ...] = ()

    def to(self, dtype: torch.dtype, device: str | torch.device) -> Inputs:
        """Casts floating tensors to ``dtype`` (masks stay bool) and moves all to ``device``."""
        out = {}
        for name, t in self.tensors.items():
            t = t.to(device)
            if t.is_floating_point():
                t = t.to(dtype)
            out[name] = t.detach().requires_grad_(name in self.differentiable)
        return Inputs(out, dict(self.kwargs), self.differentiable)

    def call(self, fn: Callable[..., Any]) -> Any:
        return fn(*self.tensors.values(), **self.kwargs)


@dataclass(frozen=True)
class PropertyOutcome:
    """Result of a property check: ``passed`` with the error that decided it."""

    passed: bool
    max_abs_err: float = float("nan")
    atol: float = float("nan")
    detail: str = ""
    statistic: float | None = None  # hypothesis tests (attnbench.checks.statistical)
    p_value: float | None = None


@dataclass(frozen=True)
class Property:
    """A mechanism invariant checked on an impl (specs/<mech>.md §Properties).

    ``fn(impl_fn, case, dtype, device)`` returns a :class:`PropertyOutcome`;
    ``applies(case)`` says on which shape cases it is meaningful. A property of
    a module (``ModuleDef.properties``) gets the module's forward already bound
    to the impl's core (or the impl's own module, ``register(modules=...)``).
    """

    name: str
    fn: Callable[[Callable[..., Any], Case, torch.dtype, str], PropertyOutcome]
    applies: Callable[[Case], bool] = lambda case: True
    description: str = ""


@dataclass(frozen=True)
class ModuleDef:
    """A module built on a core (e.g. recurrent criss-cross attention).

    ``forward(core_fn, *tensors, **kwargs)`` is the functional module: its
    weights are inputs, so their gradients are compared like any other.
    """

    name: str
    params: Mapping[str, Param]
    make_inputs: Callable[[Case], Inputs]
    forward: Callable[..., Any]
    properties: tuple[Property, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Mechanism:
    """A mechanism core: what every implementation of it must compute.

    Attributes:
        name: registry key (``"ccnet"``, ``"danet.cam"``).
        core: function name used in case ids (``"cca"``, ``"cam"``).
        params: the case parameters a suite may set, with their constraints.
        make_inputs: draws the call's inputs for a case (float64, CPU, seeded).
        validate: extra cross-parameter checks; returns messages, empty if fine.
        naive_work: inner-loop iterations of the naive reference for a case.
        flops: forward floating-point operations (2 per multiply-add).
        memory: analytic bytes per item (e.g. ``{"attention_map": ...}``).
        properties: invariants checked per impl.
        modules: modules built on the core, checked per impl.
        rule_k: the ``k`` of comparison rule K (specs/README.md §3).
        traffic: ``(case, dtype, pass) -> bytes`` an ideal kernel must move
            (memory-bound mechanisms; reported as achieved bandwidth).
        doc: one paragraph for ``attnbench list``.
    """

    name: str
    core: str
    params: Mapping[str, Param]
    make_inputs: Callable[[Case], Inputs]
    validate: Callable[[Mapping[str, Any]], list[str]] = lambda params: []
    naive_work: Callable[[Case], int] | None = None
    flops: Callable[[Case], float] | None = None
    memory: Callable[[Case, torch.dtype], Mapping[str, float]] | None = None
    properties: tuple[Property, ...] = ()
    modules: tuple[ModuleDef, ...] = ()
    rule_k: float = 2.0
    traffic: Callable[[Case, torch.dtype, str], float] | None = None
    doc: str = ""

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    def module(self, name: str) -> ModuleDef:
        for m in self.modules:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.modules) or "none"
        raise KeyError(f"{self.name} has no module {name!r} (known: {known})")


Supports = Callable[[Case, str, str], str | None]


def code_hash(fn: Callable[..., Any], source: str, builtin: bool, name: str) -> str:
    h = hashlib.sha256(name.encode())
    try:
        path = Path(inspect.getsourcefile(fn) or source).resolve()
    except TypeError:  # a builtin or C function: fall back on the registering file
        path = Path(source).resolve()
    impls_root = Path(__file__).resolve().parent.parent / "impls"
    files = [path]
    if builtin and impls_root in path.parents:
        package = impls_root / path.relative_to(impls_root).parts[0]
        files = sorted(p for p in package.rglob("*") if p.is_file() and p.suffix in CODE_SUFFIXES)
        files += sorted(p for p in (impls_root / "_common").rglob("*") if p.is_file() and p.suffix in CODE_SUFFIXES)
    for f in files:
        h.update(str(f.name).encode())
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(b"<unreadable>")
    return h.hexdigest()[:12]


CODE_SUFFIXES = (".py", ".h", ".cuh", ".cpp", ".cu")


@dataclass(frozen=True)
class Impl:
    """One implementation of a core, with what it supports.

    Attributes:
        mechanism: the core's registry key.
        name: unique within the mechanism.
        kind: ``naive``, ``vectorized``, ``ext``, ``peer`` or ``user``.
        fn: the callable with the core's canonical signature.
        devices: devices it runs on.
        dtypes: dtype names it runs in (``None``: all).
        backward: whether gradients flow through it.
        supports: ``(case, dtype, device) -> reason | None`` for finer limits.
        available: ``() -> reason | None``: e.g. an extension that failed to build.
        opcheck: ``() -> [(op, args, kwargs)]`` samples for ``torch.library.opcheck``.
        source: the file that registered it.
        builtin: registered from ``impls/`` rather than a user file.
        doc: one line.
        modules: module name -> this impl's own whole-module forward, with the
            signature of the mechanism's ``ModuleDef.forward`` (core first); the
            module cases then check it against the reference module on the naive core.
    """

    mechanism: str
    name: str
    kind: str
    fn: Callable[..., Any]
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] | None = None
    backward: bool = True
    supports: Supports | None = None
    available: Callable[[], str | None] | None = None
    opcheck: Callable[[Case, torch.dtype, str], list[tuple[Any, tuple[Any, ...], dict[str, Any]]]] | None = None
    source: str = ""
    builtin: bool = False
    doc: str = ""
    modules: Mapping[str, Callable[..., Any]] | None = None

    @property
    def key(self) -> str:
        return f"{self.mechanism}:{self.name}"

    @functools.cached_property
    def code_hash(self) -> str:
        """Identity of the code that runs: a built-in's whole package (Python and csrc,
        shared headers included), a user impl's file. Stored with every timing so that a
        baseline comparison knows whether it still holds the baseline's code (and can
        re-measure old and new interleaved) or only its numbers."""
        return code_hash(self.fn, self.source, self.builtin, self.name)

    def capabilities(self) -> str:
        dtypes = ",".join(self.dtypes) if self.dtypes else "all dtypes"
        bwd = "fwd+bwd" if self.backward else "fwd only"
        return f"{','.join(self.devices)}; {dtypes}; {bwd}"

    def unsupported_reason(self, case: Case, dtype: str, device: str) -> str | None:
        """Why this impl cannot run ``case`` in ``dtype`` on ``device``, or ``None``."""
        if device not in self.devices:
            return f"{self.name} supports devices {', '.join(self.devices)}, not {device}"
        if self.dtypes is not None and dtype not in self.dtypes:
            return f"{self.name} supports dtypes {', '.join(self.dtypes)}, not {dtype}"
        if self.available is not None:
            reason = self.available()
            if reason:
                return reason
        if self.supports is not None:
            return self.supports(case, dtype, device)
        return None


class Registry:
    """All mechanisms and impls known to this process."""

    def __init__(self) -> None:
        self.mechanisms: dict[str, Mechanism] = {}
        self.impls: dict[str, dict[str, Impl]] = {}
        # every built-in impl as discovered: a user file may replace one of the same name
        # in `impls` (to gate a change), the reference roles keep the original
        self.builtins: dict[str, dict[str, Impl]] = {}
        self.user_files: list[str] = []
        self._discovered = False
        self._loading_user_file: str | None = None
        self._this_load: set[tuple[str, str]] = set()
        self.broken: dict[str, str] = {}  # impls package -> why it failed to import

    # -- mechanisms -------------------------------------------------------
    def define(self, mechanism: Mechanism) -> Mechanism:
        if mechanism.name in self.mechanisms and self.mechanisms[mechanism.name] is not mechanism:
            raise ValueError(f"mechanism {mechanism.name!r} is defined twice")
        self.mechanisms[mechanism.name] = mechanism
        self.impls.setdefault(mechanism.name, {})
        return mechanism

    def mechanism(self, name: str) -> Mechanism:
        self.discover()
        try:
            return self.mechanisms[name]
        except KeyError:
            known = ", ".join(sorted(self.mechanisms)) or "none"
            broken = "".join(f"; impls/{pkg} failed to import: {why}" for pkg, why in self.broken.items())
            raise UsageError(f"unknown mechanism {name!r}; known: {known}{broken}") from None

    # -- impls ------------------------------------------------------------
    def add(self, impl: Impl) -> None:
        mech = self.mechanisms.get(impl.mechanism)
        if impl.modules and mech is not None:
            known = {m.name for m in mech.modules}
            unknown = sorted(set(impl.modules) - known)
            if unknown:
                raise ValueError(
                    f"{impl.source}: impl {impl.name!r} brings modules {unknown} that {impl.mechanism!r} does not "
                    f"have; its modules: {', '.join(sorted(known)) or 'none'}"
                )
        table = self.impls.setdefault(impl.mechanism, {})
        old = table.get(impl.name)
        if (impl.mechanism, impl.name) in self._this_load:
            raise UsageError(f"{impl.source}: impl {impl.name!r} of {impl.mechanism!r} is registered twice")
        if self._loading_user_file is not None:
            self._this_load.add((impl.mechanism, impl.name))
        if old is not None and old.builtin and not impl.builtin:
            warnings.warn(
                f"{impl.source}: impl {impl.name!r} replaces the built-in one of {impl.mechanism!r}",
                stacklevel=3,
            )
        table[impl.name] = impl
        if impl.builtin:
            self.builtins.setdefault(impl.mechanism, {})[impl.name] = impl

    def impls_for(self, mechanism: str) -> list[Impl]:
        self.discover()
        order = {kind: i for i, kind in enumerate(KINDS)}
        impls = list(self.impls.get(mechanism, {}).values())
        return sorted(impls, key=lambda i: (order.get(i.kind, 99), i.name))

    def reference(self, mechanism: str) -> Impl:
        """The naive impl that serves as the float64 ground truth."""
        naive = self._builtin_of_kind(mechanism, "naive")
        if not naive:
            raise UsageError(f"mechanism {mechanism!r} has no built-in naive reference")
        return naive[0]

    def vectorized(self, mechanism: str) -> Impl:
        """The built-in vectorized impl (rule K baseline; large-case reference)."""
        vec = self._builtin_of_kind(mechanism, "vectorized")
        if not vec:
            raise UsageError(f"mechanism {mechanism!r} has no built-in vectorized impl")
        return vec[0]

    def impl_with_code(self, mechanism: str, code: str) -> Impl | None:
        """An impl of this process whose code hash is ``code`` (a baseline's code, still here)."""
        if not code:
            return None
        self.discover()
        candidates = [*self.impls.get(mechanism, {}).values(), *self.builtins.get(mechanism, {}).values()]
        return next((i for i in candidates if i.code_hash == code), None)

    def _builtin_of_kind(self, mechanism: str, kind: str) -> list[Impl]:
        self.discover()
        found = self.builtins.get(mechanism, {}).values()
        return sorted((i for i in found if i.kind == kind), key=lambda i: i.name)

    # -- discovery --------------------------------------------------------
    def discover(self) -> None:
        """Imports every package under ``impls/`` once (each registers itself)."""
        if self._discovered:
            return
        self._discovered = True
        import impls

        for info in sorted(pkgutil.iter_modules(impls.__path__), key=lambda m: m.name):
            if info.ispkg:
                try:
                    importlib.import_module(f"impls.{info.name}")
                except Exception as exc:  # one broken package must not take the others down
                    self.broken[info.name] = f"{type(exc).__name__}: {exc}"

    def load_user_file(self, path: str | Path) -> list[Impl]:
        """Imports a user's file whose impls register with :func:`register`.

        Raises:
            UsageError: the file is missing, fails to import, registers nothing
                or registers an impl of an unknown mechanism.
        """
        self.discover()
        path = Path(path).resolve()
        if not path.is_file():
            raise UsageError(f"--impl {path}: no such file")
        before = {(m, n): i for m, t in self.impls.items() for n, i in t.items()}
        module_name = f"attnbench_user_{abs(hash(str(path))):x}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"--impl {path}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        self._loading_user_file = str(path)
        self._this_load = set()
        try:
            spec.loader.exec_module(module)
        except UsageError:
            raise
        except Exception as exc:  # the user's code: report, never crash
            raise UsageError(f"--impl {path}: import failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._loading_user_file = None
        added = [i for m, t in self.impls.items() for n, i in t.items() if before.get((m, n)) is not i]
        if not added:
            raise UsageError(f"--impl {path}: registers no impl (use @attnbench.register)")
        self.user_files.append(str(path))
        self.check_known()
        return added

    def check_known(self) -> None:
        for mech, table in self.impls.items():
            if mech not in self.mechanisms:
                sources = sorted({i.source for i in table.values()})
                known = ", ".join(sorted(self.mechanisms))
                raise UsageError(
                    f"{', '.join(sources)}: registers impl(s) for unknown mechanism {mech!r}; known: {known}"
                )

    def all_mechanisms(self) -> list[Mechanism]:
        self.discover()
        return [self.mechanisms[k] for k in sorted(self.mechanisms)]


REGISTRY = Registry()


def define_mechanism(mechanism: Mechanism) -> Mechanism:
    """Declares a mechanism core (called from ``impls/<mech>/mechanism.py``)."""
    return REGISTRY.define(mechanism)


def register(
    mechanism: str,
    *,
    kind: str,
    name: str | None = None,
    devices: Iterable[str] = ("cpu", "cuda"),
    dtypes: Iterable[str] | None = None,
    backward: bool = True,
    supports: Supports | None = None,
    available: Callable[[], str | None] | None = None,
    opcheck: Any = None,
    doc: str = "",
    modules: Mapping[str, Callable[..., Any]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Registers an implementation of a mechanism core; returns it unchanged.

    Args:
        mechanism: the core's registry key, e.g. ``"ccnet"`` or ``"danet.cam"``.
        kind: one of ``naive``, ``vectorized``, ``ext``, ``peer``, ``user``.
        name: unique name within the mechanism (default: the function's name).
        devices: devices it supports.
        dtypes: dtype names it supports (default: all).
        backward: whether it supports autograd.
        supports: ``(case, dtype, device) -> reason | None`` for finer limits.
        available: ``() -> reason | None``, checked before each case.
        opcheck: ``(case, dtype, device) -> [(op, args, kwargs)]`` for opcheck.
        doc: one line shown by ``attnbench list``.
        modules: ``{module name: forward}``: the impl's own version of a module
            built on the core (same signature as the mechanism's module forward,
            the core first), checked in that module's cases instead of the
            reference module composed with this core.

    Raises:
        ValueError: ``kind``, ``devices`` or ``dtypes`` hold unknown values, or
            ``modules`` names a module the mechanism does not have.
    """
    if kind not in KINDS:
        raise ValueError(f"register({mechanism!r}): kind {kind!r} is not one of {', '.join(KINDS)}")
    devices = tuple(devices)
    for d in devices:
        if d not in ("cpu", "cuda"):
            raise ValueError(f"register({mechanism!r}): device {d!r} is not cpu or cuda")
    dtype_names = tuple(dtypes) if dtypes is not None else None
    for dt in dtype_names or ():
        if dt not in DTYPES:
            raise ValueError(f"register({mechanism!r}): dtype {dt!r} is not one of {', '.join(DTYPES)}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        user_file = REGISTRY._loading_user_file
        source = user_file or inspect.getsourcefile(fn) or "<unknown>"
        REGISTRY.add(
            Impl(
                mechanism=mechanism,
                name=name or fn.__name__,
                kind=kind,
                fn=fn,
                devices=devices,
                dtypes=dtype_names,
                backward=backward,
                supports=supports,
                available=available,
                opcheck=opcheck,
                source=str(source),
                builtin=user_file is None,
                doc=doc or (inspect.getdoc(fn) or "").split("\n", 1)[0],
                modules=dict(modules) if modules else None,
            )
        )
        return fn

    return decorate
