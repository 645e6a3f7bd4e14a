// Non-local block: CUDA kernels (one thread per query row for the per-row math of
// non_local.h / softmax_math.h; matmuls through ATen = cuBLAS). float, double,
// half and bfloat16 inputs; half types compute in float and round once at the end.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "non_local_ops.h"
#include "softmax_tiles_cuda.cuh"

namespace attnbench_nl {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>((n + kThreads - 1) / kThreads); }

template <typename scalar_t>
__global__ void concat_forward_kernel(const scalar_t* a, const scalar_t* b, scalar_t* f, scalar_t inv_m, int64_t N,
                                      int64_t T) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * T) return;
  f[idx] = concat_weight<scalar_t>(a[idx / T], b[idx % T], inv_m);
}

template <typename scalar_t>
__global__ void concat_backward_kernel(const scalar_t* a, const scalar_t* b, scalar_t* df, scalar_t inv_m, int64_t N,
                                       int64_t T) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * T) return;
  df[idx] = concat_weight_grad<scalar_t>(a[idx / T], b[idx % T], df[idx], inv_m);
}

struct CudaConcatRows {
  static at::Tensor forward(const at::Tensor& a, const at::Tensor& b, double inv_m) {
    const int64_t N = a.size(0), T = b.size(0);
    auto f = at::empty({N, T}, a.options());
    if (N * T == 0) return f;
    const auto ac = a.contiguous();
    const cudaStream_t stream = attnbench_tiles::current_stream();
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "nl concat forward (cuda)", [&] {
      concat_forward_kernel<scalar_t><<<blocks_for(N * T), kThreads, 0, stream>>>(
          ac.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), f.data_ptr<scalar_t>(), static_cast<scalar_t>(inv_m), N, T);
    });
    ATTNBENCH_LAUNCH_CHECK();
    return f;
  }
  static void backward(const at::Tensor& a, const at::Tensor& b, const at::Tensor& df, double inv_m) {
    const int64_t N = a.size(0), T = b.size(0);
    if (N * T == 0) return;
    const auto ac = a.contiguous();
    const cudaStream_t stream = attnbench_tiles::current_stream();
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "nl concat backward (cuda)", [&] {
      concat_backward_kernel<scalar_t><<<blocks_for(N * T), kThreads, 0, stream>>>(
          ac.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), df.data_ptr<scalar_t>(), static_cast<scalar_t>(inv_m), N,
          T);
    });
    ATTNBENCH_LAUNCH_CHECK();
  }
};

inline void check_cuda_dtype(const char* op, const at::Tensor& t) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, op,
              " (cuda): theta must be float32, float64, float16 or bfloat16, got ", s);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nl_forward_cuda(const at::Tensor& theta, const at::Tensor& phi,
                                                               const at::Tensor& g, const c10::optional<at::Tensor>& w,
                                                               c10::string_view mode, double scale, int64_t key_block,
                                                               bool save_scores) {
  check_cuda_dtype("nl_forward", theta);
  const attnbench_tiles::DeviceGuard guard(theta.device());
  return nl_forward<attnbench_tiles::CudaRows, CudaConcatRows>(theta, phi, g, w, std::string(mode), scale,
                                                               key_block, save_scores);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nl_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& g,
    const c10::optional<at::Tensor>& w, const at::Tensor& out, const at::Tensor& stats, c10::string_view mode,
    double scale, int64_t key_block, const c10::optional<at::Tensor>& scores) {
  check_cuda_dtype("nl_backward", theta);
  const attnbench_tiles::DeviceGuard guard(theta.device());
  return nl_backward<attnbench_tiles::CudaRows, CudaConcatRows>(grad_out, theta, phi, g, w, out, stats,
                                                                std::string(mode), scale, key_block, scores);
}

}  // namespace attnbench_nl

TORCH_LIBRARY_IMPL(attnbench_non_local, CUDA, m) {
  m.impl("nl_forward", &attnbench_nl::nl_forward_cuda);
  m.impl("nl_backward", &attnbench_nl::nl_backward_cuda);
}
