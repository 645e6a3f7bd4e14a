"""Expands a suite into tasks and runs them, one isolated task at a time.

A task is one (kind of work, impl, case, dtype, device): equivalence and timing
of a case, a property, a gradcheck, a module check or an opcheck. Tasks are
plain picklable records so they can run in this process or in a worker
(attnbench.isolation); each returns the rows it measured, which the caller
writes at once. An exception inside a task becomes an ``error`` row; the
run goes on.
"""

from __future__ import annotations

import functools
import hashlib
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from attnbench.cases import DTYPES, Case
from attnbench.checks.equivalence import Comparison, compare, worst
from attnbench.checks.gradcheck import run_gradcheck
from attnbench.measure.memory import peak_extra_bytes, saved_bytes
from attnbench.measure.timing import time_fn, time_interleaved
from attnbench.registry import NAIVE_GRAD_WORK_BUDGET, NAIVE_WORK_BUDGET, REGISTRY, Impl, Inputs, Mechanism
from attnbench.report.csv import CheckRow, PerfRow
from attnbench.suite import Profile, Suite

Row = CheckRow | PerfRow
TASK_KINDS = ("case", "property", "gradcheck", "module", "opcheck", "scaling")


class ImplContractError(Exception):
    """An impl returned something that is not the core's output (type, shape, dtype, device)."""


@dataclass(frozen=True)
class Task:
    """One isolated unit of work; ``key`` is stable across runs (resume, shards)."""

    kind: str
    impl: str
    case: Case
    dtype: str
    device: str
    detail: str = ""  # property name for "property" tasks

    @property
    def key(self) -> str:
        extra = f"|{self.detail}" if self.detail else ""
        return f"{self.kind}|{self.case.mechanism}|{self.impl}|{self.case.case_id(self.dtype, self.device)}{extra}"

    @property
    def weight(self) -> int:
        """Rough relative cost, for even sharding."""
        return {"case": 4, "module": 3, "gradcheck": 2, "opcheck": 2, "property": 1, "scaling": 40}[self.kind]


@dataclass
class Options:
    """Run-wide settings that do not come from the suite."""

    only: tuple[str, ...] = ()
    devices: tuple[str, ...] | None = None
    max_memory: int | None = None
    timing: bool = True


def cuda_unavailable_reason(device: str) -> str | None:
    if device == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available here (torch.cuda.is_available() is False)"
    return None


def plan(suite: Suite, profile: Profile, options: Options) -> list[Task]:
    """Every task the run would do, in a stable order (grouped by shape for cache reuse)."""
    devices = options.devices or profile.devices
    tasks: list[Task] = []
    checks = suite.checks

    def impls(mechanism: str) -> list[Impl]:
        return [i for i in REGISTRY.impls_for(mechanism) if not options.only or i.name in options.only]

    for case in profile.cases:
        mech = REGISTRY.mechanisms[case.mechanism]
        for device in devices:
            for dtype in profile.dtypes:
                for impl in impls(case.mechanism):
                    tasks.append(Task("case", impl.name, case, dtype, device))
            if "properties" in checks:
                for prop in mech.properties:
                    if prop.applies(case):
                        for impl in impls(case.mechanism):
                            tasks.append(Task("property", impl.name, case, "float64", device, prop.name))
    if "gradcheck" in checks:
        for case in profile.gradcheck:
            for device in devices:
                for impl in impls(case.mechanism):
                    tasks.append(Task("gradcheck", impl.name, case, "float64", device))
    if "modules" in checks:
        for case in profile.modules:
            for device in devices:
                for dtype in profile.dtypes:
                    for impl in impls(case.mechanism):
                        tasks.append(Task("module", impl.name, case, dtype, device))
                if "properties" in checks:
                    module_def = REGISTRY.mechanisms[case.mechanism].module(case.core)
                    for prop in module_def.properties:
                        if prop.applies(case):
                            for impl in impls(case.mechanism):
                                tasks.append(Task("property", impl.name, case, "float64", device, prop.name))
    if "scaling" in checks and "timing" in checks and options.timing:
        from attnbench.checks.scaling import axis_cases

        for axis in profile.scaling:
            first = axis_cases(axis)[0][1]
            for device in devices:
                for impl in impls(axis.mechanism):
                    if impl.kind == "naive" or (axis.impls and impl.name not in axis.impls):
                        continue
                    tasks.append(Task("scaling", impl.name, first, axis.dtype, device, axis.name))
    if "opcheck" in checks:
        for case in profile.gradcheck or profile.cases[:2]:
            if "module" in case.tags:
                continue
            for device in devices:
                for impl in impls(case.mechanism):
                    if impl.opcheck is not None:
                        tasks.append(Task("opcheck", impl.name, case, "float64", device))
    return tasks


def shard(tasks: Sequence[Task], index: int, count: int) -> list[Task]:
    """Shard ``index`` (1-based) of ``count``: a deterministic, cost-balanced split.

    Tasks of one shape stay together (they share the reference); groups are
    dealt largest first to the lightest shard, ties broken by a hash of the key.
    """
    groups: OrderedDict[str, list[Task]] = OrderedDict()
    for t in tasks:
        groups.setdefault(f"{t.case.mechanism}|{t.case.shape_id}|{t.kind}", []).append(t)
    order = sorted(
        groups.items(),
        key=lambda kv: (-sum(t.weight for t in kv[1]), hashlib.sha256(kv[0].encode()).hexdigest()),
    )
    loads = [0] * count
    owner: dict[str, int] = {}
    for key, group in order:
        target = min(range(count), key=lambda i: (loads[i], i))
        owner[key] = target
        loads[target] += sum(t.weight for t in group)
    mine = {k for k, v in owner.items() if v == index - 1}
    return [t for t in tasks if f"{t.case.mechanism}|{t.case.shape_id}|{t.kind}" in mine]


# -- execution -------------------------------------------------------------------------


@dataclass
class Reference:
    outputs: tuple[torch.Tensor, ...]
    grads: dict[str, torch.Tensor]
    label: str


@dataclass
class Context:
    """What every task needs: the suite, the profile and caches of references."""

    suite: Suite
    profile: Profile
    options: Options = field(default_factory=Options)
    _pts: OrderedDict[str, Reference | None] = field(default_factory=OrderedDict)

    def cached(self, cache: OrderedDict[str, Any], key: str, make: Callable[[], Any], size: int = 8) -> Any:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value = make()
        cache[key] = value
        while len(cache) > size:
            cache.popitem(last=False)
        return value


def as_outputs(result: Any, who: str) -> tuple[torch.Tensor, ...]:
    """An impl's result as a tuple of tensors, or ImplContractError naming what it was."""
    if isinstance(result, torch.Tensor):
        return (result,)
    if isinstance(result, (tuple, list)) and result and all(isinstance(t, torch.Tensor) for t in result):
        return tuple(result)
    raise ImplContractError(f"{who} returned {type(result).__name__}, expected a Tensor (or a tuple of Tensors)")


def grad_outputs(case: Case, outputs: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """One fixed float64 upstream gradient per floating output (seed role ``gout``)."""
    gouts: list[torch.Tensor | None] = []
    for i, out in enumerate(outputs):
        if out.is_floating_point() and out.requires_grad:
            role = "gout" if i == 0 else f"gout{i}"
            gouts.append(case.randn(role, *out.shape))
        else:
            gouts.append(None)
    return gouts


def forward_backward(
    fn: Callable[..., Any], inputs: Inputs, case: Case, backward: bool, who: str
) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor | None]]:
    """Calls ``fn`` and, if asked, differentiates with the case's fixed upstream gradients."""
    outputs = as_outputs(inputs.call(fn), who)
    grads: dict[str, torch.Tensor | None] = {}
    if backward and inputs.differentiable:
        gouts = grad_outputs(case, outputs)
        pairs = [(o, g) for o, g in zip(outputs, gouts, strict=True) if g is not None]
        wrt = [inputs.tensors[n] for n in inputs.differentiable]
        if pairs:
            got = torch.autograd.grad(
                [o for o, _ in pairs],
                wrt,
                [g.to(dtype=o.dtype, device=o.device) for o, g in pairs],
                allow_unused=True,
            )
        else:
            got = tuple(None for _ in wrt)  # type: ignore[misc]
        grads = dict(zip(inputs.differentiable, got, strict=True))
    return outputs, grads


def core_function(impl: Impl, case: Case) -> Callable[..., Any]:
    """The impl's callable for a case: the core itself, or the module built on it."""
    if "module" in case.tags:
        if impl.modules and case.core in impl.modules:  # the impl brings its own module
            return functools.partial(impl.modules[case.core], impl.fn)
        mech = REGISTRY.mechanisms[case.mechanism]
        return functools.partial(mech.module(case.core).forward, impl.fn)
    return impl.fn


def case_inputs(case: Case) -> Inputs:
    mech = REGISTRY.mechanisms[case.mechanism]
    if "module" in case.tags:
        return mech.module(case.core).make_inputs(case)
    return mech.make_inputs(case)


def naive_too_large(mech: Mechanism, case: Case, grads: bool = False) -> str | None:
    """Why the naive loops are too slow for ``case`` (with gradients if ``grads``), or ``None``."""
    if "module" in case.tags or mech.naive_work is None:
        return None
    work = mech.naive_work(case)
    budget = NAIVE_GRAD_WORK_BUDGET if grads else NAIVE_WORK_BUDGET
    if work > budget:
        what = "forward+backward" if grads else "forward"
        return f"too large for the naive reference ({work:,} inner iterations > {what} budget {budget:,})"
    return None


def reference(ctx: Context, case: Case, grads: bool = True) -> Reference:
    """Float64 CPU outputs (and gradients) of the naive impl (vectorized when too large)."""

    def make() -> Reference:
        mech = REGISTRY.mechanisms[case.mechanism]
        impl = REGISTRY.reference(case.mechanism)
        label = f"{impl.name}(float64)"
        if naive_too_large(mech, case, want_grads):
            impl = REGISTRY.vectorized(case.mechanism)
            label = f"{impl.name}(float64; naive over budget)"
        inputs = case_inputs(case).to(torch.float64, "cpu")
        outputs, grads = forward_backward(core_function(impl, case), inputs, case, want_grads, f"reference {impl.name}")
        # an input the output does not depend on has gradient zero: an impl that leaks one is caught
        zeros = {k: torch.zeros_like(inputs.tensors[k]).detach() for k, g in grads.items() if g is None}
        return Reference(
            tuple(o.detach() for o in outputs),
            {**{k: g.detach() for k, g in grads.items() if g is not None}, **zeros},
            label,
        )

    want_grads = grads
    # the mechanism object's identity: a mechanism redefined in this process gets fresh references
    key = f"{id(REGISTRY.mechanisms[case.mechanism])}|{case.shape_id}|grads="
    if not grads and f"{key}True" in _REFERENCES:  # the outputs of a gradient reference serve too
        return _REFERENCES.get(f"{key}True")
    return _REFERENCES.get_or_make(f"{key}{grads}", make)


class _ReferenceCache:
    """Float64 references shared by every Context of this process, least recently used
    first out past ``max_bytes``: a case's reference depends only on the case (inputs are
    seeded from it) and the built-in reference impls, so `verify` of several impls, or
    several suites with the same case, compute the slow naive loops once."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[Reference, int]] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> Reference:
        self._items.move_to_end(key)
        return self._items[key][0]

    def get_or_make(self, key: str, make: Callable[[], Reference]) -> Reference:
        if key in self._items:
            return self.get(key)
        ref = make()
        size = sum(t.numel() * t.element_size() for t in (*ref.outputs, *ref.grads.values()))
        self._items[key] = (ref, size)
        while len(self._items) > 1 and sum(n for _, n in self._items.values()) > self.max_bytes:
            self._items.popitem(last=False)
        return ref

    def clear(self) -> None:
        self._items.clear()


_REFERENCES = _ReferenceCache()


def pytorch_baseline(ctx: Context, case: Case, dtype: str, device: str) -> Reference | None:
    """The built-in vectorized impl run in the case dtype (rule K's ``pt``)."""

    def make() -> Reference | None:
        try:
            impl = REGISTRY.vectorized(case.mechanism)
        except Exception:
            return None
        if impl.unsupported_reason(case, dtype, device):
            return None
        inputs = case_inputs(case).to(DTYPES[dtype], device)
        outputs, grads = forward_backward(core_function(impl, case), inputs, case, impl.backward, impl.name)
        return Reference(
            tuple(o.detach().cpu().double() for o in outputs),
            {k: g.detach().cpu().double() for k, g in grads.items() if g is not None},
            impl.name,
        )

    return ctx.cached(ctx._pts, f"{case.shape_id}|{dtype}|{device}", make)  # type: ignore[no-any-return]


def _row(
    task: Task,
    impl: Impl,
    check: str,
    status: str,
    detail: str = "",
    reference_label: str = "",
    cmp: Comparison | None = None,
    ctx: Context | None = None,
) -> CheckRow:
    case_id = task.case.case_id(task.dtype, task.device)
    expected = ""
    if ctx is not None and status == "fail":
        xf = ctx.suite.expected_failure(impl.name, check, case_id)
        if xf is not None:
            expected = xf.reason
    return CheckRow(
        mechanism=task.case.mechanism,
        impl=impl.name,
        kind=impl.kind,
        case=task.case.shape_id,
        dtype=task.dtype,
        device=task.device,
        check=check,
        status=status,
        max_abs_err=cmp.max_abs_err if cmp else None,
        max_rel_err=cmp.max_rel_err if cmp else None,
        atol=cmp.atol if cmp else None,
        rtol=cmp.rtol if cmp else None,
        detail=detail or (cmp.detail if cmp else ""),
        case_name=task.case.name,
        reference=reference_label,
        expected=expected,
        task=task.key,
    )


def first_check(task: Task) -> str:
    """The check name a task's skip or error row is filed under."""
    return {
        "case": "forward",
        "property": f"property:{task.detail}",
        "gradcheck": "gradcheck",
        "module": f"module:{task.case.core}:forward",
        "opcheck": "opcheck",
        "scaling": f"scaling:{task.detail}",
    }[task.kind]


def predicted_bytes(case: Case, dtype: str) -> int | None:
    """Predicted peak bytes of a case: the mechanism's ``predicted_peak`` or attention-map model."""
    mech = REGISTRY.mechanisms[case.mechanism]
    if mech.memory is None or "module" in case.tags:
        return None
    model = mech.memory(case, DTYPES[dtype])
    for key in ("predicted_peak", "attention_map"):
        if key in model:
            return int(model[key])
    return None


def execute(task: Task, ctx: Context) -> list[Row]:
    """Runs one task; never raises (an exception becomes an ``error`` row). A failure the
    suite lists under ``expected_failures`` carries its reason (and does not fail the run)."""
    rows = _execute(task, ctx)
    for row in rows:
        if isinstance(row, CheckRow) and row.status == "fail" and not row.expected:
            xf = ctx.suite.expected_failure(row.impl, row.check, task.case.case_id(task.dtype, task.device))
            if xf is not None:
                row.expected = xf.reason
    return rows


def _execute(task: Task, ctx: Context) -> list[Row]:
    impl = REGISTRY.impls[task.case.mechanism][task.impl]
    check = first_check(task)
    reason = cuda_unavailable_reason(task.device) or impl.unsupported_reason(task.case, task.dtype, task.device)
    if reason:
        return [_row(task, impl, check, "skip", reason)]
    budget = ctx.options.max_memory
    predicted = predicted_bytes(task.case, task.dtype) if budget else None
    if budget and predicted and predicted > budget:
        return [
            _row(
                task,
                impl,
                check,
                "skip",
                f"predicted memory {predicted:,} B > budget {budget:,} B (--max-memory / suite max_memory)",
            )
        ]
    try:
        if task.kind == "case":
            return _execute_case(task, impl, ctx)
        if task.kind == "module":
            return _execute_case(task, impl, ctx, module=True)
        if task.kind == "property":
            return _execute_property(task, impl, ctx)
        if task.kind == "gradcheck":
            return _execute_gradcheck(task, impl, ctx)
        if task.kind == "scaling":
            return _execute_scaling(task, impl, ctx)
        return _execute_opcheck(task, impl)
    except Exception as exc:
        return [_row(task, impl, check, "error", error_detail(exc))]


def error_detail(exc: BaseException) -> str:
    """``Type: message (at file:line)`` from the innermost frame: one line a person can act on."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    message = " ".join(str(exc).split())[:500]
    lowered = message.lower()
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or any(
        k in lowered for k in ("out of memory", "not enough memory", "cannot allocate memory")
    ):
        return f"out of memory: {message}{where}"
    return f"{type(exc).__name__}: {message}{where}"


def _execute_case(task: Task, impl: Impl, ctx: Context, module: bool = False) -> list[Row]:
    case, dtype, device = task.case, task.dtype, task.device
    mech = REGISTRY.mechanisms[case.mechanism]
    prefix = f"module:{case.core}:" if module else ""
    if impl.kind == "naive" and not module:
        too_large = naive_too_large(mech, case, impl.backward and "backward" in ctx.suite.checks)
        if too_large:
            return [_row(task, impl, "forward", "skip", too_large)]
    ref = reference(ctx, case)
    pt = pytorch_baseline(ctx, case, dtype, device)
    tol = ctx.suite.tolerance(dtype)
    rule = tol.enforced(dtype, ctx.profile.name)
    k = tol.k if tol.k is not None else mech.rule_k
    fn = core_function(impl, case)
    inputs = case_inputs(case).to(DTYPES[dtype], device)

    do_backward = impl.backward and "backward" in ctx.suite.checks
    outputs, grads = forward_backward(fn, inputs, case, do_backward, impl.name)
    _check_contract(outputs, ref.outputs, dtype, device, impl.name)
    rows: list[Row] = []
    out_cmp = worst(
        [
            compare(o, r, pt.outputs[i] if pt else None, dtype, tol, rule, k, "out" if i == 0 else f"out[{i}]")
            for i, (o, r) in enumerate(zip(outputs, ref.outputs, strict=True))
        ]
    )
    rows.append(
        _row(
            task,
            impl,
            prefix + "forward",
            "pass" if out_cmp.passed else "fail",
            reference_label=ref.label,
            cmp=out_cmp,
            ctx=ctx,
        )
    )
    all_passed = out_cmp.passed
    if do_backward:
        if module:
            cmps = [
                compare(grads.get(name), g, pt.grads.get(name) if pt else None, dtype, tol, rule, k, f"grad {name}")
                for name, g in ref.grads.items()
            ]
            c = worst(cmps)
            rows.append(
                _row(
                    task,
                    impl,
                    prefix + "backward",
                    "pass" if c.passed else "fail",
                    reference_label=ref.label,
                    cmp=c,
                    ctx=ctx,
                )
            )
            all_passed &= c.passed
        else:
            for name, g in ref.grads.items():
                got = grads.get(name)
                if got is None and not bool(g.any()):
                    got = torch.zeros_like(g)  # no gradient where none is expected
                c = compare(got, g, pt.grads.get(name) if pt else None, dtype, tol, rule, k, f"grad {name}")
                rows.append(
                    _row(
                        task,
                        impl,
                        f"backward:{name}",
                        "pass" if c.passed else "fail",
                        reference_label=ref.label,
                        cmp=c,
                        ctx=ctx,
                    )
                )
                all_passed &= c.passed
    elif impl.backward:
        rows.append(_row(task, impl, prefix + "backward", "skip", "backward check disabled by the suite"))
    else:
        rows.append(_row(task, impl, prefix + "backward", "skip", f"{impl.name} is forward-only"))
    if module:
        return rows
    checks = ctx.suite.checks
    if "timing" in checks and ctx.options.timing:
        if impl.kind not in ctx.profile.timing.kinds:
            rows.append(
                _row(
                    task,
                    impl,
                    "timing",
                    "skip",
                    f"{impl.kind} impls are not timed (suite timing.kinds = {list(ctx.profile.timing.kinds)})",
                )
            )
        elif not all_passed:
            rows.append(_row(task, impl, "timing", "skip", "not timed: equivalence failed on this case"))
        else:
            rows.extend(_measure(task, impl, ctx, fn, inputs, mech))
    return rows


def _check_contract(
    outputs: tuple[torch.Tensor, ...], ref: tuple[torch.Tensor, ...], dtype: str, device: str, who: str
) -> None:
    if len(outputs) != len(ref):
        raise ImplContractError(f"{who} returned {len(outputs)} tensors, expected {len(ref)}")
    for i, (o, r) in enumerate(zip(outputs, ref, strict=True)):
        what = "output" if len(ref) == 1 else f"output {i}"
        if tuple(o.shape) != tuple(r.shape):
            raise ImplContractError(f"{who} {what} has shape {tuple(o.shape)}, expected {tuple(r.shape)}")
        if o.device.type != device:
            raise ImplContractError(f"{who} {what} is on {o.device}, expected {device}")
        if r.is_floating_point() and o.dtype != DTYPES[dtype]:
            raise ImplContractError(f"{who} {what} has dtype {o.dtype}, expected {DTYPES[dtype]}")


def _measure(
    task: Task, impl: Impl, ctx: Context, fn: Callable[..., Any], inputs: Inputs, mech: Mechanism
) -> list[Row]:
    timing = ctx.profile.timing
    case, device = task.case, task.device
    flops_fwd = mech.flops(case) if mech.flops else None
    model = mech.memory(case, DTYPES[task.dtype]) if mech.memory else {}
    rows: list[Row] = []
    for pass_ in timing.passes:
        if pass_ == "fwd+bwd" and not (impl.backward and inputs.differentiable):
            continue
        run = _pass_callable(pass_, fn, inputs, case, impl.name)
        result = time_fn(run, timing, device)
        peak = peak_extra_bytes(run, device) if "memory" in ctx.suite.checks else None
        saved = None
        if pass_ == "fwd+bwd" and "memory" in ctx.suite.checks:
            saved = saved_bytes(lambda: inputs.call(fn), list(inputs.tensors.values()))
        flops = None if flops_fwd is None else (flops_fwd if pass_ == "fwd" else 3.0 * flops_fwd)
        instructions = _instructions(task, impl, ctx, pass_)
        rows.append(
            PerfRow(
                mechanism=case.mechanism,
                impl=impl.name,
                kind=impl.kind,
                case=case.shape_id,
                dtype=task.dtype,
                device=device,
                pass_=pass_,
                median_s=result.median,
                iqr_s=result.iqr,
                runs=result.runs,
                peak_bytes=peak,
                saved_bytes=saved,
                flops=flops,
                case_name=case.name,
                threads=torch.get_num_threads(),
                gflops_per_s=(flops / result.median / 1e9) if flops and result.median > 0 else None,
                model_bytes=model.get("attention_map"),
                bytes_moved=(
                    mech.traffic(case, DTYPES[task.dtype], pass_) if mech.traffic else _bytes_moved(inputs, pass_)
                ),
                samples_s=";".join(f"{s:.6g}" for s in result.samples),
                task=task.key,
                instructions=instructions,
                code=impl.code_hash,
            )
        )
    return rows


def _instructions(task: Task, impl: Impl, ctx: Context, pass_: str) -> int | None:
    """Callgrind instruction count when the suite asks for it on this case (tag ``callgrind``)."""
    if not ctx.suite.regression.get("callgrind") or "callgrind" not in task.case.tags or task.device != "cpu":
        return None
    from attnbench.measure import callgrind

    if callgrind.unavailable_reason():
        return None
    return callgrind.instructions(
        task.case.mechanism,
        impl.name,
        task.case.core,
        dict(task.case.params),
        task.case.tags,
        task.dtype,
        pass_,
        list(REGISTRY.user_files),
    )


def _pass_callable(pass_: str, fn: Callable[..., Any], inputs: Inputs, case: Case, who: str) -> Callable[[], object]:
    """A closure doing one whole pass: ``fwd`` under no_grad, or ``fwd+bwd`` with fixed upstream gradients."""
    if pass_ == "fwd":
        detached = Inputs({n: t.detach() for n, t in inputs.tensors.items()}, inputs.kwargs)

        def run_fwd() -> object:
            with torch.no_grad():
                return detached.call(fn)

        return run_fwd
    outs = as_outputs(inputs.call(fn), who)
    gouts = [
        g.to(dtype=o.dtype, device=o.device) if g is not None else None
        for o, g in zip(outs, grad_outputs(case, outs), strict=True)
    ]
    del outs
    wrt = [inputs.tensors[n] for n in inputs.differentiable]

    def run_fwd_bwd() -> object:
        outs = as_outputs(inputs.call(fn), who)
        pairs = [(o, g) for o, g in zip(outs, gouts, strict=True) if g is not None]
        return torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)

    return run_fwd_bwd


def _bytes_moved(inputs: Inputs, pass_: str) -> float:
    """Compulsory traffic: inputs read + output written (×3 with backward), an ideal lower bound."""
    nbytes = sum(t.numel() * t.element_size() for t in inputs.tensors.values())
    return float(2 * nbytes if pass_ == "fwd" else 6 * nbytes)


def _execute_scaling(task: Task, impl: Impl, ctx: Context) -> list[Row]:
    """Times one impl along a sweep (each point checked first) and judges the fitted exponent."""
    from attnbench.checks import scaling

    axis = next(a for a in ctx.profile.scaling if a.name == task.detail and a.mechanism == task.case.mechanism)
    mech = REGISTRY.mechanisms[axis.mechanism]
    tol = ctx.suite.tolerance(task.dtype)
    rule = tol.enforced(task.dtype, ctx.profile.name)
    k = tol.k if tol.k is not None else mech.rule_k
    rows: list[Row] = []
    points: dict[str, list[dict[str, Any]]] = {}
    check = f"scaling:{axis.name}"
    for value, case in scaling.axis_cases(axis):
        point_task = Task("scaling", impl.name, case, task.dtype, task.device, axis.name)
        reason = impl.unsupported_reason(case, task.dtype, task.device)
        if reason:
            rows.append(_row(point_task, impl, check, "skip", f"{axis.axis}={value}: {reason}"))
            break
        fn = core_function(impl, case)
        inputs = case_inputs(case).to(DTYPES[task.dtype], task.device)
        with torch.no_grad():
            outputs = as_outputs(inputs.call(fn), impl.name)
        ref = reference(ctx, case, grads=False)
        pt = pytorch_baseline(ctx, case, task.dtype, task.device) if rule == "K" else None
        _check_contract(outputs, ref.outputs, task.dtype, task.device, impl.name)
        cmp = worst(
            [
                compare(o, r, pt.outputs[i] if pt else None, task.dtype, tol, rule, k, "out")
                for i, (o, r) in enumerate(zip(outputs, ref.outputs, strict=True))
            ]
        )
        if not cmp.passed:
            rows.append(
                _row(
                    point_task,
                    impl,
                    check,
                    "fail",
                    f"{axis.axis}={value}: not timed, equivalence failed: {cmp.detail}",
                    cmp=cmp,
                )
            )
            break
        for perf in _measure(point_task, impl, ctx, fn, inputs, mech):
            assert isinstance(perf, PerfRow)
            perf.case_name = f"scaling:{axis.name}:{value}"
            rows.append(perf)
            points.setdefault(perf.pass_, []).append(
                {"value": value, "median_s": perf.median_s, "peak_bytes": perf.peak_bytes, "flops": perf.flops}
            )
    for pass_, pts in points.items():
        fits = scaling.fits_for(pts, axis)
        status, detail = scaling.verdict(fits["time"], fits["theory"], axis.tolerance)
        fit = fits["time"]
        row = _row(task, impl, check, status, f"{pass_}: {detail}")
        if fit is not None:
            row.statistic = fit.exponent
            row.max_abs_err = abs(fit.exponent - fits["theory"])
            row.atol = axis.tolerance
        rows.append(row)
    for r in rows:
        r.task = task.key  # one task for resume and sharding, whatever point a row is about
    return rows


def _probe_contract(task: Task, impl: Impl, ctx: Context) -> None:
    """One forward in the task's dtype: a wrong type, shape, dtype or device is an error, not a failure."""
    ref = reference(ctx, task.case, grads=False)
    inputs = case_inputs(task.case).to(DTYPES[task.dtype], task.device)
    with torch.no_grad():
        outputs = as_outputs(inputs.call(core_function(impl, task.case)), impl.name)
    _check_contract(outputs, ref.outputs, task.dtype, task.device, impl.name)


def _execute_property(task: Task, impl: Impl, ctx: Context) -> list[Row]:
    if impl.kind == "naive":
        too_large = naive_too_large(REGISTRY.mechanisms[task.case.mechanism], task.case)
        if too_large:
            return [_row(task, impl, first_check(task), "skip", too_large)]
    _probe_contract(task, impl, ctx)
    mech = REGISTRY.mechanisms[task.case.mechanism]
    props = {p.name: p for p in mech.properties}
    if "module" in task.case.tags:
        props = {p.name: p for p in mech.module(task.case.core).properties}
    prop = props[task.detail]
    # a module property gets the module bound to this impl (its own module, if it brings one)
    outcome = prop.fn(core_function(impl, task.case), task.case, DTYPES[task.dtype], task.device)
    status = "pass" if outcome.passed else "fail"
    cmp = Comparison(outcome.passed, outcome.max_abs_err, float("nan"), outcome.atol, 0.0, outcome.detail)
    row = _row(task, impl, f"property:{prop.name}", status, outcome.detail or prop.description, cmp=cmp)
    row.statistic, row.p_value = outcome.statistic, outcome.p_value
    return [row]


def _execute_gradcheck(task: Task, impl: Impl, ctx: Context) -> list[Row]:
    if not impl.backward:
        return [_row(task, impl, "gradcheck", "skip", f"{impl.name} is forward-only")]
    case = task.case
    mech = REGISTRY.mechanisms[case.mechanism]
    if impl.kind == "naive":
        too_large = naive_too_large(mech, case, grads=True)
        if too_large:
            return [_row(task, impl, "gradcheck", "skip", too_large)]
    _probe_contract(task, impl, ctx)
    inputs = case_inputs(case).to(torch.float64, task.device)
    # naive loops cost ~µs per scalar op: gradcheck's fast mode (one random projection) keeps them affordable
    ok, detail = run_gradcheck(
        core_function(impl, case),
        inputs,
        nondet_tol=1e-12 if impl.kind == "ext" else 0.0,
        fast_mode=impl.kind == "naive",
    )
    return [_row(task, impl, "gradcheck", "pass" if ok else "fail", detail)]


def _execute_opcheck(task: Task, impl: Impl) -> list[Row]:
    assert impl.opcheck is not None
    samples = impl.opcheck(task.case, DTYPES[task.dtype], task.device)
    rows: list[Row] = []
    for op, args, kwargs in samples:
        name = str(getattr(op, "__name__", op))
        try:
            torch.library.opcheck(op, args, kwargs)
            rows.append(_row(task, impl, f"opcheck:{name}", "pass", "torch.library.opcheck: all tests passed"))
        except Exception as exc:
            rows.append(_row(task, impl, f"opcheck:{name}", "fail", error_detail(exc)))
    return rows


def remeasure(task: Task, ctx: Context, pass_: str) -> list[float]:
    """More timing samples of one (impl, case, dtype, device, pass), for an AMBIGUOUS verdict."""
    impl = REGISTRY.impls[task.case.mechanism][task.impl]
    inputs = case_inputs(task.case).to(DTYPES[task.dtype], task.device)
    run = _pass_callable(pass_, core_function(impl, task.case), inputs, task.case, impl.name)
    return list(time_fn(run, ctx.profile.timing, task.device).samples)


def remeasure_interleaved(task: Task, ctx: Context, pass_: str, old: Impl) -> tuple[list[float], list[float]]:
    """Timing samples of ``old`` and of the task's impl measured alternately on the same inputs."""
    new = REGISTRY.impls[task.case.mechanism][task.impl]
    inputs = case_inputs(task.case).to(DTYPES[task.dtype], task.device)
    runs = tuple(
        _pass_callable(pass_, core_function(impl, task.case), inputs, task.case, impl.name) for impl in (old, new)
    )
    a, b = time_interleaved((runs[0], runs[1]), ctx.profile.timing, task.device)
    return list(a.samples), list(b.samples)


def iter_rows(tasks: Sequence[Task], ctx: Context) -> Iterator[tuple[Task, list[Row]]]:
    """Runs tasks in this process, yielding each task's rows as soon as it ends."""
    for task in tasks:
        yield task, execute(task, ctx)
