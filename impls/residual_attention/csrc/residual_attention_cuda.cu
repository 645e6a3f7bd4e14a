// Residual attention: CUDA kernels (same math header as the CPU build).
//
// mixed: grid-stride elementwise. channel: one thread per (b, position) walks
// the C channels twice (Σ m², then the outputs); neighbouring threads read
// neighbouring positions, so every access is coalesced. spatial: one block per
// (b, c) plane reduces μ and the biased σ² (two passes over the plane), then
// writes the plane. Backward recomputes f from m and the statistics with the same
// layout. Half types accumulate in float.
//
// Stream, device guard and launch check: impls/_common/csrc/cuda_compat.cuh.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda_compat.cuh"

#include <algorithm>
#include <vector>

#include "residual_attention.h"

namespace attnbench_ran {
namespace {

constexpr int kThreads = 256;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

unsigned grid_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(ceil_div(n, kThreads), 1), 65535 * 8));
}

template <typename acc_t>
__device__ acc_t block_sum(acc_t v) {
  __shared__ acc_t partial[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  v = threadIdx.x < warps ? partial[threadIdx.x] : acc_t(0);
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (threadIdx.x == 0) partial[0] = v;
  __syncthreads();
  v = partial[0];
  __syncthreads();
  return v;
}

// --- forward ------------------------------------------------------------------------

template <typename scalar_t, typename acc_t>
__global__ void mixed_forward(const scalar_t* __restrict__ T, const scalar_t* __restrict__ M,
                              scalar_t* __restrict__ O, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    O[i] = scalar_t(mixed_out(acc_t(T[i]), acc_t(M[i])));
}

template <typename scalar_t, typename acc_t>
__global__ void channel_forward(const scalar_t* __restrict__ T, const scalar_t* __restrict__ M,
                                scalar_t* __restrict__ O, acc_t* __restrict__ S, int64_t B, int64_t C, int64_t HW) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k >= B * HW) return;
  const int64_t b = k / HW, i = k % HW, base = b * C * HW + i;
  acc_t sumsq = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t m = acc_t(M[base + c * HW]);
    sumsq += m * m;
  }
  const acc_t norm = clamped_norm(sumsq);
  for (int64_t c = 0; c < C; ++c) {
    const int64_t off = base + c * HW;
    O[off] = scalar_t(channel_out(acc_t(T[off]), acc_t(M[off]), norm));
  }
  S[k] = norm;
}

template <typename scalar_t, typename acc_t>
__global__ void spatial_forward(const scalar_t* __restrict__ T, const scalar_t* __restrict__ M,
                                scalar_t* __restrict__ O, acc_t* __restrict__ S, int64_t HW) {
  const int64_t off = int64_t(blockIdx.x) * HW;
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) sum += acc_t(M[off + i]);
  const acc_t mean = block_sum(sum) / acc_t(HW);
  acc_t sq = 0;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
    const acc_t d = acc_t(M[off + i]) - mean;
    sq += d * d;
  }
  const acc_t rstd = inv_std(block_sum(sq) / acc_t(HW));
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x)
    O[off + i] = scalar_t(spatial_out(acc_t(T[off + i]), acc_t(M[off + i]), mean, rstd));
  if (threadIdx.x == 0) {
    S[2 * blockIdx.x] = mean;
    S[2 * blockIdx.x + 1] = rstd;
  }
}

// --- backward -----------------------------------------------------------------------

template <typename scalar_t, typename acc_t>
__global__ void mixed_backward(const scalar_t* __restrict__ G, const scalar_t* __restrict__ T,
                               const scalar_t* __restrict__ M, scalar_t* __restrict__ DT, scalar_t* __restrict__ DM,
                               int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    acc_t dt, dm;
    mixed_grads(acc_t(G[i]), acc_t(T[i]), acc_t(M[i]), dt, dm);
    DT[i] = scalar_t(dt);
    DM[i] = scalar_t(dm);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void channel_backward(const scalar_t* __restrict__ G, const scalar_t* __restrict__ T,
                                 const scalar_t* __restrict__ M, const acc_t* __restrict__ S,
                                 scalar_t* __restrict__ DT, scalar_t* __restrict__ DM, int64_t B, int64_t C,
                                 int64_t HW) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k >= B * HW) return;
  const int64_t b = k / HW, i = k % HW, base = b * C * HW + i;
  const acc_t norm = S[k];
  acc_t dot = 0;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t off = base + c * HW;
    dot += channel_dot_term(acc_t(G[off]), acc_t(T[off]), acc_t(M[off]), norm);
  }
  for (int64_t c = 0; c < C; ++c) {
    const int64_t off = base + c * HW;
    acc_t dt, dm;
    channel_grads(acc_t(G[off]), acc_t(T[off]), acc_t(M[off]), norm, dot, dt, dm);
    DT[off] = scalar_t(dt);
    DM[off] = scalar_t(dm);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void spatial_backward(const scalar_t* __restrict__ G, const scalar_t* __restrict__ T,
                                 const scalar_t* __restrict__ M, const acc_t* __restrict__ S,
                                 scalar_t* __restrict__ DT, scalar_t* __restrict__ DM, int64_t HW) {
  const int64_t off = int64_t(blockIdx.x) * HW;
  const acc_t mean = S[2 * blockIdx.x], rstd = S[2 * blockIdx.x + 1];
  acc_t sum_h = 0, sum_hx = 0;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
    acc_t h, xhat;
    spatial_h(acc_t(G[off + i]), acc_t(T[off + i]), acc_t(M[off + i]), mean, rstd, h, xhat);
    sum_h += h;
    sum_hx += h * xhat;
  }
  const acc_t mean_h = block_sum(sum_h) / acc_t(HW);
  const acc_t mean_hx = block_sum(sum_hx) / acc_t(HW);
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
    acc_t dt, dm;
    spatial_grads(acc_t(G[off + i]), acc_t(T[off + i]), acc_t(M[off + i]), mean, rstd, mean_h, mean_hx, dt, dm);
    DT[off + i] = scalar_t(dt);
    DM[off + i] = scalar_t(dm);
  }
}

// --- ops ----------------------------------------------------------------------------

void check_pair(const char* op, const at::Tensor& trunk, const at::Tensor& mask, int64_t kind) {
  TORCH_CHECK(kind == kMixed || kind == kChannel || kind == kSpatial, op,
              ": kind must be 0 (mixed), 1 (channel) or 2 (spatial), got ", kind);
  TORCH_CHECK(trunk.dim() == 4, op, ": trunk must have shape [B, C, H, W], got ", trunk.sizes());
  TORCH_CHECK(mask.sizes() == trunk.sizes(), op, ": mask_logits must have trunk's shape ", trunk.sizes(), ", got ",
              mask.sizes());
  TORCH_CHECK(mask.scalar_type() == trunk.scalar_type(), op, ": mask_logits must have trunk's dtype ",
              trunk.scalar_type(), ", got ", mask.scalar_type());
  TORCH_CHECK(trunk.is_cuda() && mask.device() == trunk.device(), op,
              ": CUDA kernel expects trunk and mask_logits on one CUDA device, got ", trunk.device(), " and ",
              mask.device());
}

std::vector<int64_t> stats_shape(const at::Tensor& trunk, int64_t kind) {
  if (kind == kChannel) return {trunk.size(0), trunk.size(2), trunk.size(3)};
  if (kind == kSpatial) return {trunk.size(0), trunk.size(1), 2};
  return {0};
}

std::tuple<at::Tensor, at::Tensor> ran_forward_cuda(const at::Tensor& trunk_, const at::Tensor& mask_, int64_t kind) {
  check_pair("ran_forward", trunk_, mask_, kind);
  const attnbench_cuda::DeviceGuard guard(trunk_.device());
  const at::Tensor trunk = trunk_.contiguous(), mask = mask_.contiguous();
  const int64_t B = trunk.size(0), C = trunk.size(1), HW = trunk.size(2) * trunk.size(3), n = trunk.numel();
  at::Tensor out = at::empty_like(trunk, at::MemoryFormat::Contiguous);
  const auto stype = trunk.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor stats = at::empty(stats_shape(trunk, kind), trunk.options().dtype(stype));
  if (n == 0) return {out, stats};
  const cudaStream_t stream = attnbench_cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, trunk.scalar_type(), "ran_forward_cuda", [&] {
    using acc_t = acc_type_t<scalar_t>;
    const scalar_t* T = trunk.data_ptr<scalar_t>();
    const scalar_t* M = mask.data_ptr<scalar_t>();
    scalar_t* O = out.data_ptr<scalar_t>();
    if (kind == kMixed) {
      mixed_forward<scalar_t, acc_t><<<grid_for(n), kThreads, 0, stream>>>(T, M, O, n);
    } else if (kind == kChannel) {
      channel_forward<scalar_t, acc_t><<<static_cast<unsigned>(ceil_div(B * HW, kThreads)), kThreads, 0, stream>>>(
          T, M, O, stats.data_ptr<acc_t>(), B, C, HW);
    } else {
      spatial_forward<scalar_t, acc_t><<<static_cast<unsigned>(B * C), kThreads, 0, stream>>>(
          T, M, O, stats.data_ptr<acc_t>(), HW);
    }
    ATTNBENCH_LAUNCH_CHECK();
  });
  return {out, stats};
}

std::tuple<at::Tensor, at::Tensor> ran_backward_cuda(const at::Tensor& grad_out_, const at::Tensor& trunk_,
                                                     const at::Tensor& mask_, const at::Tensor& stats_, int64_t kind) {
  check_pair("ran_backward", trunk_, mask_, kind);
  TORCH_CHECK(grad_out_.sizes() == trunk_.sizes() && grad_out_.scalar_type() == trunk_.scalar_type() &&
                  grad_out_.device() == trunk_.device(),
              "ran_backward: grad_out must be ", trunk_.scalar_type(), " of shape ", trunk_.sizes(), " on ",
              trunk_.device(), ", got ", grad_out_.scalar_type(), " ", grad_out_.sizes());
  const auto stype = trunk_.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto shape = stats_shape(trunk_, kind);
  TORCH_CHECK(stats_.sizes() == at::IntArrayRef(shape) && stats_.scalar_type() == stype &&
                  stats_.device() == trunk_.device(),
              "ran_backward: stats must be ", stype, " of shape ", at::IntArrayRef(shape), ", got ",
              stats_.scalar_type(), " ", stats_.sizes());
  const attnbench_cuda::DeviceGuard guard(trunk_.device());
  const at::Tensor g = grad_out_.contiguous(), trunk = trunk_.contiguous(), mask = mask_.contiguous();
  const at::Tensor stats = stats_.contiguous();
  const int64_t B = trunk.size(0), C = trunk.size(1), HW = trunk.size(2) * trunk.size(3), n = trunk.numel();
  at::Tensor dt = at::empty_like(trunk, at::MemoryFormat::Contiguous);
  at::Tensor dm = at::empty_like(trunk, at::MemoryFormat::Contiguous);
  if (n == 0) return {dt, dm};
  const cudaStream_t stream = attnbench_cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, trunk.scalar_type(), "ran_backward_cuda", [&] {
    using acc_t = acc_type_t<scalar_t>;
    const scalar_t* G = g.data_ptr<scalar_t>();
    const scalar_t* T = trunk.data_ptr<scalar_t>();
    const scalar_t* M = mask.data_ptr<scalar_t>();
    scalar_t* DT = dt.data_ptr<scalar_t>();
    scalar_t* DM = dm.data_ptr<scalar_t>();
    if (kind == kMixed) {
      mixed_backward<scalar_t, acc_t><<<grid_for(n), kThreads, 0, stream>>>(G, T, M, DT, DM, n);
    } else if (kind == kChannel) {
      channel_backward<scalar_t, acc_t><<<static_cast<unsigned>(ceil_div(B * HW, kThreads)), kThreads, 0, stream>>>(
          G, T, M, stats.data_ptr<acc_t>(), DT, DM, B, C, HW);
    } else {
      spatial_backward<scalar_t, acc_t><<<static_cast<unsigned>(B * C), kThreads, 0, stream>>>(
          G, T, M, stats.data_ptr<acc_t>(), DT, DM, HW);
    }
    ATTNBENCH_LAUNCH_CHECK();
  });
  return {dt, dm};
}

}  // namespace

TORCH_LIBRARY_IMPL(attnbench_residual_attention, CUDA, m) {
  m.impl("ran_forward", &ran_forward_cuda);
  m.impl("ran_backward", &ran_backward_cuda);
}

}  // namespace attnbench_ran
