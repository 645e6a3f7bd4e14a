// Softmax-attention math written once for the CPU and CUDA kernels (no ATen).
// Used by impls/non_local and impls/danet (found through impls/_common/csrc).
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace attnbench_math {

HOST_DEVICE inline float exp_of(float x) { return expf(x); }
HOST_DEVICE inline double exp_of(double x) { return exp(x); }
HOST_DEVICE inline float log_of(float x) { return logf(x); }
HOST_DEVICE inline double log_of(double x) { return log(x); }

template <typename acc_t>
HOST_DEVICE inline acc_t neg_infinity() {
  return -static_cast<acc_t>(INFINITY);
}

// One key tile of one query row of an online softmax (flash-attention style).
// In: s[0..n) scaled scores of the tile, running max m and running sum l of the
// earlier tiles (m = -inf, l = 0 before the first). Out: s[j] = exp(s[j] - m'),
// m' = max(m, max_j s[j]), l' = l·alpha + Σ_j s[j]; alpha = exp(m - m') is what
// the running accumulator of the earlier tiles must be multiplied by.
template <typename acc_t>
HOST_DEVICE inline acc_t online_softmax_tile(acc_t* s, int64_t n, int64_t stride, acc_t& m, acc_t& l) {
  acc_t tile_max = neg_infinity<acc_t>();
  for (int64_t j = 0; j < n; ++j) tile_max = s[j * stride] > tile_max ? s[j * stride] : tile_max;
  const acc_t m_new = m > tile_max ? m : tile_max;
  const acc_t alpha = m == neg_infinity<acc_t>() ? acc_t(0) : exp_of(m - m_new);
  acc_t sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    const acc_t p = exp_of(s[j * stride] - m_new);
    s[j * stride] = p;
    sum += p;
  }
  l = l * alpha + sum;
  m = m_new;
  return alpha;
}

// Row statistics -> log-sum-exp saved for the backward pass.
template <typename acc_t>
HOST_DEVICE inline acc_t log_sum_exp(acc_t m, acc_t l) {
  return m + log_of(l);
}

// Backward of one tile of one row, scores recomputed from the saved lse:
// p = exp(s - lse) (written over s), ds = scale · p · (dp - D) (written over dp),
// with D = Σ_c dout_c · out_c the row's softmax-Jacobian correction.
template <typename acc_t>
HOST_DEVICE inline void softmax_tile_backward(acc_t* s, acc_t* dp, int64_t n, int64_t stride, acc_t lse, acc_t D,
                                              acc_t scale) {
  for (int64_t j = 0; j < n; ++j) {
    const acc_t p = exp_of(s[j * stride] - lse);
    s[j * stride] = p;
    dp[j * stride] = scale * p * (dp[j * stride] - D);
  }
}

}  // namespace attnbench_math
