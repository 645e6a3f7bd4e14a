// Criss-cross attention (CCNet): the per-element math, written once for the
// CPU (ccnet.cpp) and CUDA (ccnet_cuda.cu) kernels. No ATen here.
//
// Layout (shared/specs/ccnet.md §2.1): q, k [B, Cq, H, W]; v, out [B, C, H, W];
// energy E and attention A [B, L, H, W] with L = H + W - 1. Channel z of query
// pixel (y, x) holds the key kappa(z; y, x):
//   z in [0, W):         key (y, z)        -- the row, self at z = x
//   z = W + i, i < H-1:  key (y', x) with y' = i if i < y else i + 1  -- the column without self
// and a column key y' != y sits at channel W + j(y'; y), j = y' if y' < y else y' - 1.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace attnbench_ccnet {

/// Row y' of the key in column slot i of query row y (the column without self, ascending).
HOST_DEVICE inline int column_key_row(int i, int y) { return i < y ? i : i + 1; }

/// j(y'; y): the column slot of key row y' (y' != y) for query row y.
HOST_DEVICE inline int column_slot(int key_row, int y) { return key_row < y ? key_row : key_row - 1; }

/// kappa(z; y, x): the key pixel (ky, kx) of channel z for query pixel (y, x).
HOST_DEVICE inline void key_pixel(int z, int y, int x, int W, int* ky, int* kx) {
  if (z < W) {
    *ky = y;
    *kx = z;
  } else {
    *ky = column_key_row(z - W, y);
    *kx = x;
  }
}

/// Energy E[z, y, x] = sum_c q[c, y, x] * k[c, kappa(z; y, x)] of one batch element.
/// q, k point at the batch element ([channels, H, W] contiguous).
template <typename acc_t, typename scalar_t>
HOST_DEVICE inline acc_t energy_at(const scalar_t* q, const scalar_t* k, int channels, int H, int W, int z, int y,
                                   int x) {
  int ky, kx;
  key_pixel(z, y, x, W, &ky, &kx);
  const int64_t plane = static_cast<int64_t>(H) * W;
  const scalar_t* qp = q + static_cast<int64_t>(y) * W + x;
  const scalar_t* kp = k + static_cast<int64_t>(ky) * W + kx;
  acc_t sum = 0;
  for (int c = 0; c < channels; ++c) {
    sum += static_cast<acc_t>(qp[c * plane]) * static_cast<acc_t>(kp[c * plane]);
  }
  return sum;
}

/// Aggregation out[c, y, x] = sum_z A[z, y, x] * v[c, kappa(z; y, x)] of one batch element.
/// attn points at the weight of channel z = 0 of pixel (y, x); channel z sits at
/// attn[z * attn_zstride] (H * W in an [L, H, W] map, the tile width in a fused
/// kernel's scratch). v: [C, H, W]. Also dq (attn = dE, v = k).
template <typename acc_t, typename weight_t, typename scalar_t>
HOST_DEVICE inline acc_t aggregate_at(const weight_t* attn, int64_t attn_zstride, const scalar_t* v, int H, int W,
                                      int c, int y, int x) {
  const int64_t plane = static_cast<int64_t>(H) * W;
  const scalar_t* vrow = v + c * plane + static_cast<int64_t>(y) * W;
  acc_t sum = 0;
  for (int z = 0; z < W; ++z) {
    sum += static_cast<acc_t>(attn[z * attn_zstride]) * static_cast<acc_t>(vrow[z]);
  }
  const scalar_t* vcol = v + c * plane + x;
  for (int i = 0; i < H - 1; ++i) {
    sum += static_cast<acc_t>(attn[(W + i) * attn_zstride]) *
           static_cast<acc_t>(vcol[static_cast<int64_t>(column_key_row(i, y)) * W]);
  }
  return sum;
}

/// Key-side gradient dk[c, y', x'] (ca_weight backward: weight = dE, query = q) or
/// dv[c, y', x'] (ca_map backward: weight = A, query = dOut) of one batch element:
///   sum_{x''} weight[x', y', x''] * query[c, y', x'']
/// + sum_{y'' != y'} weight[W + j(y'; y''), y'', x'] * query[c, y'', x'].
/// A gather: every output element is computed from its own inputs, no atomics.
template <typename acc_t, typename scalar_t>
HOST_DEVICE inline acc_t key_grad_at(const scalar_t* weight, const scalar_t* query, int H, int W, int c, int key_y,
                                     int key_x) {
  const int64_t plane = static_cast<int64_t>(H) * W;
  const scalar_t* wrow = weight + key_x * plane + static_cast<int64_t>(key_y) * W;
  const scalar_t* qrow = query + c * plane + static_cast<int64_t>(key_y) * W;
  acc_t sum = 0;
  for (int x = 0; x < W; ++x) {
    sum += static_cast<acc_t>(wrow[x]) * static_cast<acc_t>(qrow[x]);
  }
  const scalar_t* qcol = query + c * plane + key_x;
  for (int y = 0; y < H; ++y) {
    if (y == key_y) continue;
    const int z = W + column_slot(key_y, y);
    sum += static_cast<acc_t>(weight[z * plane + static_cast<int64_t>(y) * W + key_x]) *
           static_cast<acc_t>(qcol[static_cast<int64_t>(y) * W]);
  }
  return sum;
}

/// exp for float on the CPU: Cephes' polynomial (about 1 ulp on [-87, 88]), branch-free so
/// that loops over it vectorise (std::exp does not without -ffast-math).
HOST_DEVICE inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = static_cast<float>(static_cast<int>(x * 1.44269504088896341f + (x < 0.0f ? -0.5f : 0.5f)));
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union {
    int32_t i;
    float f;
  } scale;
  scale.i = (static_cast<int32_t>(n) + 127) << 23;
  return p * scale.f;
}

}  // namespace attnbench_ccnet
