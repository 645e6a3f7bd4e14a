// Squeeze-and-Excitation: CUDA kernels (same math header as the CPU build).
//
// Forward: one block per (b, c) plane reduces the mean; one thread per (b, r)
// and per (b, c) runs the two tiny linear layers; a grid-stride kernel scales.
// Backward mirrors it: a block per plane for ds = Σ g·x, threads per (b, r) and
// (b, c) for the MLP transposes, an elementwise kernel for dx, one thread per
// weight entry for the batch sums. Half types accumulate in float.
// Stream, device guard and launch check: impls/_common/csrc/cuda_compat.cuh.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda_compat.cuh"

#include "se.h"

namespace attnbench_se {
namespace {

constexpr int kThreads = 256;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

unsigned elementwise_blocks(int64_t n) {
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

template <typename scalar_t, typename acc_t>
__global__ void pool_kernel(const scalar_t* __restrict__ x, acc_t* __restrict__ z, int64_t HW) {
  const int64_t p = blockIdx.x;
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) sum += acc_t(x[p * HW + i]);
  sum = block_sum(sum);
  if (threadIdx.x == 0) z[p] = sum / acc_t(HW);
}

template <typename scalar_t, typename acc_t>
__global__ void hidden_kernel(const scalar_t* __restrict__ w1, const scalar_t* __restrict__ b1,
                              const acc_t* __restrict__ z, acc_t* __restrict__ u, int64_t B, int64_t C, int64_t Cr) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k >= B * Cr) return;
  const int64_t b = k / Cr, r = k % Cr;
  u[k] = hidden_unit<scalar_t, acc_t>(w1 + r * C, b1, z + b * C, C, r);
}

template <typename scalar_t, typename acc_t>
__global__ void gate_kernel(const scalar_t* __restrict__ w2, const scalar_t* __restrict__ b2,
                            const acc_t* __restrict__ u, acc_t* __restrict__ s, int64_t B, int64_t C, int64_t Cr) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k >= B * C) return;
  const int64_t b = k / C, c = k % C;
  s[k] = gate<scalar_t, acc_t>(w2 + c * Cr, b2, u + b * Cr, Cr, c);
}

template <typename scalar_t, typename acc_t>
__global__ void scale_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ s, scalar_t* __restrict__ out,
                             int64_t n, int64_t HW) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = scalar_t(acc_t(x[i]) * s[i / HW]);
}

template <typename scalar_t, typename acc_t>
__global__ void gate_grad_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                 const acc_t* __restrict__ s, acc_t* __restrict__ dp2, int64_t HW) {
  const int64_t p = blockIdx.x;
  acc_t ds = 0;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) ds += acc_t(g[p * HW + i]) * acc_t(x[p * HW + i]);
  ds = block_sum(ds);
  if (threadIdx.x == 0) dp2[p] = gate_pre_grad(ds, s[p]);
}

template <typename scalar_t, typename acc_t>
__global__ void hidden_grad_kernel(const scalar_t* __restrict__ w2, const acc_t* __restrict__ dp2,
                                   const acc_t* __restrict__ u, acc_t* __restrict__ dp1, int64_t B, int64_t C,
                                   int64_t Cr) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k >= B * Cr) return;
  const int64_t b = k / Cr, r = k % Cr;
  dp1[k] = hidden_pre_grad(w2, dp2 + b * C, u[k], C, Cr, r);
}

template <typename scalar_t, typename acc_t>
__global__ void pooled_grad_kernel(const scalar_t* __restrict__ w1, const acc_t* __restrict__ dp1,
                                   acc_t* __restrict__ dz, int64_t B, int64_t C, int64_t Cr) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k >= B * C) return;
  const int64_t b = k / C, c = k % C;
  dz[k] = pooled_grad(w1, dp1 + b * Cr, C, Cr, c);
}

template <typename scalar_t, typename acc_t>
__global__ void input_grad_kernel(const scalar_t* __restrict__ g, const acc_t* __restrict__ s,
                                  const acc_t* __restrict__ dz, scalar_t* __restrict__ dx, int64_t n, int64_t HW) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = i / HW;
    dx[i] = scalar_t(input_grad(acc_t(g[i]), s[p], dz[p] / acc_t(HW)));
  }
}

// dw2[c,r] = Σ_b dp2[b,c]·u[b,r], dw1[r,c] = Σ_b dp1[b,r]·z[b,c]; the thread with r = 0
// also writes db2[c], the one with c = 0 db1[r].
template <typename scalar_t, typename acc_t>
__global__ void weight_grad_kernel(const acc_t* __restrict__ dp2, const acc_t* __restrict__ dp1,
                                   const acc_t* __restrict__ z, const acc_t* __restrict__ u, scalar_t* __restrict__ dw1,
                                   scalar_t* __restrict__ db1, scalar_t* __restrict__ dw2, scalar_t* __restrict__ db2,
                                   int64_t B, int64_t C, int64_t Cr) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k >= C * Cr) return;
  const int64_t c = k / Cr, r = k % Cr;
  acc_t w2g = 0, w1g = 0, b2g = 0, b1g = 0;
  for (int64_t b = 0; b < B; ++b) {
    w2g += dp2[b * C + c] * u[b * Cr + r];
    w1g += dp1[b * Cr + r] * z[b * C + c];
    b2g += dp2[b * C + c];
    b1g += dp1[b * Cr + r];
  }
  dw2[c * Cr + r] = scalar_t(w2g);
  dw1[r * C + c] = scalar_t(w1g);
  if (r == 0) db2[c] = scalar_t(b2g);
  if (c == 0) db1[r] = scalar_t(b1g);
}

void check_cuda_inputs(const char* op, std::initializer_list<const at::Tensor*> ts) {
  for (const auto* t : ts)
    TORCH_CHECK(t->is_cuda(), op, ": CUDA kernel expects every tensor on a CUDA device, got ", t->device());
}

void check_shapes(const char* op, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2) {
  TORCH_CHECK(x.dim() == 4, op, ": x must have shape [B, C, H, W], got ", x.sizes());
  const int64_t C = x.size(1);
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == C, op, ": w1 must have shape [Cr, C] with C = ", C, ", got ", w1.sizes());
  TORCH_CHECK(w1.size(0) >= 1, op, ": the reduction leaves Cr = ", w1.size(0), " hidden units for C = ", C,
              " (r > C); SE needs Cr >= 1");
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == C && w2.size(1) == w1.size(0), op, ": w2 must have shape [C, Cr] = [",
              C, ", ", w1.size(0), "], got ", w2.sizes());
  TORCH_CHECK(w1.scalar_type() == x.scalar_type() && w2.scalar_type() == x.scalar_type(), op,
              ": weights must have x's dtype ", x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_forward_cuda(const at::Tensor& x_, const at::Tensor& w1_,
                                                                           const std::optional<at::Tensor>& b1_,
                                                                           const at::Tensor& w2_,
                                                                           const std::optional<at::Tensor>& b2_) {
  check_cuda_inputs("se_forward", {&x_, &w1_, &w2_});
  check_shapes("se_forward", x_, w1_, w2_);
  const attnbench_cuda::DeviceGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), w1 = w1_.contiguous(), w2 = w2_.contiguous();
  const at::Tensor b1 = b1_.has_value() ? b1_->contiguous() : at::Tensor();
  const at::Tensor b2 = b2_.has_value() ? b2_->contiguous() : at::Tensor();
  if (b1.defined())
    TORCH_CHECK(b1.is_cuda() && b1.numel() == w1.size(0) && b1.scalar_type() == x.scalar_type(),
                "se_forward: b1 must be a CUDA tensor of shape [Cr] with x's dtype, got ", b1.sizes());
  if (b2.defined())
    TORCH_CHECK(b2.is_cuda() && b2.numel() == x.size(1) && b2.scalar_type() == x.scalar_type(),
                "se_forward: b2 must be a CUDA tensor of shape [C] with x's dtype, got ", b2.sizes());
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), Cr = w1.size(0), n = x.numel();
  TORCH_CHECK(HW > 0, "se_forward: x must have H·W > 0, got ", x.sizes());
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto st = x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  at::Tensor z = at::empty({B, C}, st), u = at::empty({B, Cr}, st), s = at::empty({B, C}, st);
  auto stream = attnbench_cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_forward_cuda", [&] {
    using acc_t = acc_type_t<scalar_t>;
    const scalar_t* b1p = b1.defined() ? b1.data_ptr<scalar_t>() : nullptr;
    const scalar_t* b2p = b2.defined() ? b2.data_ptr<scalar_t>() : nullptr;
    pool_kernel<scalar_t, acc_t><<<static_cast<unsigned>(B * C), kThreads, 0, stream>>>(x.data_ptr<scalar_t>(),
                                                                                        z.data_ptr<acc_t>(), HW);
    ATTNBENCH_LAUNCH_CHECK();
    hidden_kernel<scalar_t, acc_t><<<static_cast<unsigned>(ceil_div(B * Cr, kThreads)), kThreads, 0, stream>>>(
        w1.data_ptr<scalar_t>(), b1p, z.data_ptr<acc_t>(), u.data_ptr<acc_t>(), B, C, Cr);
    ATTNBENCH_LAUNCH_CHECK();
    gate_kernel<scalar_t, acc_t><<<static_cast<unsigned>(ceil_div(B * C, kThreads)), kThreads, 0, stream>>>(
        w2.data_ptr<scalar_t>(), b2p, u.data_ptr<acc_t>(), s.data_ptr<acc_t>(), B, C, Cr);
    ATTNBENCH_LAUNCH_CHECK();
    scale_kernel<scalar_t, acc_t><<<elementwise_blocks(n), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), s.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), n, HW);
    ATTNBENCH_LAUNCH_CHECK();
  });
  return {out, z, u, s};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_backward_cuda(
    const at::Tensor& grad_out_, const at::Tensor& x_, const at::Tensor& w1_, const at::Tensor& w2_,
    const at::Tensor& z_, const at::Tensor& u_, const at::Tensor& s_) {
  check_cuda_inputs("se_backward", {&grad_out_, &x_, &w1_, &w2_, &z_, &u_, &s_});
  check_shapes("se_backward", x_, w1_, w2_);
  TORCH_CHECK(grad_out_.sizes() == x_.sizes() && grad_out_.scalar_type() == x_.scalar_type(),
              "se_backward: grad_out must be ", x_.scalar_type(), " of shape ", x_.sizes(), ", got ",
              grad_out_.scalar_type(), " ", grad_out_.sizes());
  const attnbench_cuda::DeviceGuard guard(x_.device());
  const at::Tensor g = grad_out_.contiguous(), x = x_.contiguous(), w1 = w1_.contiguous(), w2 = w2_.contiguous();
  const at::Tensor z = z_.contiguous(), u = u_.contiguous(), s = s_.contiguous();
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), Cr = w1.size(0), n = x.numel();
  const auto stype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(z.scalar_type() == stype && u.scalar_type() == stype && s.scalar_type() == stype,
              "se_backward: saved z/u/s must be ", stype);
  TORCH_CHECK(z.numel() == B * C && u.numel() == B * Cr && s.numel() == B * C,
              "se_backward: saved z, u, s must have shapes [B, C], [B, Cr], [B, C]");
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor dw1 = at::empty_like(w1, at::MemoryFormat::Contiguous), db1 = at::empty({Cr}, w1.options());
  at::Tensor dw2 = at::empty_like(w2, at::MemoryFormat::Contiguous), db2 = at::empty({C}, w1.options());
  const auto st = x.options().dtype(stype);
  at::Tensor dp2 = at::empty({B, C}, st), dp1 = at::empty({B, Cr}, st), dz = at::empty({B, C}, st);
  auto stream = attnbench_cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_backward_cuda", [&] {
    using acc_t = acc_type_t<scalar_t>;
    gate_grad_kernel<scalar_t, acc_t><<<static_cast<unsigned>(B * C), kThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), s.data_ptr<acc_t>(), dp2.data_ptr<acc_t>(), HW);
    ATTNBENCH_LAUNCH_CHECK();
    hidden_grad_kernel<scalar_t, acc_t><<<static_cast<unsigned>(ceil_div(B * Cr, kThreads)), kThreads, 0, stream>>>(
        w2.data_ptr<scalar_t>(), dp2.data_ptr<acc_t>(), u.data_ptr<acc_t>(), dp1.data_ptr<acc_t>(), B, C, Cr);
    ATTNBENCH_LAUNCH_CHECK();
    pooled_grad_kernel<scalar_t, acc_t><<<static_cast<unsigned>(ceil_div(B * C, kThreads)), kThreads, 0, stream>>>(
        w1.data_ptr<scalar_t>(), dp1.data_ptr<acc_t>(), dz.data_ptr<acc_t>(), B, C, Cr);
    ATTNBENCH_LAUNCH_CHECK();
    input_grad_kernel<scalar_t, acc_t><<<elementwise_blocks(n), kThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), s.data_ptr<acc_t>(), dz.data_ptr<acc_t>(), dx.data_ptr<scalar_t>(), n, HW);
    ATTNBENCH_LAUNCH_CHECK();
    weight_grad_kernel<scalar_t, acc_t><<<static_cast<unsigned>(ceil_div(C * Cr, kThreads)), kThreads, 0, stream>>>(
        dp2.data_ptr<acc_t>(), dp1.data_ptr<acc_t>(), z.data_ptr<acc_t>(), u.data_ptr<acc_t>(),
        dw1.data_ptr<scalar_t>(), db1.data_ptr<scalar_t>(), dw2.data_ptr<scalar_t>(), db2.data_ptr<scalar_t>(), B, C,
        Cr);
    ATTNBENCH_LAUNCH_CHECK();
  });
  return {dx, dw1, db1, dw2, db2};
}

}  // namespace

TORCH_LIBRARY_IMPL(attnbench_se, CUDA, m) {
  m.impl("se_forward", &se_forward_cuda);
  m.impl("se_backward", &se_backward_cuda);
}

}  // namespace attnbench_se
