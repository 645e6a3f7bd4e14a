// Fused (flash-style) multi-head attention: the per-element math, written once
// for the CPU (mhsa.cpp) and CUDA (mhsa_cuda.cu) kernels. No ATen here.
//
// Canonical core (shared/specs/mhsa.md §2):
//   allowed(i, j) = !key_padded[j] && (!causal || j <= i)       (mask True = ignore; upper-left causal)
//   out[i]        = Σ_j softmax_j(scale · q_i·k_j) v_j over allowed j; a row with no allowed key is 0.
//
// Forward keeps, per query row, the running maximum m and the running sum
// l = Σ exp(s_j − m) (online softmax) and saves only lse = m + log(l) (−inf for a
// fully masked row). Backward recomputes p_ij = exp(s_ij − lse_i) from it, so the
// L×S score matrix is never stored.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "host_device.h"

namespace attnbench_mhsa {

template <typename acc_t>
HOST_DEVICE inline acc_t neg_inf() {
  return -std::numeric_limits<acc_t>::infinity();
}

// Whether query row i may attend key j.
HOST_DEVICE inline bool allowed(int64_t i, int64_t j, bool key_padded, bool causal) {
  return !key_padded && (!causal || j <= i);
}

// One past the last key that any query row in [0, i_end) may see.
HOST_DEVICE inline int64_t key_end(int64_t i_end, int64_t S, bool causal) {
  return causal ? (i_end < S ? i_end : S) : S;
}

// First query row that may see key j (rows before it never attend j).
HOST_DEVICE inline int64_t first_query(int64_t j, bool causal) {
  return causal ? j : 0;
}

#if !defined(__CUDA_ARCH__)
// exp for float, branch-free so loops over it vectorize (Cephes expf: ≤ 2 ulp
// on [−87, 88]). Callers select 0 for masked entries themselves.
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;  // ln 2 split in two for an exact reduction
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}
inline double fast_exp(double x) { return std::exp(x); }
#endif

// exp in the accumulation type (device code uses the library exp).
template <typename acc_t>
HOST_DEVICE inline acc_t exp_acc(acc_t x) {
#if defined(__CUDA_ARCH__)
  return exp(x);
#else
  return fast_exp(x);
#endif
}

// Online-softmax update: a block of scores with maximum block_max arrives for a
// row whose state is (m, l). Updates m, rescales l and returns the factor that
// the row's output accumulator must be multiplied by (0 when nothing was there).
template <typename acc_t>
HOST_DEVICE inline acc_t online_rescale(acc_t& m, acc_t& l, acc_t block_max) {
  const acc_t m_new = m > block_max ? m : block_max;
  const acc_t factor = (m == neg_inf<acc_t>()) ? acc_t(0) : exp_acc<acc_t>(m - m_new);
  l *= factor;
  m = m_new;
  return factor;
}

// Unnormalised probability of a score given the row maximum m; masked scores
// are −inf and give exactly 0.
template <typename acc_t>
HOST_DEVICE inline acc_t prob_from_max(acc_t s, acc_t m) {
  return s == neg_inf<acc_t>() ? acc_t(0) : exp_acc<acc_t>(s - m);
}

// 1 / l for the final normalisation; 0 for a fully masked row (l = 0).
template <typename acc_t>
HOST_DEVICE inline acc_t inv_sum(acc_t l) {
  return l > acc_t(0) ? acc_t(1) / l : acc_t(0);
}

// The saved statistic: lse = m + log(l), −inf for a fully masked row.
template <typename acc_t>
HOST_DEVICE inline acc_t log_sum_exp(acc_t m, acc_t l) {
  return l > acc_t(0) ? m + log(l) : neg_inf<acc_t>();
}

// Backward: normalised probability recomputed from the saved lse.
template <typename acc_t>
HOST_DEVICE inline acc_t prob_from_lse(acc_t s, acc_t lse, bool ok) {
  return (ok && lse != neg_inf<acc_t>()) ? exp_acc<acc_t>(s - lse) : acc_t(0);
}

// Backward: d(score) = p · (dp − D), D = Σ_c gout·out over the row.
template <typename acc_t>
HOST_DEVICE inline acc_t dscore(acc_t p, acc_t dp, acc_t D) {
  return p * (dp - D);
}

}  // namespace attnbench_mhsa
