// Hard attention: per-element math shared by the CPU and CUDA kernels (no ATen).
//
// glimpse (specs/hard_attention.md §2.1): centre pixel
//   c = clamp(floor((l + 1) / 2 * n), 0, n - 1)
// and, per scale s (f = 2^s, side = size * f), the patch origin c - side / 2.
// Output element (b, s*C + c, i, j) averages the f x f block at
// (row0 + i*f, col0 + j*f) of the zero-extended image, dividing by f^2.
// The gradient is a gather: pixel (y, x) lies in at most one block per scale.
//
// hard_select (§2.3): argmax of logits + gumbel (strict >, lowest index wins)
// and the straight-through logits gradient (1/tau) p (a - sum p a).
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace attnbench_hard_attention {

// Centre index of a normalised coordinate in [-1, 1]; computed in double so every
// impl (and dtype of loc) rounds the same way.
HOST_DEVICE inline int64_t center_index(double l, int64_t n) {
  double v = std::floor((l + 1.0) / 2.0 * static_cast<double>(n));
  if (v < 0.0) return 0;
  if (v > static_cast<double>(n - 1)) return n - 1;
  return static_cast<int64_t>(v);
}

// Top-left pixel of the scale-s patch around centre c (even sides extend up/left).
HOST_DEVICE inline int64_t patch_origin(int64_t c, int64_t size, int64_t f) { return c - (size * f) / 2; }

// One output element: (1/f^2) * sum of the f x f block at (r0, c0), zeros outside.
// img points at the [H, W] plane of (b, c).
template <typename scalar_t, typename acc_t>
HOST_DEVICE inline acc_t block_mean(const scalar_t* img, int64_t H, int64_t W, int64_t r0, int64_t c0, int64_t f) {
  acc_t acc = acc_t(0);
  for (int64_t di = 0; di < f; ++di) {
    const int64_t r = r0 + di;
    if (r < 0 || r >= H) continue;
    for (int64_t dj = 0; dj < f; ++dj) {
      const int64_t q = c0 + dj;
      if (q < 0 || q >= W) continue;
      acc += static_cast<acc_t>(img[r * W + q]);
    }
  }
  return acc / static_cast<acc_t>(f * f);
}

// Gradient of one input pixel (y, x) of plane (b, c): sum over scales of the
// output gradient of the block containing it, divided by f^2.
// gout points at [scales*C, size, size] of batch element b; cx, cy: centre.
template <typename scalar_t, typename acc_t>
HOST_DEVICE inline acc_t pixel_grad(const scalar_t* gout, int64_t C, int64_t c, int64_t size, int64_t scales,
                                    int64_t cy, int64_t cx, int64_t y, int64_t x) {
  acc_t acc = acc_t(0);
  for (int64_t s = 0; s < scales; ++s) {
    const int64_t f = int64_t(1) << s;
    const int64_t dy = y - patch_origin(cy, size, f);
    const int64_t dx = x - patch_origin(cx, size, f);
    if (dy < 0 || dx < 0 || dy >= size * f || dx >= size * f) continue;
    const int64_t i = dy / f, j = dx / f;
    acc += static_cast<acc_t>(gout[((s * C + c) * size + i) * size + j]) / static_cast<acc_t>(f * f);
  }
  return acc;
}

// argmax_n (logits[n] + gumbel[n]); the sum is rounded to scalar_t like PyTorch's
// elementwise add, ties go to the lowest index.
template <typename scalar_t, typename acc_t>
HOST_DEVICE inline int64_t gumbel_argmax(const scalar_t* logits, const scalar_t* gumbel, int64_t N) {
  int64_t best = 0;
  acc_t best_score = static_cast<acc_t>(static_cast<scalar_t>(logits[0] + gumbel[0]));
  for (int64_t n = 1; n < N; ++n) {
    const acc_t score = static_cast<acc_t>(static_cast<scalar_t>(logits[n] + gumbel[n]));
    if (score > best_score) {
      best = n;
      best_score = score;
    }
  }
  return best;
}

// Straight-through logits gradient of one row:
//   p = softmax((logits + gumbel) / tau), a_n = values[n, :] . gout,
//   dlogits_n = (1/tau) p_n (a_n - sum_m p_m a_m).
// scratch must hold 2 * N acc_t values.
template <typename scalar_t, typename acc_t>
HOST_DEVICE inline void straight_through_row(const scalar_t* logits, const scalar_t* gumbel, const scalar_t* values,
                                             const scalar_t* gout, int64_t N, int64_t D, acc_t tau, acc_t* scratch,
                                             scalar_t* dlogits) {
  acc_t* p = scratch;
  acc_t* a = scratch + N;
  acc_t top = -INFINITY;
  for (int64_t n = 0; n < N; ++n) {
    p[n] = static_cast<acc_t>(static_cast<scalar_t>(logits[n] + gumbel[n])) / tau;
    top = p[n] > top ? p[n] : top;
  }
  acc_t norm = acc_t(0);
  for (int64_t n = 0; n < N; ++n) {
    p[n] = std::exp(p[n] - top);
    norm += p[n];
  }
  acc_t mean_a = acc_t(0);
  for (int64_t n = 0; n < N; ++n) {
    p[n] /= norm;
    acc_t dot = acc_t(0);
    for (int64_t d = 0; d < D; ++d) dot += static_cast<acc_t>(values[n * D + d]) * static_cast<acc_t>(gout[d]);
    a[n] = dot;
    mean_a += p[n] * dot;
  }
  for (int64_t n = 0; n < N; ++n) dlogits[n] = static_cast<scalar_t>(p[n] * (a[n] - mean_a) / tau);
}

}  // namespace attnbench_hard_attention
