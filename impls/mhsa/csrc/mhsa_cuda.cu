// Fused multi-head attention, CUDA kernels (same math header as the CPU kernels).
//
// float, double, half and bfloat16; halves accumulate in float (at::opmath_type)
// and save lse in float32. Forward: one thread per query row, keys streamed with
// the online softmax, nothing of size L×S stored. Backward: D = Σ gout·out per
// row, then one thread per query row for dq and one thread per key for dk, dv,
// both recomputing p from lse: deterministic, no atomics.
//
// Stream, device guard and launch check: impls/_common/csrc/cuda_compat.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "cuda_compat.cuh"

#include <tuple>

#include "mhsa.h"

namespace attnbench_mhsa {
namespace {

using attnbench_cuda::current_stream;
using attnbench_cuda::DeviceGuard;

constexpr int kThreads = 128;
constexpr int kMaxHeadDim = 256;  // per-thread accumulators live in registers/local memory

struct Dims {
  int64_t B, H, L, S, D, DV;
};

// Ceil-division launch size: one thread per row (or key), none truncated.
unsigned int blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= int64_t{0x7fffffff}, "attnbench_mhsa: ", n, " rows exceed the CUDA grid limit");
  return static_cast<unsigned int>(blocks);
}

Dims check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const std::optional<at::Tensor>& mask) {
  TORCH_CHECK(q.dim() == 4, op, ": q must have shape [B, h, L, d], got ", q.sizes());
  TORCH_CHECK(k.dim() == 4, op, ": k must have shape [B, h, S, d], got ", k.sizes());
  TORCH_CHECK(v.dim() == 4, op, ": v must have shape [B, h, S, dv], got ", v.sizes());
  const Dims n{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  TORCH_CHECK(k.size(0) == n.B && k.size(1) == n.H && k.size(3) == n.D, op, ": k must have shape [B, h, S, d] = [",
              n.B, ", ", n.H, ", S, ", n.D, "], got ", k.sizes());
  TORCH_CHECK(v.size(0) == n.B && v.size(1) == n.H && v.size(2) == n.S, op, ": v must have shape [B, h, S, dv] = [",
              n.B, ", ", n.H, ", ", n.S, ", dv], got ", v.sizes());
  TORCH_CHECK(n.D <= kMaxHeadDim && n.DV <= kMaxHeadDim, op, ": the CUDA kernels support head dims up to ",
              kMaxHeadDim, ", got d = ", n.D, ", dv = ", n.DV);
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": q, k, v must have one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(q.is_cuda() && k.device() == q.device() && v.device() == q.device(), op,
              ": q, k, v must be on one CUDA device, got ", q.device(), ", ", k.device(), ", ", v.device());
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool, op, ": mask must be bool (True = ignore the key), got ",
                mask->scalar_type());
    TORCH_CHECK(mask->dim() == 2 && mask->size(0) == n.B && mask->size(1) == n.S, op,
                ": mask must have shape [B, S] = [", n.B, ", ", n.S, "], got ", mask->sizes());
    TORCH_CHECK(mask->device() == q.device(), op, ": mask must be on ", q.device(), ", got ", mask->device());
  }
  return n;
}

template <typename scalar_t, typename acc_t>
__device__ inline acc_t dot(const scalar_t* a, const scalar_t* b, int64_t n) {
  acc_t sum = 0;
  for (int64_t t = 0; t < n; ++t) sum += static_cast<acc_t>(a[t]) * static_cast<acc_t>(b[t]);
  return sum;
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                               const scalar_t* __restrict__ v, const bool* __restrict__ mask,
                               scalar_t* __restrict__ out, acc_t* __restrict__ lse, Dims n, bool causal, acc_t scale) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= n.B * n.H * n.L) return;
  const int64_t bh = row / n.L, i = row % n.L, b = bh / n.H;
  const scalar_t* qi = q + row * n.D;
  acc_t acc[kMaxHeadDim];
  for (int64_t c = 0; c < n.DV; ++c) acc[c] = 0;
  acc_t m = neg_inf<acc_t>(), l = 0;
  const int64_t keys = key_end(i + 1, n.S, causal);
  for (int64_t j = 0; j < keys; ++j) {
    if (!allowed(i, j, mask != nullptr && mask[b * n.S + j], causal)) continue;
    const acc_t s = scale * dot<scalar_t, acc_t>(qi, k + (bh * n.S + j) * n.D, n.D);
    const acc_t factor = online_rescale(m, l, s);
    const acc_t p = prob_from_max(s, m);
    l += p;
    const scalar_t* vj = v + (bh * n.S + j) * n.DV;
    for (int64_t c = 0; c < n.DV; ++c) acc[c] = acc[c] * factor + p * static_cast<acc_t>(vj[c]);
  }
  const acc_t inv = inv_sum(l);
  for (int64_t c = 0; c < n.DV; ++c) out[row * n.DV + c] = static_cast<scalar_t>(acc[c] * inv);
  lse[row] = log_sum_exp(m, l);
}

template <typename scalar_t, typename acc_t>
__global__ void row_dot_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ out,
                               acc_t* __restrict__ D, int64_t rows, int64_t dv) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  D[row] = dot<scalar_t, acc_t>(gout + row * dv, out + row * dv, dv);
}

template <typename scalar_t, typename acc_t>
__global__ void dq_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ q,
                          const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                          const bool* __restrict__ mask, const acc_t* __restrict__ lse, const acc_t* __restrict__ D,
                          scalar_t* __restrict__ dq, Dims n, bool causal, acc_t scale) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= n.B * n.H * n.L) return;
  const int64_t bh = row / n.L, i = row % n.L, b = bh / n.H;
  acc_t acc[kMaxHeadDim];
  for (int64_t t = 0; t < n.D; ++t) acc[t] = 0;
  const acc_t lse_i = lse[row];
  const scalar_t* qi = q + row * n.D;
  const scalar_t* gi = gout + row * n.DV;
  const int64_t keys = key_end(i + 1, n.S, causal);
  for (int64_t j = 0; j < keys && lse_i != neg_inf<acc_t>(); ++j) {
    const bool ok = allowed(i, j, mask != nullptr && mask[b * n.S + j], causal);
    if (!ok) continue;
    const scalar_t* kj = k + (bh * n.S + j) * n.D;
    const acc_t p = prob_from_lse(scale * dot<scalar_t, acc_t>(qi, kj, n.D), lse_i, ok);
    const acc_t dp = dot<scalar_t, acc_t>(gi, v + (bh * n.S + j) * n.DV, n.DV);
    const acc_t ds = scale * dscore(p, dp, D[row]);
    for (int64_t t = 0; t < n.D; ++t) acc[t] += ds * static_cast<acc_t>(kj[t]);
  }
  for (int64_t t = 0; t < n.D; ++t) dq[row * n.D + t] = static_cast<scalar_t>(acc[t]);
}

template <typename scalar_t, typename acc_t>
__global__ void dkv_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ q,
                           const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                           const bool* __restrict__ mask, const acc_t* __restrict__ lse,
                           const acc_t* __restrict__ D, scalar_t* __restrict__ dk, scalar_t* __restrict__ dv, Dims n,
                           bool causal, acc_t scale) {
  const int64_t key = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (key >= n.B * n.H * n.S) return;
  const int64_t bh = key / n.S, j = key % n.S, b = bh / n.H;
  acc_t dk_acc[kMaxHeadDim], dv_acc[kMaxHeadDim];
  for (int64_t t = 0; t < n.D; ++t) dk_acc[t] = 0;
  for (int64_t c = 0; c < n.DV; ++c) dv_acc[c] = 0;
  const scalar_t* kj = k + key * n.D;
  const scalar_t* vj = v + key * n.DV;
  const bool padded = mask != nullptr && mask[b * n.S + j];
  for (int64_t i = first_query(j, causal); i < n.L && !padded; ++i) {
    const int64_t row = bh * n.L + i;
    const bool ok = allowed(i, j, padded, causal);
    const acc_t lse_i = lse[row];
    if (!ok || lse_i == neg_inf<acc_t>()) continue;
    const scalar_t* qi = q + row * n.D;
    const scalar_t* gi = gout + row * n.DV;
    const acc_t p = prob_from_lse(scale * dot<scalar_t, acc_t>(qi, kj, n.D), lse_i, ok);
    const acc_t dp = dot<scalar_t, acc_t>(gi, vj, n.DV);
    const acc_t ds = scale * dscore(p, dp, D[row]);
    for (int64_t t = 0; t < n.D; ++t) dk_acc[t] += ds * static_cast<acc_t>(qi[t]);
    for (int64_t c = 0; c < n.DV; ++c) dv_acc[c] += p * static_cast<acc_t>(gi[c]);
  }
  for (int64_t t = 0; t < n.D; ++t) dk[key * n.D + t] = static_cast<scalar_t>(dk_acc[t]);
  for (int64_t c = 0; c < n.DV; ++c) dv[key * n.DV + c] = static_cast<scalar_t>(dv_acc[c]);
}

at::ScalarType lse_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

std::tuple<at::Tensor, at::Tensor> flash_forward_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                      const at::Tensor& v_in,
                                                      const std::optional<at::Tensor>& mask_in, bool causal,
                                                      double scale) {
  const Dims n = check_inputs("flash_forward", q_in, k_in, v_in, mask_in);
  const DeviceGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  std::optional<at::Tensor> mask;
  if (mask_in.has_value()) mask = mask_in->contiguous();
  at::Tensor out = at::empty({n.B, n.H, n.L, n.DV}, q.options());
  at::Tensor lse = at::empty({n.B, n.H, n.L}, q.options().dtype(lse_type(q.scalar_type())));
  const int64_t rows = n.B * n.H * n.L;
  if (rows == 0) return {out, lse};
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "flash_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<blocks_for(rows), kThreads, 0, stream>>>(
        q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
        mask ? mask->const_data_ptr<bool>() : nullptr, out.mutable_data_ptr<scalar_t>(),
        lse.mutable_data_ptr<acc_t>(), n, causal, static_cast<acc_t>(scale));
    ATTNBENCH_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_backward_cuda(
    const at::Tensor& gout_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const std::optional<at::Tensor>& mask_in, const at::Tensor& out_in, const at::Tensor& lse_in, bool causal,
    double scale) {
  const Dims n = check_inputs("flash_backward", q_in, k_in, v_in, mask_in);
  for (const at::Tensor* t : {&gout_in, &out_in}) {
    TORCH_CHECK(t->dim() == 4 && t->size(0) == n.B && t->size(1) == n.H && t->size(2) == n.L && t->size(3) == n.DV,
                "flash_backward: gout and out must have shape [B, h, L, dv] = [", n.B, ", ", n.H, ", ", n.L, ", ",
                n.DV, "], got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == q_in.scalar_type() && t->device() == q_in.device(),
                "flash_backward: gout and out must be ", q_in.scalar_type(), " on ", q_in.device());
  }
  TORCH_CHECK(lse_in.dim() == 3 && lse_in.size(0) == n.B && lse_in.size(1) == n.H && lse_in.size(2) == n.L,
              "flash_backward: lse must have shape [B, h, L] = [", n.B, ", ", n.H, ", ", n.L, "], got ",
              lse_in.sizes());
  TORCH_CHECK(lse_in.scalar_type() == lse_type(q_in.scalar_type()), "flash_backward: lse must be ",
              lse_type(q_in.scalar_type()), ", got ", lse_in.scalar_type());
  const DeviceGuard guard(q_in.device());
  const at::Tensor gout = gout_in.contiguous(), q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor out = out_in.contiguous(), lse = lse_in.contiguous();
  std::optional<at::Tensor> mask;
  if (mask_in.has_value()) mask = mask_in->contiguous();
  at::Tensor dq = at::empty({n.B, n.H, n.L, n.D}, q.options());
  at::Tensor dk = at::empty({n.B, n.H, n.S, n.D}, q.options());
  at::Tensor dv = at::empty({n.B, n.H, n.S, n.DV}, q.options());
  at::Tensor D = at::empty({n.B, n.H, n.L}, lse.options());
  const int64_t rows = n.B * n.H * n.L, keys = n.B * n.H * n.S;
  if (rows == 0 || keys == 0) return {dq.zero_(), dk.zero_(), dv.zero_()};
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "flash_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool* mask_ptr = mask ? mask->const_data_ptr<bool>() : nullptr;
    row_dot_kernel<scalar_t, acc_t><<<blocks_for(rows), kThreads, 0, stream>>>(
        gout.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(), D.mutable_data_ptr<acc_t>(), rows, n.DV);
    ATTNBENCH_LAUNCH_CHECK();
    dq_kernel<scalar_t, acc_t><<<blocks_for(rows), kThreads, 0, stream>>>(
        gout.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
        v.const_data_ptr<scalar_t>(), mask_ptr, lse.const_data_ptr<acc_t>(), D.const_data_ptr<acc_t>(),
        dq.mutable_data_ptr<scalar_t>(), n, causal, static_cast<acc_t>(scale));
    ATTNBENCH_LAUNCH_CHECK();
    dkv_kernel<scalar_t, acc_t><<<blocks_for(keys), kThreads, 0, stream>>>(
        gout.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
        v.const_data_ptr<scalar_t>(), mask_ptr, lse.const_data_ptr<acc_t>(), D.const_data_ptr<acc_t>(),
        dk.mutable_data_ptr<scalar_t>(), dv.mutable_data_ptr<scalar_t>(), n, causal, static_cast<acc_t>(scale));
    ATTNBENCH_LAUNCH_CHECK();
  });
  return {dq, dk, dv};
}

}  // namespace
}  // namespace attnbench_mhsa

TORCH_LIBRARY_IMPL(attnbench_mhsa, CUDA, m) {
  m.impl("flash_forward", &attnbench_mhsa::flash_forward_cuda);
  m.impl("flash_backward", &attnbench_mhsa::flash_backward_cuda);
}
