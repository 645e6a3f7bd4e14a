"""Hard attention (specs/hard_attention.md): four cores with explicit noise inputs.

- ``hard_attention.glimpse``: multi-scale retina crops around a location.
- ``hard_attention.sample_location``: Gaussian location policy, noise given.
- ``hard_attention.reinforce_loss``: the REINFORCE surrogate loss.
- ``hard_attention.hard_select``: Gumbel-max categorical selection with an
  optional straight-through gradient.

All randomness is an input, so every impl computes the same deterministic
function (compared with the float64 naive reference); the distributions are
checked separately by statistical properties (``statistics.py``) that run on
the cases tagged ``statistical``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.autograd.gradcheck import GradcheckError

from attnbench.cases import Case
from attnbench.checks.properties import close, property_atol
from attnbench.checks.statistical import generator
from attnbench.registry import Inputs, Mechanism, Param, Property, PropertyOutcome, define_mechanism
from impls.hard_attention import statistics as st
from impls.hard_attention import vectorized

Fn = Callable[..., Any]


def statistical(case: Case) -> bool:
    return "statistical" in case.tags


def _seed(case: Case, role: str) -> int:
    """The check's fixed seed, derived from the case id (``case.generator("stat:<role>")``)."""
    return int(generator(case, role).initial_seed())


# -- glimpse (§2.1) ---------------------------------------------------------------------

GLIMPSE_PARAMS = {
    "B": Param(int, min=1, doc="batch"),
    "C": Param(int, min=1, doc="channels"),
    "H": Param(int, min=1, doc="height"),
    "W": Param(int, min=1, doc="width"),
    "size": Param(int, min=1, doc="glimpse side at the finest scale"),
    "scales": Param(int, min=1, doc="number of scales (patch side size·2^s)"),
    "loc": Param(
        str,
        choices=("random", "spec"),
        default="random",
        doc="random: uniform in [−1.2, 1.2]; spec: batch element b at the spec's row b mod 5 (corners incl.)",
    ),
    "lx": Param(float, optional=True, doc="location x for every batch element (overrides loc)"),
    "ly": Param(float, optional=True, doc="location y for every batch element (overrides loc)"),
}


SPEC_LOCATIONS = ((0.0, 0.0), (-1.0, -1.0), (1.0, 1.0), (0.37, -0.81), (-0.999, 0.999))
"""The loc rows of specs/hard_attention.md §4: centre, both corners, inside, just inside a corner."""


def glimpse_validate(params: Mapping[str, Any]) -> list[str]:
    if (params.get("lx") is None) != (params.get("ly") is None):
        return ["lx and ly are given together (or neither: random locations)"]
    return []


def glimpse_inputs(case: Case) -> Inputs:
    """x: [B, C, H, W] ~ N(0, 1); loc: [B, 2] fixed (lx, ly), the spec rows, or uniform in [−1.2, 1.2]."""
    B, C, H, W = (case[k] for k in ("B", "C", "H", "W"))
    if case.get("lx") is None and case.get("loc", "random") == "spec":
        loc = torch.tensor([SPEC_LOCATIONS[b % len(SPEC_LOCATIONS)] for b in range(B)], dtype=torch.float64)
    elif case.get("lx") is None:
        loc = case.rand("loc", B, 2, low=-1.2, high=1.2)
    else:
        loc = torch.tensor([[case["lx"], case["ly"]]], dtype=torch.float64).repeat(B, 1)
    return Inputs(
        {"x": case.randn("x", B, C, H, W), "loc": loc},
        kwargs={"size": case["size"], "scales": case["scales"]},
        differentiable=("x",),
    )


def glimpse_reads(case: Case) -> int:
    """Pixels read: Σ_s B·C·(size·2^s)² = B·C·size²·(4^scales − 1)/3."""
    return case["B"] * case["C"] * case["size"] ** 2 * (4 ** case["scales"] - 1) // 3


GLIMPSE = define_mechanism(
    Mechanism(
        name="hard_attention.glimpse",
        core="glimpse",
        params=GLIMPSE_PARAMS,
        make_inputs=glimpse_inputs,
        validate=glimpse_validate,
        naive_work=glimpse_reads,
        flops=lambda case: float(glimpse_reads(case)),
        doc="RAM retina (Mnih et al. 2014): glimpse(x, loc, size, scales), zero padding, f×f average pooling.",
    )
)


# -- sample_location (§2.2) --------------------------------------------------------------

POLICY_PARAMS = {
    "B": Param(int, min=1, doc="batch"),
    "sigma": Param(float, min=1e-6, default=0.5, doc="policy standard deviation"),
}


def policy_inputs(case: Case) -> Inputs:
    """mu: [B, 2] ~ N(0, 0.6²) (some samples leave [−1, 1]); sigma: 0-d tensor (not differentiated); noise ~ N(0, 1).

    sigma travels as a tensor so the positional call order (mu, sigma, noise) holds.
    """
    B = case["B"]
    return Inputs(
        {
            "mu": case.randn("mu", B, 2, std=0.6),
            "sigma": torch.tensor(case["sigma"], dtype=torch.float64),
            "noise": case.randn("noise", B, 2),
        },
        differentiable=("mu",),
    )


def prop_score(fn: Fn, case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """∂Σ log_prob/∂mu = noise/σ (the sample is a constant; log_prob at the unclamped sample)."""
    inputs = policy_inputs(case).to(dtype, device)
    _, _, log_prob = inputs.call(fn)
    (grad,) = torch.autograd.grad(log_prob.sum(), inputs.tensors["mu"], allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(inputs.tensors["mu"])
    expected = inputs.tensors["noise"].detach() / inputs.tensors["sigma"].detach()
    return close(grad, expected, property_atol(dtype, float(expected.abs().max())), "∂log_prob/∂mu = noise/σ")


def prop_log_prob_gradcheck(fn: Fn, case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """gradcheck of mu ↦ log_prob with the sample held fixed (float64).

    gradcheck on ``sample_location(mu, σ, noise)`` itself does not apply: moving mu
    moves the sample (``loc_raw − mu = σ·noise`` stays put, finite differences
    give 0). Passing ``noise = detach((loc_raw − mu)/σ)`` keeps the sample fixed
    while autograd sees the score-function path only.
    """
    inputs = policy_inputs(case).to(torch.float64, device)
    sigma = inputs.tensors["sigma"].detach()
    loc_raw = (inputs.tensors["mu"] + sigma * inputs.tensors["noise"]).detach()

    def log_prob_of(mu: torch.Tensor) -> torch.Tensor:
        return fn(mu, sigma, ((loc_raw - mu) / sigma).detach())[2]  # type: ignore[no-any-return]

    mu = inputs.tensors["mu"].detach().clone().requires_grad_()
    try:
        ok = torch.autograd.gradcheck(log_prob_of, (mu,), raise_exception=True)
        detail = f"gradcheck of log_prob w.r.t. mu{tuple(mu.shape)}, sample fixed"
    except GradcheckError as exc:
        ok, detail = False, " ".join(str(exc).split())[:400]
    return PropertyOutcome(bool(ok), 0.0 if ok else float("inf"), 0.0, detail)


def _reinforce_property(toy: str, column: str, under_test: str) -> Property:
    def fn(impl_fn: Fn, case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
        if under_test == "sample_location":
            sample_fn, loss_fn = impl_fn, vectorized.reinforce_loss
            m = st.draws(impl_fn, "hard_attention.sample_location", st.M_REINFORCE)
        else:
            sample_fn, loss_fn = vectorized.sample_location, impl_fn
            m = st.draws(impl_fn, "hard_attention.reinforce_loss", st.M_REINFORCE)
        return st.reinforce_check(sample_fn, loss_fn, toy, column, m, _seed(case, toy), device=device)

    other = "vectorized reinforce_loss" if under_test == "sample_location" else "vectorized sample_location"
    return Property(
        f"reinforce_{toy}_{column}",
        fn,
        statistical,
        f"REINFORCE estimate unbiased on {toy}, column {column} (z-test, α={st.ALPHA:g}; with the {other})",
    )


def _reinforce_properties(under_test: str) -> tuple[Property, ...]:
    return tuple(_reinforce_property(t, c, under_test) for t in st.TOYS for c in ("x", "y"))


def prop_location_mean(fn: Fn, case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    m = st.draws(fn, "hard_attention.sample_location", st.M_LOCATION)
    return st.location_mean_check(fn, m, _seed(case, "location"), device=device)


def prop_location_covariance(fn: Fn, case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    m = st.draws(fn, "hard_attention.sample_location", st.M_LOCATION)
    return st.location_covariance_check(fn, m, _seed(case, "location"), device=device)


SAMPLE_LOCATION = define_mechanism(
    Mechanism(
        name="hard_attention.sample_location",
        core="sample_location",
        params=POLICY_PARAMS,
        make_inputs=policy_inputs,
        naive_work=lambda case: 2 * case["B"],
        flops=lambda case: 10.0 * case["B"],
        properties=(
            Property("score_is_noise_over_sigma", prop_score, description="∂log_prob/∂mu = noise/σ"),
            Property(
                "log_prob_gradcheck",
                prop_log_prob_gradcheck,
                lambda case: case["B"] <= 5,
                "gradcheck of log_prob w.r.t. mu with the sample held fixed",
            ),
            Property(
                "location_mean", prop_location_mean, statistical, "loc_raw mean = μ (χ² mean test, df=2, α=0.001)"
            ),
            Property(
                "location_covariance",
                prop_location_covariance,
                statistical,
                "loc_raw covariance = σ²I (χ² likelihood-ratio test, df=3, α=0.001)",
            ),
            *_reinforce_properties("sample_location"),
        ),
        doc="Gaussian location policy with explicit noise: (loc, loc_raw, log_prob); log_prob at the unclamped sample.",
    )
)


# -- reinforce_loss (§2.2) ---------------------------------------------------------------

LOSS_PARAMS = {
    "B": Param(int, min=1, doc="batch"),
    "T": Param(int, min=1, default=1, doc="glimpses (time steps)"),
    "baseline": Param(bool, default=True, doc="pass a baseline [B, T] (else None)"),
}


def loss_inputs(case: Case) -> Inputs:
    """log_prob: [B, T]; reward: [B] in {0, 1}-like N(0.5, 0.5²); baseline: [B, T] or None."""
    B, T = case["B"], case["T"]
    tensors = {"log_prob": case.randn("log_prob", B, T) - 1.5, "reward": 0.5 + case.randn("reward", B, std=0.5)}
    kwargs: dict[str, Any] = {}
    if case["baseline"]:
        tensors["baseline"] = 0.5 + case.randn("baseline", B, T, std=0.3)
    else:
        kwargs["baseline"] = None
    # reward and baseline are detached by definition: gradcheck would see their finite
    # differences, so only log_prob is compared; `advantage_detached` checks the others get none.
    return Inputs(tensors, kwargs=kwargs, differentiable=("log_prob",))


def prop_detached(fn: Fn, case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """reward and baseline receive no gradient from the REINFORCE loss (trained by their own loss)."""
    inputs = loss_inputs(case).to(dtype, device)
    names = [n for n in ("reward", "baseline") if n in inputs.tensors]
    for n in names:
        inputs.tensors[n].requires_grad_(True)
    loss = inputs.call(fn)
    grads = torch.autograd.grad(loss, [inputs.tensors[n] for n in names], allow_unused=True)
    worst = 0.0
    for g in grads:
        if g is not None:
            worst = max(worst, float(g.abs().max()))
    detail = "∂loss/∂reward = ∂loss/∂baseline = 0 (detached advantage)"
    if worst > 0:
        detail = f"reward/baseline receive gradient up to {worst:.3g}: the advantage is not detached"
    return PropertyOutcome(worst == 0.0, worst, 0.0, detail)


REINFORCE_LOSS = define_mechanism(
    Mechanism(
        name="hard_attention.reinforce_loss",
        core="reinforce_loss",
        params=LOSS_PARAMS,
        make_inputs=loss_inputs,
        naive_work=lambda case: case["B"] * case["T"],
        flops=lambda case: 3.0 * case["B"] * case["T"],
        properties=(
            Property("advantage_detached", prop_detached, description="no gradient to reward or baseline"),
            *_reinforce_properties("reinforce_loss"),
        ),
        doc="REINFORCE loss −(1/B) Σ log_prob · detach(reward − baseline).",
    )
)


# -- hard_select (§2.3) ------------------------------------------------------------------

SELECT_PARAMS = {
    "B": Param(int, min=1, doc="batch"),
    "N": Param(int, min=1, doc="items"),
    "D": Param(int, min=1, doc="value width"),
    "tau": Param(float, min=1e-6, default=1.0, doc="straight-through temperature"),
    "straight_through": Param(bool, default=False, doc="straight-through logits gradient"),
    "ties": Param(bool, default=False, doc="integer logits and zero noise: exact ties (lowest index wins)"),
}


def select_inputs(case: Case) -> Inputs:
    """logits: [B, N] ~ N(0, 1); values: [B, N, D]; gumbel = −ln(−ln U) (or zeros with integer logits: ties)."""
    B, N, D = case["B"], case["N"], case["D"]
    if case["ties"]:
        logits = torch.floor(case.randn("logits", B, N))
        logits[0] = 0.0  # an all-tied row
        gumbel = torch.zeros(B, N, dtype=torch.float64)
    else:
        logits = case.randn("logits", B, N)
        u = case.rand("gumbel", B, N).clamp_min(torch.finfo(torch.float64).tiny)
        gumbel = -torch.log(-torch.log(u))
    return Inputs(
        {"logits": logits, "values": case.randn("values", B, N, D), "gumbel": gumbel},
        kwargs={"tau": case["tau"], "straight_through": case["straight_through"]},
        differentiable=("logits", "values"),
    )


def surrogate(logits: torch.Tensor, values: torch.Tensor, gumbel: torch.Tensor, tau: float) -> torch.Tensor:
    """Σ_n softmax((logits + gumbel)/τ)_n · values_n: [B, D] (the straight-through surrogate)."""
    p = torch.softmax((logits + gumbel) / tau, dim=-1)
    return (p[:, :, None] * values).sum(1)


def prop_straight_through(fn: Fn, case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    """The straight-through logits gradient equals autograd's gradient of the smooth surrogate."""
    inputs = select_inputs(case).to(dtype, device)
    logits, values, gumbel = inputs.tensors.values()
    out = inputs.call(fn)
    gout = case.randn("gout_st", *out.shape).to(dtype=dtype, device=device)
    (got,) = torch.autograd.grad(out, logits, gout, allow_unused=True)
    if got is None:
        got = torch.zeros_like(logits)
    ref_logits = logits.detach().requires_grad_()
    (expected,) = torch.autograd.grad(surrogate(ref_logits, values.detach(), gumbel, case["tau"]), ref_logits, gout)
    scale = float(expected.abs().max()) + 1.0
    return close(got, expected, property_atol(dtype, scale), "∂/∂logits = ∂surrogate/∂logits")


def prop_gumbel(fn: Fn, case: Case, dtype: torch.dtype, device: str) -> PropertyOutcome:
    m = st.draws(fn, "hard_attention.hard_select", st.M_GUMBEL)
    return st.gumbel_check(fn, m, _seed(case, "gumbel"), device=device)


HARD_SELECT = define_mechanism(
    Mechanism(
        name="hard_attention.hard_select",
        core="hard_select",
        params=SELECT_PARAMS,
        make_inputs=select_inputs,
        naive_work=lambda case: case["B"] * (case["N"] + case["D"]),
        flops=lambda case: float(case["B"] * case["N"]),
        properties=(
            Property(
                "straight_through_surrogate",
                prop_straight_through,
                lambda case: bool(case["straight_through"]),
                "straight-through logits gradient = gradient of Σ softmax((l+g)/τ)·v",
            ),
            Property(
                "gumbel_max_frequencies",
                prop_gumbel,
                statistical,
                "selection frequencies = softmax(logits) (Pearson χ², df=N−1, α=0.001)",
            ),
        ),
        doc="Categorical hard attention by Gumbel-max (ties: lowest index), optional straight-through gradient.",
    )
)
