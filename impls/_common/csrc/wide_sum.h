// Host-side plane sums for memory-bound kernels: blocked, several accumulators.
//
// A plain `#pragma omp simd reduction(+ : double_sum)` has one vector accumulator,
// so every add waits on the previous one, and converting each float to double
// halves the lanes: SE's pooling sweep ran at 0.9x torch's `mean`. A float sum
// over a whole 112x112 plane, on the other hand, drifted 3-12x past torch's
// cascade-summed error. Here each block of 256 elements is summed in the input's
// type (float for float, double for double) in 32 or 16 independent lanes (four
// AVX2 vectors), then the block sums are added in double: as fast as torch's
// `mean` on this machine and at least as accurate (each lane adds 8 or 16 terms).
#pragma once

#include <algorithm>
#include <cstdint>

namespace attnbench_common {

template <typename T>
struct wide_lanes {
  using acc = float;
  static constexpr int lanes = 32;
};
template <>
struct wide_lanes<double> {
  using acc = double;
  static constexpr int lanes = 16;
};

constexpr int64_t kWideBlock = 256;

// Adds one block's lanes into a double.
template <typename acc_t, int L>
inline double fold_lanes(const acc_t (&acc)[L]) {
  acc_t block = 0;
#pragma omp simd reduction(+ : block)
  for (int k = 0; k < L; ++k) block += acc[k];
  return double(block);
}

// x[j] (kDot = false) or x[j]·b[j] (kDot = true), in the lane type.
template <bool kDot, typename acc_t, typename T>
inline acc_t wide_term(const T* x, const T* b, int64_t j) {
  if constexpr (kDot) {
    return acc_t(x[j]) * acc_t(b[j]);
  } else {
    return acc_t(x[j]);
  }
}

// Σ x[i] or Σ x[i]·b[i], in double. Whole blocks of kWideBlock with a fixed trip count
// (a variable one measured slower), then the partial block's whole lane groups, then
// one double vector reduction over the rest; planes shorter than four lane groups
// (7x7, 14x14) take only that reduction: the lanes' set-up and fold would cost more
// than they save.
template <bool kDot, typename T>
inline double wide_reduce(const T* x, const T* b, int64_t n) {
  using acc_t = typename wide_lanes<T>::acc;
  constexpr int L = wide_lanes<T>::lanes;
  double total = 0;
  int64_t i = 0;
  if (n >= 4 * L) {
    for (; i + kWideBlock <= n; i += kWideBlock) {
      acc_t acc[L] = {};
      for (int64_t j = 0; j < kWideBlock; j += L) {
#pragma omp simd
        for (int k = 0; k < L; ++k) acc[k] += wide_term<kDot, acc_t>(x, b, i + j + k);
      }
      total += fold_lanes<acc_t, L>(acc);
    }
    acc_t acc[L] = {};
    for (; i + L <= n; i += L) {
#pragma omp simd
      for (int k = 0; k < L; ++k) acc[k] += wide_term<kDot, acc_t>(x, b, i + k);
    }
    total += fold_lanes<acc_t, L>(acc);
  }
  double rest = 0;
#pragma omp simd reduction(+ : rest)
  for (int64_t j = i; j < n; ++j) rest += wide_term<kDot, double>(x, b, j);
  return total + rest;
}

// Σ x[i], in double.
template <typename T>
inline double wide_sum(const T* x, int64_t n) {
  return wide_reduce<false>(x, static_cast<const T*>(nullptr), n);
}

// Σ a[i]·b[i], in double.
template <typename T>
inline double wide_dot(const T* a, const T* b, int64_t n) {
  return wide_reduce<true>(a, b, n);
}

}  // namespace attnbench_common
