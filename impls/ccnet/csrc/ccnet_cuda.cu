// Criss-cross attention (CCNet) CUDA kernels for the ops declared in ccnet.cpp.
//
// One thread per output element, computed from the shared math of ccnet.h
// (gathers: no atomics, no accumulation into uninitialised memory), in float32,
// float64, float16 and bfloat16 with float accumulation for the half types.
// Grid sizes use ceil-division and grid-stride loops, so no size is truncated.
// cca_fused: one block per (batch, row, tile of TX pixels) keeps the tile's
// energies [L, TX] in shared memory, softmaxes them and aggregates; the
// [B, H+W-1, H, W] map never exists.
//
// Stream, device guard and launch check: impls/_common/csrc/cuda_compat.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "cuda_compat.cuh"

#include <algorithm>

#include "ccnet.h"
#include "ccnet_ops.h"

namespace attnbench_ccnet {
namespace {

using attnbench_cuda::current_stream;
using attnbench_cuda::DeviceGuard;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 30;  // grid-stride loops cover the rest
constexpr int64_t kSharedBytes = 48 * 1024;       // default dynamic shared memory limit

inline unsigned ceil_blocks(int64_t n, int threads = kThreads) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, kMaxBlocks)));
}

// Decomposes a flat index of a contiguous [B, D, H, W] tensor.
struct Index4 {
  int64_t b;
  int d, y, x;
};

__device__ inline Index4 unflatten(int64_t idx, int D, int H, int W) {
  Index4 i;
  i.x = static_cast<int>(idx % W);
  idx /= W;
  i.y = static_cast<int>(idx % H);
  idx /= H;
  i.d = static_cast<int>(idx % D);
  i.b = idx / D;
  return i;
}

// energy[b, z, y, x] = sum_c q[b, c, y, x] * k[b, c, kappa(z; y, x)]
template <typename scalar_t>
__global__ void weight_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                              scalar_t* __restrict__ energy, int64_t B, int channels, int H, int W) {
  using acc_t = at::opmath_type<scalar_t>;
  const int L = H + W - 1;
  const int64_t plane = static_cast<int64_t>(H) * W;
  const int64_t total = B * L * plane;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Index4 i = unflatten(idx, L, H, W);
    const int64_t off = i.b * channels * plane;
    energy[idx] = static_cast<scalar_t>(energy_at<acc_t>(q + off, k + off, channels, H, W, i.d, i.y, i.x));
  }
}

// out[b, c, y, x] = sum_z attn[b, z, y, x] * v[b, c, kappa(z; y, x)]
template <typename scalar_t>
__global__ void map_kernel(const scalar_t* __restrict__ attn, const scalar_t* __restrict__ v,
                           scalar_t* __restrict__ out, int64_t B, int channels, int H, int W) {
  using acc_t = at::opmath_type<scalar_t>;
  const int L = H + W - 1;
  const int64_t plane = static_cast<int64_t>(H) * W;
  const int64_t total = B * channels * plane;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Index4 i = unflatten(idx, channels, H, W);
    const scalar_t* a = attn + i.b * L * plane + static_cast<int64_t>(i.y) * W + i.x;
    out[idx] = static_cast<scalar_t>(aggregate_at<acc_t>(a, plane, v + i.b * channels * plane, H, W, i.d, i.y, i.x));
  }
}

// grad[b, c, y', x'] (dk from (dE, q), dv from (A, dOut)): spec §2.1, as a gather.
template <typename scalar_t>
__global__ void key_grad_kernel(const scalar_t* __restrict__ weight, const scalar_t* __restrict__ query,
                                scalar_t* __restrict__ grad, int64_t B, int channels, int H, int W) {
  using acc_t = at::opmath_type<scalar_t>;
  const int L = H + W - 1;
  const int64_t plane = static_cast<int64_t>(H) * W;
  const int64_t total = B * channels * plane;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Index4 i = unflatten(idx, channels, H, W);
    grad[idx] = static_cast<scalar_t>(
        key_grad_at<acc_t>(weight + i.b * L * plane, query + i.b * channels * plane, H, W, i.d, i.y, i.x));
  }
}

// Softmax over z of [B, L, H, W], one thread per pixel (float statistics for half types).
template <typename scalar_t>
__global__ void softmax_kernel(const scalar_t* __restrict__ energy, scalar_t* __restrict__ attn, int64_t B, int H,
                               int W) {
  using acc_t = at::opmath_type<scalar_t>;
  const int L = H + W - 1;
  const int64_t plane = static_cast<int64_t>(H) * W;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < B * plane;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t base = (p / plane) * L * plane + p % plane;
    acc_t mx = static_cast<acc_t>(energy[base]);
    for (int z = 1; z < L; ++z) mx = max(mx, static_cast<acc_t>(energy[base + z * plane]));
    acc_t sum = 0;
    for (int z = 0; z < L; ++z) sum += exp(static_cast<acc_t>(energy[base + z * plane]) - mx);
    const acc_t inv = acc_t(1) / sum;
    for (int z = 0; z < L; ++z) {
      attn[base + z * plane] = static_cast<scalar_t>(exp(static_cast<acc_t>(energy[base + z * plane]) - mx) * inv);
    }
  }
}

// dE = A * (dA - sum_z A * dA), one thread per pixel.
template <typename scalar_t>
__global__ void softmax_backward_kernel(const scalar_t* __restrict__ grad_attn, const scalar_t* __restrict__ attn,
                                        scalar_t* __restrict__ grad_energy, int64_t B, int H, int W) {
  using acc_t = at::opmath_type<scalar_t>;
  const int L = H + W - 1;
  const int64_t plane = static_cast<int64_t>(H) * W;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < B * plane;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t base = (p / plane) * L * plane + p % plane;
    acc_t dot = 0;
    for (int z = 0; z < L; ++z) {
      dot += static_cast<acc_t>(attn[base + z * plane]) * static_cast<acc_t>(grad_attn[base + z * plane]);
    }
    for (int z = 0; z < L; ++z) {
      const int64_t i = base + z * plane;
      grad_energy[i] = static_cast<scalar_t>(static_cast<acc_t>(attn[i]) * (static_cast<acc_t>(grad_attn[i]) - dot));
    }
  }
}

// One block per (b, y, tile of `tile` pixels along x); shared: the tile's weights [L][tile].
template <typename scalar_t>
__global__ void fused_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                             const scalar_t* __restrict__ v, scalar_t* __restrict__ out, int64_t B, int cq, int cv,
                             int H, int W, int tile) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char shared_raw[];
  acc_t* weights = reinterpret_cast<acc_t*>(shared_raw);
  const int L = H + W - 1;
  const int64_t plane = static_cast<int64_t>(H) * W;
  const int64_t tiles = (W + tile - 1) / tile;
  for (int64_t blk = blockIdx.x; blk < B * H * tiles; blk += gridDim.x) {
    const int x0 = static_cast<int>(blk % tiles) * tile;
    const int y = static_cast<int>((blk / tiles) % H);
    const int64_t b = blk / (tiles * H);
    const int n = min(tile, W - x0);
    const scalar_t* qb = q + b * cq * plane;
    const scalar_t* kb = k + b * cq * plane;
    // 1. energies of the tile
    for (int e = threadIdx.x; e < L * tile; e += blockDim.x) {
      const int z = e / tile, xi = e % tile;
      if (xi < n) weights[e] = energy_at<acc_t>(qb, kb, cq, H, W, z, y, x0 + xi);
    }
    __syncthreads();
    // 2. softmax over z, one thread per pixel
    for (int xi = threadIdx.x; xi < n; xi += blockDim.x) {
      acc_t mx = weights[xi];
      for (int z = 1; z < L; ++z) mx = max(mx, weights[z * tile + xi]);
      acc_t sum = 0;
      for (int z = 0; z < L; ++z) {
        const acc_t e = exp(weights[z * tile + xi] - mx);
        weights[z * tile + xi] = e;
        sum += e;
      }
      const acc_t inv = acc_t(1) / sum;
      for (int z = 0; z < L; ++z) weights[z * tile + xi] *= inv;
    }
    __syncthreads();
    // 3. aggregation, one thread per (channel, pixel)
    const scalar_t* vb = v + b * cv * plane;
    for (int e = threadIdx.x; e < cv * tile; e += blockDim.x) {
      const int c = e / tile, xi = e % tile;
      if (xi < n) {
        const int x = x0 + xi;
        out[b * cv * plane + c * plane + static_cast<int64_t>(y) * W + x] =
            static_cast<scalar_t>(aggregate_at<acc_t>(weights + xi, tile, vb, H, W, c, y, x));
      }
    }
    __syncthreads();  // the next tile reuses the shared weights
  }
}

inline void check_cuda_tensor(const char* op, const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.is_cuda(), op_name(op), ": ", name, " must be a CUDA tensor here, got ", x.device());
}

struct Dims {
  int64_t B;
  int channels, H, W, L;
};

inline Dims dims(const at::Tensor& x) {
  return {x.size(0), static_cast<int>(x.size(1)), static_cast<int>(x.size(2)), static_cast<int>(x.size(3)),
          static_cast<int>(x.size(2) + x.size(3) - 1)};
}

at::Tensor weight_cuda(const at::Tensor& q_in, const at::Tensor& k_in) {
  const at::Tensor q = dense(q_in), k = dense(k_in);
  const Dims d = dims(q);
  at::Tensor energy = at::empty({d.B, d.L, d.H, d.W}, q.options());
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "attnbench_ccnet::ca_weight", [&] {
    weight_kernel<scalar_t><<<ceil_blocks(energy.numel()), kThreads, 0, stream>>>(
        q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), energy.mutable_data_ptr<scalar_t>(), d.B,
        d.channels, d.H, d.W);
    ATTNBENCH_LAUNCH_CHECK();
  });
  return energy;
}

at::Tensor map_cuda(const at::Tensor& a_in, const at::Tensor& v_in) {
  const at::Tensor attn = dense(a_in), v = dense(v_in);
  const Dims d = dims(v);
  at::Tensor out = at::empty({d.B, d.channels, d.H, d.W}, v.options());
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "attnbench_ccnet::ca_map", [&] {
    map_kernel<scalar_t><<<ceil_blocks(out.numel()), kThreads, 0, stream>>>(
        attn.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), d.B,
        d.channels, d.H, d.W);
    ATTNBENCH_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor key_grad_cuda(const at::Tensor& w_in, const at::Tensor& q_in) {
  const at::Tensor weight = dense(w_in), query = dense(q_in);
  const Dims d = dims(query);
  at::Tensor grad = at::empty({d.B, d.channels, d.H, d.W}, query.options());
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "attnbench_ccnet::key_grad", [&] {
    key_grad_kernel<scalar_t><<<ceil_blocks(grad.numel()), kThreads, 0, stream>>>(
        weight.const_data_ptr<scalar_t>(), query.const_data_ptr<scalar_t>(), grad.mutable_data_ptr<scalar_t>(), d.B,
        d.channels, d.H, d.W);
    ATTNBENCH_LAUNCH_CHECK();
  });
  return grad;
}

at::Tensor ca_weight_cuda(const at::Tensor& q, const at::Tensor& k) {
  check_qk("ca_weight", q, k);
  check_cuda_tensor("ca_weight", q, "q");
  const DeviceGuard guard(q.device());
  return weight_cuda(q, k);
}

std::tuple<at::Tensor, at::Tensor> ca_weight_backward_cuda(const at::Tensor& grad_energy, const at::Tensor& q,
                                                           const at::Tensor& k) {
  const char* op = "ca_weight_backward";
  check_qk(op, q, k);
  check_cuda_tensor(op, q, "q");
  check_4d(op, grad_energy, "grad_energy", "[B, H+W-1, H, W]");
  check_like(op, grad_energy, "grad_energy", q, "q");
  check_shape(op, grad_energy, "grad_energy", {q.size(0), q.size(2) + q.size(3) - 1, q.size(2), q.size(3)},
              "[B, H+W-1, H, W]", q, "q");
  const DeviceGuard guard(q.device());
  return {map_cuda(grad_energy, k), key_grad_cuda(grad_energy, q)};
}

at::Tensor ca_map_cuda(const at::Tensor& attn, const at::Tensor& v) {
  check_attn_v("ca_map", attn, "attn", v);
  check_cuda_tensor("ca_map", v, "v");
  const DeviceGuard guard(v.device());
  return map_cuda(attn, v);
}

std::tuple<at::Tensor, at::Tensor> ca_map_backward_cuda(const at::Tensor& grad_out, const at::Tensor& attn,
                                                        const at::Tensor& v) {
  const char* op = "ca_map_backward";
  check_attn_v(op, attn, "attn", v);
  check_cuda_tensor(op, v, "v");
  check_4d(op, grad_out, "grad_out", "[B, C, H, W]");
  check_like(op, grad_out, "grad_out", v, "v");
  check_shape(op, grad_out, "grad_out", v.sizes(), "[B, C, H, W]", v, "v");
  const DeviceGuard guard(v.device());
  return {weight_cuda(grad_out, v), key_grad_cuda(attn, grad_out)};
}

void check_energy_cuda(const char* op, const at::Tensor& x, const char* name) {
  check_4d(op, x, name, "[B, H+W-1, H, W]");
  TORCH_CHECK(x.size(1) == x.size(2) + x.size(3) - 1, op_name(op), ": ", name,
              " must be [B, H+W-1, H, W], got ", x.sizes());
  check_cuda_tensor(op, x, name);
}

at::Tensor ca_softmax_cuda(const at::Tensor& energy_in) {
  check_energy_cuda("ca_softmax", energy_in, "energy");
  const DeviceGuard guard(energy_in.device());
  const at::Tensor energy = dense(energy_in);
  at::Tensor attn = at::empty_like(energy, at::MemoryFormat::Contiguous);
  const int64_t B = energy.size(0);
  const int H = static_cast<int>(energy.size(2)), W = static_cast<int>(energy.size(3));
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, energy.scalar_type(), "attnbench_ccnet::ca_softmax", [&] {
    softmax_kernel<scalar_t><<<ceil_blocks(B * H * W), kThreads, 0, stream>>>(
        energy.const_data_ptr<scalar_t>(), attn.mutable_data_ptr<scalar_t>(), B, H, W);
    ATTNBENCH_LAUNCH_CHECK();
  });
  return attn;
}

at::Tensor ca_softmax_backward_cuda(const at::Tensor& grad_attn, const at::Tensor& attn_in) {
  const char* op = "ca_softmax_backward";
  check_energy_cuda(op, attn_in, "attn");
  check_4d(op, grad_attn, "grad_attn", "[B, H+W-1, H, W]");
  check_like(op, grad_attn, "grad_attn", attn_in, "attn");
  check_shape(op, grad_attn, "grad_attn", attn_in.sizes(), "[B, H+W-1, H, W]", attn_in, "attn");
  const DeviceGuard guard(attn_in.device());
  const at::Tensor attn = dense(attn_in), grad = dense(grad_attn);
  at::Tensor grad_energy = at::empty_like(attn, at::MemoryFormat::Contiguous);
  const int64_t B = attn.size(0);
  const int H = static_cast<int>(attn.size(2)), W = static_cast<int>(attn.size(3));
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, attn.scalar_type(), "attnbench_ccnet::ca_softmax_bwd", [&] {
    softmax_backward_kernel<scalar_t><<<ceil_blocks(B * H * W), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), attn.const_data_ptr<scalar_t>(), grad_energy.mutable_data_ptr<scalar_t>(), B,
        H, W);
    ATTNBENCH_LAUNCH_CHECK();
  });
  return grad_energy;
}

at::Tensor cca_fused_cuda(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in) {
  const char* op = "cca_fused";
  check_qk(op, q_in, k_in);
  check_cuda_tensor(op, q_in, "q");
  check_4d(op, v_in, "v", "[B, C, H, W]");
  check_like(op, v_in, "v", q_in, "q");
  TORCH_CHECK(v_in.size(0) == q_in.size(0) && v_in.size(2) == q_in.size(2) && v_in.size(3) == q_in.size(3),
              op_name(op), ": v must be [B, C, H, W] with B, H, W of q ", q_in.sizes(), ", got ", v_in.sizes());
  const DeviceGuard guard(q_in.device());
  const at::Tensor q = dense(q_in), k = dense(k_in), v = dense(v_in);
  const Dims dq = dims(q), dv = dims(v);
  at::Tensor out = at::empty({dv.B, dv.channels, dv.H, dv.W}, v.options());
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "attnbench_ccnet::cca_fused", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t per_pixel = static_cast<int64_t>(dq.L) * static_cast<int64_t>(sizeof(acc_t));
    TORCH_CHECK(per_pixel <= kSharedBytes, op_name(op), ": H+W-1 = ", dq.L,
                " energies per pixel exceed the shared-memory tile (", kSharedBytes,
                " bytes); use ca_weight + softmax + ca_map");
    int tile = 32;
    while (tile > 1 && tile * per_pixel > kSharedBytes) tile /= 2;
    const int64_t blocks = dq.B * dq.H * ((dq.W + tile - 1) / tile);
    fused_kernel<scalar_t>
        <<<static_cast<unsigned>(std::min<int64_t>(blocks, kMaxBlocks)), kThreads, tile * per_pixel, stream>>>(
            q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
            out.mutable_data_ptr<scalar_t>(), dq.B, dq.channels, dv.channels, dq.H, dq.W, tile);
    ATTNBENCH_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(attnbench_ccnet, CUDA, m) {
  m.impl("ca_weight", &ca_weight_cuda);
  m.impl("ca_weight_backward", &ca_weight_backward_cuda);
  m.impl("ca_map", &ca_map_cuda);
  m.impl("ca_map_backward", &ca_map_backward_cuda);
  m.impl("cca_fused", &cca_fused_cuda);
  m.impl("ca_softmax", &ca_softmax_cuda);
  m.impl("ca_softmax_backward", &ca_softmax_backward_cuda);
}

}  // namespace attnbench_ccnet
