// Hard attention: CUDA kernels, same math header as the CPU ones.
// float, double, half and bfloat16; halves accumulate in float (at::opmath_type).
// One thread per output element (glimpse forward), per input pixel (glimpse
// backward: a gather, no atomics, deterministic) or per row (hard_select);
// ceil-division launch sizes.
//
// Stream, device guard and launch check: impls/_common/csrc/cuda_compat.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "cuda_compat.cuh"

#include <type_traits>

#include "hard_attention.h"

namespace attnbench_hard_attention {
namespace {

using attnbench_cuda::current_stream;
using attnbench_cuda::DeviceGuard;

constexpr int kThreads = 256;

inline int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

void check_cuda_glimpse(const char* op, const at::Tensor& t, const at::Tensor& loc, int64_t B, int64_t size,
                        int64_t scales) {
  TORCH_CHECK(t.is_cuda(), op, ": expected a CUDA tensor, got ", t.device());
  TORCH_CHECK(size >= 1, op, ": size must be >= 1, got ", size);
  TORCH_CHECK(scales >= 1 && scales <= 30, op, ": scales must be in [1, 30], got ", scales);
  TORCH_CHECK(loc.dim() == 2 && loc.size(0) == B && loc.size(1) == 2, op, ": loc must have shape [B, 2] = [", B,
              ", 2], got ", loc.sizes());
  TORCH_CHECK(at::isFloatingType(loc.scalar_type()), op, ": loc must be floating point, got ", loc.scalar_type());
  TORCH_CHECK(loc.device() == t.device(), op, ": loc must be on ", t.device(), ", got ", loc.device());
}

// loc (any float dtype) -> int64 [B, 2] centres (cx, cy), computed in double on the device.
__global__ void centres_kernel(const double* loc, int64_t B, int64_t H, int64_t W, int64_t* centre) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  centre[2 * b] = center_index(loc[2 * b], W);
  centre[2 * b + 1] = center_index(loc[2 * b + 1], H);
}

at::Tensor centres(const at::Tensor& loc, int64_t H, int64_t W) {
  const at::Tensor l = loc.to(at::kDouble).contiguous();
  const int64_t B = l.size(0);
  at::Tensor c = at::empty({B, 2}, l.options().dtype(at::kLong));
  if (B > 0) {
    cudaStream_t stream = current_stream();
    centres_kernel<<<blocks_for(B), kThreads, 0, stream>>>(l.data_ptr<double>(), B, H, W, c.data_ptr<int64_t>());
    ATTNBENCH_LAUNCH_CHECK();
  }
  return c;
}

template <typename scalar_t>
__global__ void glimpse_forward_kernel(const scalar_t* x, const int64_t* centre, int64_t B, int64_t C, int64_t H,
                                       int64_t W, int64_t size, int64_t scales, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = B * scales * C * size * size;
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= total) return;
  const int64_t j = idx % size;
  const int64_t i = (idx / size) % size;
  const int64_t plane = idx / (size * size);  // b * scales * C + s * C + c
  const int64_t ch = plane % C;
  const int64_t s = (plane / C) % scales;
  const int64_t b = plane / (scales * C);
  const int64_t f = int64_t(1) << s;
  const int64_t r0 = patch_origin(centre[2 * b + 1], size, f);
  const int64_t c0 = patch_origin(centre[2 * b], size, f);
  out[idx] = static_cast<scalar_t>(
      block_mean<scalar_t, acc_t>(x + (b * C + ch) * H * W, H, W, r0 + i * f, c0 + j * f, f));
}

template <typename scalar_t>
__global__ void glimpse_backward_kernel(const scalar_t* gout, const int64_t* centre, int64_t B, int64_t C, int64_t H,
                                        int64_t W, int64_t size, int64_t scales, scalar_t* grad_x) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = B * C * H * W;
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= total) return;
  const int64_t x = idx % W;
  const int64_t y = (idx / W) % H;
  const int64_t ch = (idx / (H * W)) % C;
  const int64_t b = idx / (C * H * W);
  // gather: deterministic, no atomics
  grad_x[idx] = static_cast<scalar_t>(pixel_grad<scalar_t, acc_t>(gout + b * scales * C * size * size, C, ch, size,
                                                                  scales, centre[2 * b + 1], centre[2 * b], y, x));
}

at::Tensor glimpse_forward_cuda(const at::Tensor& x_in, const at::Tensor& loc, int64_t size, int64_t scales) {
  TORCH_CHECK(x_in.dim() == 4, "glimpse_forward: x must have shape [B, C, H, W], got ", x_in.sizes());
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  check_cuda_glimpse("glimpse_forward", x_in, loc, B, size, scales);
  const DeviceGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor c = centres(loc, H, W);
  at::Tensor out = at::empty({B, scales * C, size, size}, x.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "glimpse_forward_cuda", [&] {
    glimpse_forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), c.data_ptr<int64_t>(), B, C, H, W, size, scales, out.data_ptr<scalar_t>());
  });
  ATTNBENCH_LAUNCH_CHECK();
  return out;
}

at::Tensor glimpse_backward_cuda(const at::Tensor& grad_in, const at::Tensor& loc, int64_t H, int64_t W, int64_t size,
                                 int64_t scales) {
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.size(2) == size && grad_in.size(3) == size &&
                  grad_in.size(1) % scales == 0,
              "glimpse_backward: grad_out must have shape [B, scales*C, size, size] with size = ", size,
              ", scales = ", scales, ", got ", grad_in.sizes());
  TORCH_CHECK(H >= 1 && W >= 1, "glimpse_backward: H and W must be >= 1, got ", H, ", ", W);
  const int64_t B = grad_in.size(0), C = grad_in.size(1) / scales;
  check_cuda_glimpse("glimpse_backward", grad_in, loc, B, size, scales);
  const DeviceGuard guard(grad_in.device());
  const at::Tensor g = grad_in.contiguous();
  const at::Tensor c = centres(loc, H, W);
  at::Tensor grad_x = at::zeros({B, C, H, W}, g.options());
  const int64_t total = grad_x.numel();
  if (total == 0) return grad_x;
  cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "glimpse_backward_cuda", [&] {
    glimpse_backward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), c.data_ptr<int64_t>(), B, C, H, W, size, scales, grad_x.data_ptr<scalar_t>());
  });
  ATTNBENCH_LAUNCH_CHECK();
  return grad_x;
}

void check_cuda_select(const char* op, const at::Tensor& logits, const at::Tensor& values, const at::Tensor& gumbel,
                       double tau) {
  TORCH_CHECK(values.is_cuda(), op, ": expected CUDA tensors, got ", values.device());
  TORCH_CHECK(values.dim() == 3 && values.size(1) >= 1, op, ": values must have shape [B, N, D] with N >= 1, got ",
              values.sizes());
  const int64_t B = values.size(0), N = values.size(1);
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == B && logits.size(1) == N, op,
              ": logits must have shape [B, N] = [", B, ", ", N, "], got ", logits.sizes());
  TORCH_CHECK(gumbel.sizes() == logits.sizes(), op, ": gumbel must have shape [", B, ", ", N, "], got ",
              gumbel.sizes());
  TORCH_CHECK(logits.scalar_type() == values.scalar_type() && gumbel.scalar_type() == values.scalar_type(), op,
              ": logits, values and gumbel must share a dtype, got ", logits.scalar_type(), ", ",
              values.scalar_type(), ", ", gumbel.scalar_type());
  TORCH_CHECK(logits.device() == values.device() && gumbel.device() == values.device(), op,
              ": logits, values and gumbel must be on one device");
  TORCH_CHECK(tau > 0, op, ": tau must be > 0, got ", tau);
}

template <typename scalar_t>
__global__ void select_forward_kernel(const scalar_t* logits, const scalar_t* gumbel, const scalar_t* values, int64_t B,
                                      int64_t N, int64_t D, scalar_t* out, int64_t* index) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  const int64_t n = gumbel_argmax<scalar_t, acc_t>(logits + b * N, gumbel + b * N, N);
  index[b] = n;
  for (int64_t d = 0; d < D; ++d) out[b * D + d] = values[(b * N + n) * D + d];
}

template <typename scalar_t>
__global__ void select_backward_kernel(const scalar_t* gout, const scalar_t* logits, const scalar_t* gumbel,
                                       const scalar_t* values, const int64_t* index, int64_t B, int64_t N, int64_t D,
                                       double tau, bool straight_through, at::opmath_type<scalar_t>* scratch,
                                       scalar_t* grad_logits, scalar_t* grad_values) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  const int64_t n = index[b];
  for (int64_t d = 0; d < D; ++d) grad_values[(b * N + n) * D + d] = gout[b * D + d];
  if (straight_through)
    straight_through_row<scalar_t, acc_t>(logits + b * N, gumbel + b * N, values + b * N * D, gout + b * D, N, D,
                                          static_cast<acc_t>(tau), scratch + 2 * N * b, grad_logits + b * N);
}

std::tuple<at::Tensor, at::Tensor> hard_select_forward_cuda(const at::Tensor& logits_in, const at::Tensor& values_in,
                                                            const at::Tensor& gumbel_in, double tau,
                                                            bool straight_through) {
  check_cuda_select("hard_select_forward", logits_in, values_in, gumbel_in, tau);
  const DeviceGuard guard(values_in.device());
  const at::Tensor logits = logits_in.contiguous(), values = values_in.contiguous(), gumbel = gumbel_in.contiguous();
  const int64_t B = values.size(0), N = values.size(1), D = values.size(2);
  at::Tensor out = at::empty({B, D}, values.options());
  at::Tensor index = at::empty({B}, values.options().dtype(at::kLong));
  if (B == 0) return {out, index};
  cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "hard_select_forward_cuda", [&] {
    select_forward_kernel<scalar_t><<<blocks_for(B), kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), gumbel.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(), B, N, D,
        out.data_ptr<scalar_t>(), index.data_ptr<int64_t>());
  });
  ATTNBENCH_LAUNCH_CHECK();
  return {out, index};
}

std::tuple<at::Tensor, at::Tensor> hard_select_backward_cuda(const at::Tensor& grad_in, const at::Tensor& logits_in,
                                                             const at::Tensor& values_in, const at::Tensor& gumbel_in,
                                                             const at::Tensor& index_in, double tau,
                                                             bool straight_through) {
  check_cuda_select("hard_select_backward", logits_in, values_in, gumbel_in, tau);
  const DeviceGuard guard(values_in.device());
  const int64_t B = values_in.size(0), N = values_in.size(1), D = values_in.size(2);
  TORCH_CHECK(grad_in.dim() == 2 && grad_in.size(0) == B && grad_in.size(1) == D,
              "hard_select_backward: grad_out must have shape [B, D] = [", B, ", ", D, "], got ", grad_in.sizes());
  TORCH_CHECK(grad_in.scalar_type() == values_in.scalar_type() && grad_in.device() == values_in.device(),
              "hard_select_backward: grad_out must be ", values_in.scalar_type(), " on ", values_in.device());
  TORCH_CHECK(index_in.dim() == 1 && index_in.size(0) == B && index_in.scalar_type() == at::kLong &&
                  index_in.device() == values_in.device(),
              "hard_select_backward: index must be int64 of shape [", B, "] on ", values_in.device(), ", got ",
              index_in.scalar_type(), " ", index_in.sizes());
  const at::Tensor g = grad_in.contiguous(), logits = logits_in.contiguous(), values = values_in.contiguous(),
                   gumbel = gumbel_in.contiguous(), index = index_in.contiguous();
  at::Tensor grad_logits = at::zeros({B, N}, values.options());
  at::Tensor grad_values = at::zeros({B, N, D}, values.options());
  if (B == 0) return {grad_logits, grad_values};
  cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "hard_select_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_dtype = std::is_same<acc_t, double>::value ? at::kDouble : at::kFloat;
    at::Tensor scratch = at::empty({straight_through ? 2 * B * N : 1}, values.options().dtype(acc_dtype));
    select_backward_kernel<scalar_t><<<blocks_for(B), kThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), logits.data_ptr<scalar_t>(), gumbel.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
        index.data_ptr<int64_t>(), B, N, D, tau, straight_through, scratch.data_ptr<acc_t>(),
        grad_logits.data_ptr<scalar_t>(), grad_values.data_ptr<scalar_t>());
  });
  ATTNBENCH_LAUNCH_CHECK();
  return {grad_logits, grad_values};
}

}  // namespace

TORCH_LIBRARY_IMPL(attnbench_hard_attention, CUDA, m) {
  m.impl("glimpse_forward", &glimpse_forward_cuda);
  m.impl("glimpse_backward", &glimpse_backward_cuda);
  m.impl("hard_select_forward", &hard_select_forward_cuda);
  m.impl("hard_select_backward", &hard_select_backward_cuda);
}

}  // namespace attnbench_hard_attention
