// Squeeze-and-Excitation: the per-element and per-(b, hidden) math, written once
// for the CPU (se.cpp) and CUDA (se_cuda.cu) kernels. No ATen here.
//
//   z[b,c] = mean x[b,c,:,:]     u[b,r] = relu(w1[r,:]·z[b,:] + b1[r])
//   s[b,c] = sigmoid(w2[c,:]·u[b,:] + b2[c])     out = x·s
// Backward (specs/se.md §2): ds = Σ g·x, dp2 = ds·s(1−s), du = w2ᵀdp2,
//   dp1 = du·[p1 > 0], dz = w1ᵀdp1, dx = g·s + dz/HW.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace attnbench_se {

// Accumulation type: float for float/half/bfloat16, double for double.
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

// Running sums of the MLP's dot products: double on the host, where these loops
// are scalar and a float sum over C = 2048 terms drifted up to 5x past the
// vectorized impl's (blocked BLAS) error; the accumulation type on the device.
#if defined(__CUDA_ARCH__)
template <typename acc_t>
using sum_t = acc_t;
#else
template <typename acc_t>
using sum_t = double;
#endif

template <typename acc_t>
HOST_DEVICE inline acc_t sigmoid(acc_t v) {
  return acc_t(1) / (acc_t(1) + exp(-v));
}

// u[r] = relu(Σ_c w1[r,c]·z[c] + b1[r]) for one batch element and one hidden unit.
template <typename scalar_t, typename acc_t>
HOST_DEVICE inline acc_t hidden_unit(const scalar_t* w1_row, const scalar_t* b1, const acc_t* z, int64_t C,
                                     int64_t r) {
  sum_t<acc_t> pre = b1 ? sum_t<acc_t>(b1[r]) : sum_t<acc_t>(0);
#if !defined(__CUDA_ARCH__)
#pragma omp simd reduction(+ : pre)
#endif
  for (int64_t c = 0; c < C; ++c) pre += sum_t<acc_t>(w1_row[c]) * sum_t<acc_t>(z[c]);
  return pre > sum_t<acc_t>(0) ? acc_t(pre) : acc_t(0);
}

// s[c] = sigmoid(Σ_r w2[c,r]·u[r] + b2[c]) for one batch element and one channel.
template <typename scalar_t, typename acc_t>
HOST_DEVICE inline acc_t gate(const scalar_t* w2_row, const scalar_t* b2, const acc_t* u, int64_t Cr, int64_t c) {
  sum_t<acc_t> pre = b2 ? sum_t<acc_t>(b2[c]) : sum_t<acc_t>(0);
#if !defined(__CUDA_ARCH__)
#pragma omp simd reduction(+ : pre)
#endif
  for (int64_t r = 0; r < Cr; ++r) pre += sum_t<acc_t>(w2_row[r]) * sum_t<acc_t>(u[r]);
  return sigmoid(acc_t(pre));
}

// dp2 = ds·s·(1 − s): through the sigmoid.
template <typename acc_t>
HOST_DEVICE inline acc_t gate_pre_grad(acc_t ds, acc_t s) {
  return ds * s * (acc_t(1) - s);
}

// dp1[r] = (Σ_c w2[c,r]·dp2[c])·[u[r] > 0]: through the up-projection and the ReLU
// (u > 0 ⇔ p1 > 0). w2 is [C, Cr], so the column r is strided by Cr.
template <typename scalar_t, typename acc_t>
HOST_DEVICE inline acc_t hidden_pre_grad(const scalar_t* w2, const acc_t* dp2, acc_t u_r, int64_t C, int64_t Cr,
                                         int64_t r) {
  if (!(u_r > acc_t(0))) return acc_t(0);
  sum_t<acc_t> du = 0;
#if !defined(__CUDA_ARCH__)
#pragma omp simd reduction(+ : du)
#endif
  for (int64_t c = 0; c < C; ++c) du += sum_t<acc_t>(w2[c * Cr + r]) * sum_t<acc_t>(dp2[c]);
  return acc_t(du);
}

// dz[c] = Σ_r w1[r,c]·dp1[r] (w1 is [Cr, C]).
template <typename scalar_t, typename acc_t>
HOST_DEVICE inline acc_t pooled_grad(const scalar_t* w1, const acc_t* dp1, int64_t C, int64_t Cr, int64_t c) {
  sum_t<acc_t> dz = 0;
#if !defined(__CUDA_ARCH__)
#pragma omp simd reduction(+ : dz)
#endif
  for (int64_t r = 0; r < Cr; ++r) dz += sum_t<acc_t>(w1[r * C + c]) * sum_t<acc_t>(dp1[r]);
  return acc_t(dz);
}

// dx = g·s + dz/HW (the mean's gradient is spread evenly).
template <typename acc_t>
HOST_DEVICE inline acc_t input_grad(acc_t g, acc_t s, acc_t dz_over_hw) {
  return g * s + dz_over_hw;
}

}  // namespace attnbench_se
