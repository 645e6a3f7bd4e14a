// Spatial transformer CUDA kernels: the math of stn.h, one thread per output point.
//
// float, double, half and bfloat16; halves compute in float (at::opmath_type) and round
// once. The input gradient is a scatter: atomicAdd into a zeroed buffer of the
// accumulation type (so nondeterministic in order; gradcheck uses nondet_tol), converted
// to the input dtype at the end. Launch sizes are ceil-divisions: stn.pytorch's early
// CUDA launch used W/16 blocks and silently skipped the last columns.
//
// Stream, device guard and launch check: impls/_common/csrc/cuda_compat.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "cuda_compat.cuh"

#include "stn.h"

namespace attnbench_stn {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>((n + kThreads - 1) / kThreads);  // ceil, never truncate
}

void check_cuda_args(const char* op, const at::Tensor& inp, const at::Tensor& grid) {
  TORCH_CHECK(inp.is_cuda() && grid.is_cuda(), op, ": inp and grid must be CUDA tensors, got ", inp.device(), " and ",
              grid.device());
  TORCH_CHECK(inp.dim() == 4, op, ": inp must have shape [B, C, H, W], got ", inp.sizes());
  TORCH_CHECK(grid.dim() == 4 && grid.size(3) == 2, op, ": grid must have shape [B, Ho, Wo, 2], got ", grid.sizes());
  TORCH_CHECK(grid.size(0) == inp.size(0), op, ": grid batch ", grid.size(0), " != inp batch ", inp.size(0));
  TORCH_CHECK(inp.size(2) > 0 && inp.size(3) > 0, op, ": inp must have H, W >= 1, got ", inp.sizes());
  TORCH_CHECK(inp.scalar_type() == grid.scalar_type(), op, ": inp and grid must have the same dtype, got ",
              inp.scalar_type(), " and ", grid.scalar_type());
  TORCH_CHECK(inp.device() == grid.device(), op, ": inp and grid must be on the same device, got ", inp.device(),
              " and ", grid.device());
}

template <typename scalar_t, typename acc_t>
__global__ void bilinear_forward_kernel(const scalar_t* __restrict__ inp, const scalar_t* __restrict__ grid,
                                        scalar_t* __restrict__ out, int64_t B, int64_t C, int64_t H, int64_t W,
                                        int64_t Ho, int64_t Wo, bool align_corners) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t points = Ho * Wo;
  if (n >= B * points) return;
  const int64_t b = n / points, q = n % points;
  const Bilinear<acc_t> p =
      bilinear_point<acc_t>(static_cast<acc_t>(grid[2 * n]), static_cast<acc_t>(grid[2 * n + 1]), H, W, align_corners);
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* plane = inp + (b * C + c) * H * W;
    out[(b * C + c) * points + q] = static_cast<scalar_t>(interpolate(p, plane));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void bilinear_backward_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ inp,
                                         const scalar_t* __restrict__ grid, acc_t* __restrict__ ginp,
                                         scalar_t* __restrict__ ggrid, int64_t B, int64_t C, int64_t H, int64_t W,
                                         int64_t Ho, int64_t Wo, bool align_corners) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t points = Ho * Wo;
  if (n >= B * points) return;
  const int64_t b = n / points, q = n % points;
  const Bilinear<acc_t> p =
      bilinear_point<acc_t>(static_cast<acc_t>(grid[2 * n]), static_cast<acc_t>(grid[2 * n + 1]), H, W, align_corners);
  acc_t dix = 0, diy = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t go = static_cast<acc_t>(gout[(b * C + c) * points + q]);
    const scalar_t* plane = inp + (b * C + c) * H * W;
    acc_t* gplane = ginp + (b * C + c) * H * W;
    acc_t v[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (p.inside[k]) atomicAdd(gplane + p.offset[k], p.weight[k] * go);
      v[k] = corner_value(p, plane, k);
    }
    add_grid_grad(p, v, go, dix, diy);
  }
  ggrid[2 * n] = static_cast<scalar_t>(dix * grad_scale<acc_t>(W, align_corners));
  ggrid[2 * n + 1] = static_cast<scalar_t>(diy * grad_scale<acc_t>(H, align_corners));
}

template <typename scalar_t, typename acc_t>
__global__ void affine_forward_kernel(const scalar_t* __restrict__ theta, scalar_t* __restrict__ grid, int64_t B,
                                      int64_t H, int64_t W, bool align_corners) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= B * H * W) return;
  const int64_t b = n / (H * W), i = (n / W) % H, j = n % W;
  acc_t gx, gy;
  affine_point(theta + b * 6, base_coord<acc_t>(j, W, align_corners), base_coord<acc_t>(i, H, align_corners), gx, gy);
  grid[2 * n] = static_cast<scalar_t>(gx);
  grid[2 * n + 1] = static_cast<scalar_t>(gy);
}

// One block per (b, r): dtheta[b, r, :] = sum_{i,j} g[b,i,j,r] * (x_j, y_i, 1), tree-reduced
// in shared memory (deterministic, no atomics).
template <typename scalar_t, typename acc_t>
__global__ void affine_backward_kernel(const scalar_t* __restrict__ ggrid, scalar_t* __restrict__ dtheta, int64_t H,
                                       int64_t W, bool align_corners) {
  __shared__ acc_t partial[3][kThreads];
  const int64_t b = blockIdx.x / 2, r = blockIdx.x % 2;
  acc_t sx = 0, sy = 0, s1 = 0;
  for (int64_t q = threadIdx.x; q < H * W; q += blockDim.x) {
    const acc_t g = static_cast<acc_t>(ggrid[(b * H * W + q) * 2 + r]);
    sx += g * base_coord<acc_t>(q % W, W, align_corners);
    sy += g * base_coord<acc_t>(q / W, H, align_corners);
    s1 += g;
  }
  partial[0][threadIdx.x] = sx;
  partial[1][threadIdx.x] = sy;
  partial[2][threadIdx.x] = s1;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride)
      for (int k = 0; k < 3; ++k) partial[k][threadIdx.x] += partial[k][threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x < 3) dtheta[b * 6 + r * 3 + threadIdx.x] = static_cast<scalar_t>(partial[threadIdx.x][0]);
}

at::Tensor bilinear_forward_cuda(const at::Tensor& inp_, const at::Tensor& grid_, bool align_corners) {
  check_cuda_args("bilinear_forward", inp_, grid_);
  const c10::DeviceGuard guard(inp_.device());
  const at::Tensor inp = inp_.contiguous(), grid = grid_.contiguous();
  const int64_t B = inp.size(0), C = inp.size(1), H = inp.size(2), W = inp.size(3);
  const int64_t Ho = grid.size(1), Wo = grid.size(2);
  at::Tensor out = at::empty({B, C, Ho, Wo}, inp.options());
  const int64_t n = B * Ho * Wo;
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, inp.scalar_type(),
                                  "bilinear_forward_cuda", [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    bilinear_forward_kernel<scalar_t, acc_t>
                                        <<<blocks_for(n), kThreads, 0, attnbench_cuda::current_stream()>>>(
                                            inp.data_ptr<scalar_t>(), grid.data_ptr<scalar_t>(),
                                            out.data_ptr<scalar_t>(), B, C, H, W, Ho, Wo, align_corners);
                                    ATTNBENCH_LAUNCH_CHECK();
                                  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> bilinear_backward_cuda(const at::Tensor& gout_, const at::Tensor& inp_,
                                                          const at::Tensor& grid_, bool align_corners) {
  check_cuda_args("bilinear_backward", inp_, grid_);
  const int64_t B = inp_.size(0), C = inp_.size(1), H = inp_.size(2), W = inp_.size(3);
  const int64_t Ho = grid_.size(1), Wo = grid_.size(2);
  TORCH_CHECK(gout_.sizes() == at::IntArrayRef({B, C, Ho, Wo}), "bilinear_backward: grad_out must have shape [", B,
              ", ", C, ", ", Ho, ", ", Wo, "], got ", gout_.sizes());
  TORCH_CHECK(gout_.scalar_type() == inp_.scalar_type() && gout_.device() == inp_.device(),
              "bilinear_backward: grad_out must have the dtype and device of inp, got ", gout_.scalar_type(), " on ",
              gout_.device());
  const c10::DeviceGuard guard(inp_.device());
  const at::Tensor gout = gout_.contiguous(), inp = inp_.contiguous(), grid = grid_.contiguous();
  const auto acc_type = at::toOpMathType(inp.scalar_type());
  at::Tensor ginp_acc = at::zeros({B, C, H, W}, inp.options().dtype(acc_type));  // atomically accumulated
  at::Tensor ggrid = at::empty({B, Ho, Wo, 2}, grid.options());
  const int64_t n = B * Ho * Wo;
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, inp.scalar_type(),
                                    "bilinear_backward_cuda", [&] {
                                      using acc_t = at::opmath_type<scalar_t>;
                                      bilinear_backward_kernel<scalar_t, acc_t>
                                          <<<blocks_for(n), kThreads, 0, attnbench_cuda::current_stream()>>>(
                                              gout.data_ptr<scalar_t>(), inp.data_ptr<scalar_t>(),
                                              grid.data_ptr<scalar_t>(), ginp_acc.data_ptr<acc_t>(),
                                              ggrid.data_ptr<scalar_t>(), B, C, H, W, Ho, Wo, align_corners);
                                      ATTNBENCH_LAUNCH_CHECK();
                                    });
  }
  at::Tensor ginp = ginp_acc.scalar_type() == inp.scalar_type() ? ginp_acc : ginp_acc.to(inp.scalar_type());
  return {ginp, ggrid};
}

at::Tensor affine_grid_forward_cuda(const at::Tensor& theta_, int64_t H, int64_t W, bool align_corners) {
  TORCH_CHECK(theta_.is_cuda(), "affine_grid_forward: theta must be a CUDA tensor, got ", theta_.device());
  TORCH_CHECK(theta_.dim() == 3 && theta_.size(1) == 2 && theta_.size(2) == 3,
              "affine_grid_forward: theta must have shape [B, 2, 3], got ", theta_.sizes());
  TORCH_CHECK(H >= 1 && W >= 1, "affine_grid_forward: H and W must be >= 1, got ", H, " and ", W);
  const c10::DeviceGuard guard(theta_.device());
  const at::Tensor theta = theta_.contiguous();
  const int64_t B = theta.size(0);
  at::Tensor grid = at::empty({B, H, W, 2}, theta.options());
  const int64_t n = B * H * W;
  if (n == 0) return grid;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, theta.scalar_type(),
                                  "affine_grid_forward_cuda", [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    affine_forward_kernel<scalar_t, acc_t>
                                        <<<blocks_for(n), kThreads, 0, attnbench_cuda::current_stream()>>>(
                                            theta.data_ptr<scalar_t>(), grid.data_ptr<scalar_t>(), B, H, W,
                                            align_corners);
                                    ATTNBENCH_LAUNCH_CHECK();
                                  });
  return grid;
}

at::Tensor affine_grid_backward_cuda(const at::Tensor& ggrid_, int64_t H, int64_t W, bool align_corners) {
  TORCH_CHECK(ggrid_.is_cuda(), "affine_grid_backward: grad_grid must be a CUDA tensor, got ", ggrid_.device());
  TORCH_CHECK(ggrid_.dim() == 4 && ggrid_.size(1) == H && ggrid_.size(2) == W && ggrid_.size(3) == 2,
              "affine_grid_backward: grad_grid must have shape [B, ", H, ", ", W, ", 2], got ", ggrid_.sizes());
  const c10::DeviceGuard guard(ggrid_.device());
  const at::Tensor ggrid = ggrid_.contiguous();
  const int64_t B = ggrid.size(0);
  at::Tensor dtheta = at::zeros({B, 2, 3}, ggrid.options());
  if (B == 0) return dtheta;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, ggrid.scalar_type(),
                                  "affine_grid_backward_cuda", [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    affine_backward_kernel<scalar_t, acc_t>
                                        <<<static_cast<unsigned int>(B * 2), kThreads, 0,
                                           attnbench_cuda::current_stream()>>>(
                                            ggrid.data_ptr<scalar_t>(), dtheta.data_ptr<scalar_t>(), H, W,
                                            align_corners);
                                    ATTNBENCH_LAUNCH_CHECK();
                                  });
  return dtheta;
}

}  // namespace
}  // namespace attnbench_stn

TORCH_LIBRARY_IMPL(attnbench_stn, CUDA, m) {
  m.impl("bilinear_forward", &attnbench_stn::bilinear_forward_cuda);
  m.impl("bilinear_backward", &attnbench_stn::bilinear_backward_cuda);
  m.impl("affine_grid_forward", &attnbench_stn::affine_grid_forward_cuda);
  m.impl("affine_grid_backward", &attnbench_stn::affine_grid_backward_cuda);
}
