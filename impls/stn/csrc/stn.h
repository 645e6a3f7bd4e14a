// Spatial transformer math, written once for the CPU (stn.cpp) and CUDA (stn_cuda.cu)
// kernels: unnormalisation, floor, corner weights, per-corner bounds, gradient terms.
// No ATen here. See shared/specs/stn.md §2 (canonical cores, floor-convention gradients).
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace attnbench_stn {

HOST_DEVICE inline float floor_of(float x) { return floorf(x); }
HOST_DEVICE inline double floor_of(double x) { return floor(x); }

// Normalised coordinate g in [-1, 1] -> pixel coordinate (0 .. size-1 at the pixel centres).
template <typename T>
HOST_DEVICE inline T unnormalize(T g, int64_t size, bool align_corners) {
  return align_corners ? (g + T(1)) / T(2) * T(size - 1) : ((g + T(1)) * T(size) - T(1)) / T(2);
}

// d(pixel coordinate) / d(normalised coordinate): (size-1)/2 (align_corners) or size/2.
template <typename T>
HOST_DEVICE inline T grad_scale(int64_t size, bool align_corners) {
  return align_corners ? T(size - 1) / T(2) : T(size) / T(2);
}

// k-th of n normalised base coordinates of affine_grid; a size-1 axis gives 0 in both modes.
template <typename T>
HOST_DEVICE inline T base_coord(int64_t k, int64_t n, bool align_corners) {
  if (n == 1) return T(0);
  return align_corners ? T(-1) + T(2 * k) / T(n - 1) : T(2 * k + 1) / T(n) - T(1);
}

// One output point of the sampler: its four corners (y0,x0), (y0,x1), (y1,x0), (y1,x1),
// their plane offsets y*W + x, bilinear weights and whether each lies inside the image
// (zeros padding is decided per corner). Outside corners get weight 0 and offset 0.
template <typename T>
struct Bilinear {
  int64_t offset[4];
  T weight[4];
  bool inside[4];
  T tx, ty;
};

template <typename T>
HOST_DEVICE inline Bilinear<T> bilinear_point(T gx, T gy, int64_t H, int64_t W, bool align_corners) {
  T ix = unnormalize(gx, W, align_corners);
  T iy = unnormalize(gy, H, align_corners);
  // Keep floor's argument where the integer conversion is defined (NaN included): beyond
  // [-2, size+1] all four corners are outside, so clamping changes neither value nor gradient.
  ix = !(ix >= T(-2)) ? T(-2) : (ix > T(W + 1) ? T(W + 1) : ix);
  iy = !(iy >= T(-2)) ? T(-2) : (iy > T(H + 1) ? T(H + 1) : iy);
  const T fx = floor_of(ix);
  const T fy = floor_of(iy);
  const int64_t x0 = static_cast<int64_t>(fx);
  const int64_t y0 = static_cast<int64_t>(fy);
  Bilinear<T> p;
  p.tx = ix - fx;  // floor convention: at an integer, tx = 0 (right-hand derivative)
  p.ty = iy - fy;
  const bool x_in[2] = {x0 >= 0 && x0 < W, x0 + 1 >= 0 && x0 + 1 < W};
  const bool y_in[2] = {y0 >= 0 && y0 < H, y0 + 1 >= 0 && y0 + 1 < H};
  const T wx[2] = {T(1) - p.tx, p.tx};
  const T wy[2] = {T(1) - p.ty, p.ty};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int dy = k >> 1, dx = k & 1;
    p.inside[k] = y_in[dy] && x_in[dx];
    p.weight[k] = p.inside[k] ? wy[dy] * wx[dx] : T(0);
    p.offset[k] = p.inside[k] ? (y0 + dy) * W + (x0 + dx) : 0;
  }
  return p;
}

// V(corner k) of one plane, 0 outside the image.
template <typename A, typename S>
HOST_DEVICE inline A corner_value(const Bilinear<A>& p, const S* plane, int k) {
  return p.inside[k] ? A(plane[p.offset[k]]) : A(0);
}

// out = sum_k weight_k * V_k
template <typename A, typename S>
HOST_DEVICE inline A interpolate(const Bilinear<A>& p, const S* plane) {
  A v = A(0);
#pragma unroll
  for (int k = 0; k < 4; ++k) v += p.weight[k] * corner_value(p, plane, k);
  return v;
}

// Adds gout * (d out / d ix, d out / d iy) of one channel (floor convention), given the
// four corner values v (0 outside):
//   d out / d ix = (1-ty)(V01 - V00) + ty (V11 - V10)
//   d out / d iy = (1-tx)(V10 - V00) + tx (V11 - V01)
template <typename A>
HOST_DEVICE inline void add_grid_grad(const Bilinear<A>& p, const A v[4], A gout, A& dix, A& diy) {
  dix += gout * ((A(1) - p.ty) * (v[1] - v[0]) + p.ty * (v[3] - v[2]));
  diy += gout * ((A(1) - p.tx) * (v[2] - v[0]) + p.tx * (v[3] - v[1]));
}

// affine_grid: (gx, gy) = theta[2x3] · (x, y, 1)
template <typename A, typename S>
HOST_DEVICE inline void affine_point(const S* theta, A x, A y, A& gx, A& gy) {
  gx = A(theta[0]) * x + A(theta[1]) * y + A(theta[2]);
  gy = A(theta[3]) * x + A(theta[4]) * y + A(theta[5]);
}

}  // namespace attnbench_stn
