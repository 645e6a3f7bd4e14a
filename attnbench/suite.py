"""Suite files (``suites/<name>/suite.toml``) parsed into frozen dataclasses.

Validation is strict: an unknown key, a wrong type or an impossible value
raises :class:`SuiteError` naming the file, the key and what is allowed. See
``docs/suites.md`` for the format; ``suites/ccnet/suite.toml`` is an example.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from attnbench.cases import DEVICES, DTYPES, Case
from attnbench.errors import SuiteError, UsageError
from attnbench.registry import KINDS, REGISTRY, Mechanism, Param
from attnbench.tolerances import RULE_F, Tolerance, default_tolerance

CHECKS = ("forward", "backward", "gradcheck", "properties", "modules", "opcheck", "timing", "memory", "scaling")
PASSES = ("fwd", "fwd+bwd")
PROFILES = ("quick", "full")
ENTRY_KEYS = ("mechanism", "name", "tags", "module")


@dataclass(frozen=True)
class Timing:
    """How latency is measured (specs/README.md §8).

    Attributes:
        warmup: untimed calls before measuring.
        min_runs, max_runs: bounds on timed calls; runs adapt between them
            until ``min_time_s`` of samples are collected.
        min_time_s: wanted total of timed samples per measurement.
        max_time_s: stop adding runs past this total (``min_runs`` still taken).
        threads: intra-op threads (``0``: all cores of this machine).
        passes: ``fwd`` and/or ``fwd+bwd``.
        kinds: impl kinds that are timed (naive loops are not, by default).
    """

    warmup: int = 3
    min_runs: int = 10
    max_runs: int = 200
    min_time_s: float = 0.1
    max_time_s: float = 2.0
    threads: int = 0
    passes: tuple[str, ...] = PASSES
    kinds: tuple[str, ...] = ("vectorized", "ext", "peer", "user")


@dataclass(frozen=True)
class ScalingAxis:
    """A sweep of one axis for the scaling check (see attnbench.checks.scaling)."""

    name: str
    mechanism: str
    axis: str  # "H=W", "H", "C", ...
    values: tuple[int, ...]
    fixed: Mapping[str, Any]
    impls: tuple[str, ...] = ()
    tolerance: float = 0.35
    dtype: str = "float32"
    fit_from: int | None = None  # first value treated as asymptotic


@dataclass(frozen=True)
class ExpectedFailure:
    impl: str
    check: str
    case: str  # substring of the case id ("" = every case)
    reason: str

    def matches(self, impl: str, check: str, case_id: str) -> bool:
        return (
            self.impl in (impl, "*")
            and (self.check in ("*", check) or check.startswith(self.check + ":"))
            and self.case in case_id
        )


@dataclass(frozen=True)
class Profile:
    name: str
    dtypes: tuple[str, ...]
    devices: tuple[str, ...]
    cases: tuple[Case, ...]
    gradcheck: tuple[Case, ...]
    modules: tuple[Case, ...]
    scaling: tuple[ScalingAxis, ...]
    timing: Timing


@dataclass(frozen=True)
class Suite:
    name: str
    path: str
    description: str
    mechanisms: tuple[str, ...]
    checks: frozenset[str]
    tolerances: Mapping[str, Tolerance]
    profiles: Mapping[str, Profile]
    expected_failures: tuple[ExpectedFailure, ...] = ()
    memory_budget: int | None = None
    timeout_s: float | None = None
    regression: Mapping[str, float] = field(default_factory=dict)

    def profile(self, name: str) -> Profile:
        try:
            return self.profiles[name]
        except KeyError:
            raise UsageError(f"{self.path}: no profile {name!r}; this suite has: {', '.join(self.profiles)}") from None

    def tolerance(self, dtype: str) -> Tolerance:
        return self.tolerances.get(dtype) or default_tolerance(dtype)

    def expected_failure(self, impl: str, check: str, case_id: str) -> ExpectedFailure | None:
        for xf in self.expected_failures:
            if xf.matches(impl, check, case_id):
                return xf
        return None


class _Reader:
    """Typed access to TOML tables that reports errors with their key path."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> SuiteError:
        return SuiteError(self.path, key, message)

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, got {type(value).__name__}")
        return value

    def only(self, table: Mapping[str, Any], allowed: tuple[str, ...], key: str) -> None:
        for k in table:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                raise self.fail(where, f"unknown key; allowed: {', '.join(allowed)}")

    def get(self, table: Mapping[str, Any], name: str, typ: type, default: Any, key: str) -> Any:
        where = f"{key}.{name}" if key else name
        if name not in table:
            return default
        value = table[name]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
            raise self.fail(where, f"must be {typ.__name__}, got {value!r}")
        return value

    def str_list(
        self,
        table: Mapping[str, Any],
        name: str,
        default: tuple[str, ...],
        key: str,
        allowed: tuple[str, ...] | None = None,
    ) -> tuple[str, ...]:
        where = f"{key}.{name}" if key else name
        if name not in table:
            return default
        value = table[name]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(where, f"must be a list of strings, got {value!r}")
        if allowed is not None:
            for v in value:
                if v not in allowed:
                    raise self.fail(where, f"{v!r} is not allowed; allowed: {', '.join(allowed)}")
        return tuple(value)

    def positive(self, value: Any, where: str, minimum: float = 0) -> None:
        if value < minimum:
            raise self.fail(where, f"must be >= {minimum}, got {value!r}")


def find_suite_file(spec: str | Path) -> Path:
    """``suites/ccnet``, ``suites/ccnet/suite.toml`` or a bare ``ccnet``."""
    path = Path(spec)
    candidates = [path / "suite.toml", path] if path.suffix != ".toml" else [path]
    if not path.exists() and len(path.parts) == 1:
        here = Path(__file__).resolve().parent.parent / "suites" / str(spec)
        candidates += [Path("suites") / str(spec) / "suite.toml", here / "suite.toml"]
    for c in candidates:
        if c.is_file():
            return c
    raise UsageError(f"suite {spec}: no suite.toml found (tried {', '.join(str(c) for c in candidates)})")


def load_suite(spec: str | Path) -> Suite:
    """Reads and validates a suite; every problem raises :class:`SuiteError`."""
    path = find_suite_file(spec)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(str(path), "", f"malformed TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SuiteError(str(path), "", f"not UTF-8 text: {exc}") from None
    return parse_suite(raw, str(path), default_name=path.parent.name)


def parse_suite(raw: Mapping[str, Any], path: str, default_name: str = "suite") -> Suite:
    r = _Reader(path)
    top = (
        "name",
        "description",
        "mechanisms",
        "checks",
        "tolerances",
        "timing",
        "profiles",
        "expected_failures",
        "max_memory",
        "timeout_s",
        "regression",
    )
    r.only(raw, top, "")
    name = r.get(raw, "name", str, default_name, "")
    description = r.get(raw, "description", str, "", "")
    mechanisms = r.str_list(raw, "mechanisms", (), "")
    if not mechanisms:
        raise r.fail("mechanisms", 'required: a list of mechanism cores, e.g. ["ccnet"]')
    REGISTRY.discover()
    for m in mechanisms:
        if m not in REGISTRY.mechanisms:
            broken = "".join(f"; impls/{pkg} failed to import: {why}" for pkg, why in REGISTRY.broken.items())
            raise r.fail(
                "mechanisms", f"unknown mechanism {m!r}; known: {', '.join(sorted(REGISTRY.mechanisms))}{broken}"
            )

    checks_t = r.table(raw.get("checks", {}), "checks")
    r.only(checks_t, CHECKS, "checks")
    checks = frozenset(c for c in CHECKS if r.get(checks_t, c, bool, True, "checks"))

    tolerances: dict[str, Tolerance] = {}
    tol_t = r.table(raw.get("tolerances", {}), "tolerances")
    r.only(tol_t, tuple(DTYPES), "tolerances")
    for dt, t in tol_t.items():
        key = f"tolerances.{dt}"
        t = r.table(t, key)
        r.only(t, ("rtol", "atol", "k", "rule"), key)
        rtol, atol = RULE_F[dt]
        rule = r.get(t, "rule", str, "auto", key)
        if rule not in ("F", "K", "auto"):
            raise r.fail(f"{key}.rule", f"{rule!r} is not allowed; allowed: F, K, auto")
        tol = Tolerance(
            rtol=r.get(t, "rtol", float, rtol, key),
            atol=r.get(t, "atol", float, atol, key),
            k=r.get(t, "k", float, None, key) if "k" in t else None,
            rule=rule,
        )
        for n in ("rtol", "atol"):
            r.positive(getattr(tol, n), f"{key}.{n}")
        if tol.k is not None:
            r.positive(tol.k, f"{key}.k", 1.0)
        tolerances[dt] = tol

    base_timing = _timing(r, raw.get("timing", {}), "timing", Timing())

    profiles_t = r.table(raw.get("profiles", {}), "profiles")
    if "quick" not in profiles_t:
        raise r.fail("profiles", "a [profiles.quick] table is required")
    r.only(profiles_t, PROFILES, "profiles")
    profiles = {
        pname: _profile(r, pname, r.table(p, f"profiles.{pname}"), mechanisms, base_timing)
        for pname, p in profiles_t.items()
    }

    xfails = []
    xf_list = raw.get("expected_failures", [])
    if not isinstance(xf_list, list):
        raise r.fail("expected_failures", "must be an array of tables ([[expected_failures]])")
    for i, xf in enumerate(xf_list):
        key = f"expected_failures[{i}]"
        xf = r.table(xf, key)
        r.only(xf, ("impl", "check", "case", "reason"), key)
        reason = r.get(xf, "reason", str, "", key)
        if not reason:
            raise r.fail(f"{key}.reason", "required: say why the failure is expected")
        xfails.append(
            ExpectedFailure(
                impl=r.get(xf, "impl", str, "*", key),
                check=r.get(xf, "check", str, "*", key),
                case=r.get(xf, "case", str, "", key),
                reason=reason,
            )
        )

    max_memory = r.get(raw, "max_memory", int, None, "") if "max_memory" in raw else None
    if max_memory is not None:
        r.positive(max_memory, "max_memory", 1)
    timeout_s = r.get(raw, "timeout_s", float, None, "") if "timeout_s" in raw else None
    if timeout_s is not None:
        r.positive(timeout_s, "timeout_s", 1e-3)
    reg_t = r.table(raw.get("regression", {}), "regression")
    reg_keys = ("min_effect", "alpha", "memory_threshold", "remeasure", "callgrind")
    r.only(reg_t, reg_keys, "regression")
    regression: dict[str, Any] = {}
    for k in reg_keys:
        if k in reg_t:
            typ = bool if k == "callgrind" else (int if k == "remeasure" else float)
            regression[k] = r.get(reg_t, k, typ, None, "regression")

    return Suite(
        name=name,
        path=path,
        description=description,
        mechanisms=mechanisms,
        checks=checks,
        tolerances=tolerances,
        profiles=profiles,
        expected_failures=tuple(xfails),
        memory_budget=max_memory,
        timeout_s=timeout_s,
        regression=regression,
    )


def _timing(r: _Reader, value: Any, key: str, base: Timing) -> Timing:
    t = r.table(value, key)
    r.only(t, ("warmup", "min_runs", "max_runs", "min_time_s", "max_time_s", "threads", "passes", "kinds"), key)
    timing = Timing(
        warmup=r.get(t, "warmup", int, base.warmup, key),
        min_runs=r.get(t, "min_runs", int, base.min_runs, key),
        max_runs=r.get(t, "max_runs", int, base.max_runs, key),
        min_time_s=r.get(t, "min_time_s", float, base.min_time_s, key),
        max_time_s=r.get(t, "max_time_s", float, base.max_time_s, key),
        threads=r.get(t, "threads", int, base.threads, key),
        passes=r.str_list(t, "passes", base.passes, key, PASSES),
        kinds=r.str_list(t, "kinds", base.kinds, key, KINDS),
    )
    r.positive(timing.warmup, f"{key}.warmup")
    r.positive(timing.min_runs, f"{key}.min_runs", 1)
    r.positive(timing.threads, f"{key}.threads")
    if timing.max_runs < timing.min_runs:
        raise r.fail(f"{key}.max_runs", f"must be >= min_runs ({timing.min_runs}), got {timing.max_runs}")
    if timing.max_time_s < timing.min_time_s:
        raise r.fail(f"{key}.max_time_s", f"must be >= min_time_s ({timing.min_time_s})")
    return timing


def _profile(r: _Reader, pname: str, p: dict[str, Any], mechanisms: tuple[str, ...], base_timing: Timing) -> Profile:
    key = f"profiles.{pname}"
    r.only(p, ("dtypes", "devices", "cases", "grids", "gradcheck", "modules", "scaling", "timing"), key)
    dtypes = r.str_list(p, "dtypes", ("float64", "float32"), key, tuple(DTYPES))
    devices = r.str_list(p, "devices", ("cpu",), key, DEVICES)
    timing = _timing(r, p.get("timing", {}), f"{key}.timing", base_timing)

    def entries(section: str) -> list[tuple[str, dict[str, Any]]]:
        value = p.get(section, [])
        if not isinstance(value, list):
            raise r.fail(f"{key}.{section}", f"must be an array of tables ([[{key}.{section}]])")
        return [(f"{key}.{section}[{i}]", r.table(e, f"{key}.{section}[{i}]")) for i, e in enumerate(value)]

    cases: list[Case] = []
    for where, e in entries("cases"):
        cases.append(_case(r, where, e, mechanisms, grid=False)[0])
    for where, e in entries("grids"):
        cases.extend(_case(r, where, e, mechanisms, grid=True))
    gradcheck = [
        c for where, e in entries("gradcheck") for c in _case(r, where, e, mechanisms, grid=False, module="module" in e)
    ]
    modules = [c for where, e in entries("modules") for c in _case(r, where, e, mechanisms, grid=False, module=True)]
    if not cases and not modules and not gradcheck:
        raise r.fail(key, "defines no cases; add [[" + key + ".cases]] or [[" + key + ".grids]]")
    seen: dict[str, str] = {}
    for c in cases:
        if c.shape_id in seen:
            raise r.fail(key, f"case {c.shape_id} appears twice ({seen[c.shape_id]!r} and {c.name!r})")
        seen[c.shape_id] = c.name
    scaling = tuple(_scaling(r, where, e, mechanisms) for where, e in entries("scaling"))
    axes_seen: set[tuple[str, str]] = set()
    for axis in scaling:
        if (axis.mechanism, axis.name) in axes_seen:
            raise r.fail(
                f"profiles.{pname}.scaling",
                f"two sweeps of {axis.mechanism} are named {axis.name!r}; names must differ per mechanism",
            )
        axes_seen.add((axis.mechanism, axis.name))
    return Profile(pname, dtypes, devices, tuple(cases), tuple(gradcheck), tuple(modules), scaling, timing)


def _mechanism_of(r: _Reader, where: str, e: Mapping[str, Any], mechanisms: tuple[str, ...]) -> Mechanism:
    if "mechanism" in e:
        m = r.get(e, "mechanism", str, "", where)
        if m not in mechanisms:
            raise r.fail(f"{where}.mechanism", f"{m!r} is not one of this suite's mechanisms: {', '.join(mechanisms)}")
    elif len(mechanisms) == 1:
        m = mechanisms[0]
    else:
        raise r.fail(where, f"needs mechanism = one of {', '.join(mechanisms)}")
    return REGISTRY.mechanisms[m]


def _case(
    r: _Reader, where: str, e: Mapping[str, Any], mechanisms: tuple[str, ...], grid: bool, module: bool = False
) -> list[Case]:
    mech = _mechanism_of(r, where, e, mechanisms)
    name = r.get(e, "name", str, "", where)
    tags = frozenset(r.str_list(e, "tags", (), where))
    params_spec: Mapping[str, Param] = mech.params
    core = mech.core
    if module:
        if "module" not in e:
            known = ", ".join(m.name for m in mech.modules) or "none"
            raise r.fail(f"{where}.module", f"required; {mech.name} modules: {known}")
        mod_name = r.get(e, "module", str, "", where)
        try:
            params_spec = mech.module(mod_name).params
        except KeyError as exc:
            raise r.fail(f"{where}.module", str(exc.args[0])) from None
        core = mod_name
        tags = tags | {"module"}
    elif "module" in e:
        raise r.fail(f"{where}.module", "only allowed in [[...modules]] entries")
    values = {k: v for k, v in e.items() if k not in ENTRY_KEYS}

    # Expand axes: "H,W" = [[17, 17], [33, 65]] zips keys; grids take lists.
    axes: list[list[dict[str, Any]]] = []
    for k, v in values.items():
        keys = [s.strip() for s in k.split(",")]
        for kk in keys:
            if kk not in params_spec:
                allowed = ", ".join(list(params_spec) + list(ENTRY_KEYS[:3]))
                raise r.fail(
                    f"{where}.{kk}", f"unknown key for {mech.name}{'/' + core if module else ''}; allowed: {allowed}"
                )
        if grid:
            if not isinstance(v, list) or not v:
                raise r.fail(f"{where}.{k}", f"grid axes take a non-empty list, got {v!r}")
            options = v
        else:
            options = [v]
        points = []
        for opt in options:
            if len(keys) > 1:
                if not isinstance(opt, list) or len(opt) != len(keys):
                    raise r.fail(f"{where}.{k}", f"each value must be a list of {len(keys)} ({k}), got {opt!r}")
                points.append(dict(zip(keys, opt, strict=True)))
            else:
                points.append({keys[0]: opt})
        axes.append(points)

    out = []
    for combo in itertools.product(*axes) if axes else [()]:
        params: dict[str, Any] = {}
        for part in combo:
            params.update(part)
        for k, spec in params_spec.items():
            if k not in params:
                if spec.default is None and not spec.optional:
                    raise r.fail(f"{where}.{k}", f"required ({spec.doc or spec.describe()})")
                params[k] = spec.default
            msg = spec.validate(k, params[k])
            if msg:
                raise r.fail(f"{where}.{k}", msg)
            if spec.type is float and isinstance(params[k], int) and not isinstance(params[k], bool):
                params[k] = float(params[k])
        if not module:
            for msg in mech.validate(params):
                raise r.fail(where, msg)
        out.append(Case(mech.name, core, params, name, tags))
    return out


def _scaling(r: _Reader, where: str, e: Mapping[str, Any], mechanisms: tuple[str, ...]) -> ScalingAxis:
    allowed = ("name", "mechanism", "axis", "values", "fixed", "impls", "tolerance", "dtype", "fit_from")
    r.only(e, allowed, where)
    mech = _mechanism_of(r, where, e, mechanisms)
    axis = r.get(e, "axis", str, "", where)
    if not axis:
        raise r.fail(f"{where}.axis", 'required, e.g. "H=W" or "C"')
    axis_keys = [a.strip() for a in axis.split("=")]
    for a in axis_keys:
        if a not in mech.params:
            raise r.fail(f"{where}.axis", f"{a!r} is not a parameter of {mech.name}; allowed: {', '.join(mech.params)}")
    values = e.get("values")
    if not isinstance(values, list) or len(values) < 3 or not all(isinstance(v, int) and v >= 1 for v in values):
        raise r.fail(f"{where}.values", f"must be a list of at least 3 positive integers, got {values!r}")
    fixed = r.table(e.get("fixed", {}), f"{where}.fixed")
    for k in fixed:
        if k not in mech.params:
            raise r.fail(f"{where}.fixed.{k}", f"unknown key for {mech.name}; allowed: {', '.join(mech.params)}")
    dtype = r.get(e, "dtype", str, "float32", where)
    if dtype not in DTYPES:
        raise r.fail(f"{where}.dtype", f"{dtype!r} is not allowed; allowed: {', '.join(DTYPES)}")
    fit_from = r.get(e, "fit_from", int, None, where) if "fit_from" in e else None
    return ScalingAxis(
        name=r.get(e, "name", str, axis, where),
        mechanism=mech.name,
        axis=axis,
        values=tuple(sorted(values)),
        fixed=dict(fixed),
        impls=r.str_list(e, "impls", (), where),
        tolerance=r.get(e, "tolerance", float, 0.35, where),
        dtype=dtype,
        fit_from=fit_from,
    )
