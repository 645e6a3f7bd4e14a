// Residual attention: out = (1 + f(m)) ⊙ t, the per-element math written once for
// the CPU (residual_attention.cpp) and CUDA (residual_attention_cuda.cu) kernels.
// No ATen here. Kinds (specs/residual_attention.md §2):
//   mixed   f = sigmoid(m)
//   channel f = m / n,  n = max(‖m[b,:,i]‖₂, 1e-12)            (stats: n per (b, i))
//   spatial f = sigmoid((m − μ)·ρ), ρ = 1/√(σ² + 1e-5)          (stats: μ, ρ per (b, c))
// Backward never stores f: it is recomputed from m and the saved statistics.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace attnbench_ran {

enum Kind : int64_t { kMixed = 0, kChannel = 1, kSpatial = 2 };

constexpr double kNormEps = 1e-12;
constexpr double kVarEps = 1e-5;

template <typename scalar_t>
struct acc_type {
  using type = float;
};
template <>
struct acc_type<double> {
  using type = double;
};
template <typename scalar_t>
using acc_type_t = typename acc_type<scalar_t>::type;

template <typename acc_t>
HOST_DEVICE inline acc_t sigmoid(acc_t v) {
  return acc_t(1) / (acc_t(1) + exp(-v));
}

// --- forward: 1 + f for each kind -------------------------------------------------

template <typename acc_t>
HOST_DEVICE inline acc_t clamped_norm(acc_t sumsq) {
  const acc_t n = sqrt(sumsq);
  return n > acc_t(kNormEps) ? n : acc_t(kNormEps);
}

template <typename acc_t>
HOST_DEVICE inline acc_t inv_std(acc_t biased_var) {
  return acc_t(1) / sqrt(biased_var + acc_t(kVarEps));
}

template <typename acc_t>
HOST_DEVICE inline acc_t mixed_out(acc_t t, acc_t m) {
  return (acc_t(1) + sigmoid(m)) * t;
}

template <typename acc_t>
HOST_DEVICE inline acc_t channel_out(acc_t t, acc_t m, acc_t norm) {
  return (acc_t(1) + m / norm) * t;
}

template <typename acc_t>
HOST_DEVICE inline acc_t spatial_out(acc_t t, acc_t m, acc_t mean, acc_t rstd) {
  return (acc_t(1) + sigmoid((m - mean) * rstd)) * t;
}

// --- backward -----------------------------------------------------------------------

// mixed: dt = g(1 + s), dm = g·t·s(1 − s).
template <typename acc_t>
HOST_DEVICE inline void mixed_grads(acc_t g, acc_t t, acc_t m, acc_t& dt, acc_t& dm) {
  const acc_t s = sigmoid(m);
  dt = g * (acc_t(1) + s);
  dm = g * t * s * (acc_t(1) - s);
}

// channel, per element: a = g·t is the gradient w.r.t. f; the reduction over C is
// dot = Σ_c f_c·a_c. dm = (a − f·dot)/n, or a/n where the norm is clamped (n = eps,
// a constant denominator). dt = g(1 + f).
template <typename acc_t>
HOST_DEVICE inline acc_t channel_dot_term(acc_t g, acc_t t, acc_t m, acc_t norm) {
  return (m / norm) * g * t;
}

template <typename acc_t>
HOST_DEVICE inline void channel_grads(acc_t g, acc_t t, acc_t m, acc_t norm, acc_t dot, acc_t& dt, acc_t& dm) {
  const acc_t f = m / norm;
  const acc_t a = g * t;
  dt = g * (acc_t(1) + f);
  dm = norm > acc_t(kNormEps) ? (a - f * dot) / norm : a / norm;
}

// spatial, per element: h = g·t·s(1 − s) is the gradient w.r.t. x̂ = (m − μ)ρ; the
// reductions over H·W are mean(h) and mean(h·x̂); instance norm's backward is
// dm = ρ·(h − mean(h) − x̂·mean(h·x̂)); dt = g(1 + s).
template <typename acc_t>
HOST_DEVICE inline void spatial_h(acc_t g, acc_t t, acc_t m, acc_t mean, acc_t rstd, acc_t& h, acc_t& xhat) {
  xhat = (m - mean) * rstd;
  const acc_t s = sigmoid(xhat);
  h = g * t * s * (acc_t(1) - s);
}

template <typename acc_t>
HOST_DEVICE inline void spatial_grads(acc_t g, acc_t t, acc_t m, acc_t mean, acc_t rstd, acc_t mean_h,
                                      acc_t mean_hx, acc_t& dt, acc_t& dm) {
  const acc_t xhat = (m - mean) * rstd;
  const acc_t s = sigmoid(xhat);
  const acc_t h = g * t * s * (acc_t(1) - s);
  dt = g * (acc_t(1) + s);
  dm = rstd * (h - mean_h - xhat * mean_hx);
}

}  // namespace attnbench_ran
