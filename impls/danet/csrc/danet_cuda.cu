// DANet PAM and CAM: CUDA kernels (one thread per row for the row math of
// danet.h / softmax_math.h; matmuls through ATen = cuBLAS). float, double, half
// and bfloat16 inputs; half types compute in float and round once at the end.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "danet_ops.h"
#include "softmax_tiles_cuda.cuh"

namespace attnbench_danet {

constexpr int kThreads = 128;

inline unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>((n + kThreads - 1) / kThreads); }

template <typename scalar_t>
__global__ void cam_softmax_kernel(scalar_t* e, int64_t rows, int64_t C, bool paper) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  cam_row_softmax<scalar_t>(e + r * C, C, paper);
}

template <typename scalar_t>
__global__ void cam_backward_kernel(const scalar_t* a, scalar_t* da, int64_t rows, int64_t C, bool paper) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  cam_row_backward<scalar_t>(a + r * C, da + r * C, C, paper);
}

struct CudaCamRows {
  static void softmax(const at::Tensor& e, bool paper) {
    const int64_t rows = e.size(0) * e.size(1), C = e.size(2);
    if (rows == 0) return;
    const cudaStream_t stream = attnbench_tiles::current_stream();
    AT_DISPATCH_FLOATING_TYPES(e.scalar_type(), "cam softmax (cuda)", [&] {
      cam_softmax_kernel<scalar_t><<<blocks_for(rows), kThreads, 0, stream>>>(e.data_ptr<scalar_t>(), rows, C, paper);
    });
    ATTNBENCH_LAUNCH_CHECK();
  }
  static void backward(const at::Tensor& a, const at::Tensor& da, bool paper) {
    const int64_t rows = a.size(0) * a.size(1), C = a.size(2);
    if (rows == 0) return;
    const cudaStream_t stream = attnbench_tiles::current_stream();
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "cam backward (cuda)", [&] {
      cam_backward_kernel<scalar_t><<<blocks_for(rows), kThreads, 0, stream>>>(a.data_ptr<scalar_t>(),
                                                                              da.data_ptr<scalar_t>(), rows, C, paper);
    });
    ATTNBENCH_LAUNCH_CHECK();
  }
};

inline void check_cuda_dtype(const char* op, const at::Tensor& t) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, op,
              " (cuda): inputs must be float32, float64, float16 or bfloat16, got ", s);
}

std::tuple<at::Tensor, at::Tensor> pam_forward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                    int64_t key_block) {
  check_cuda_dtype("pam_forward", q);
  const attnbench_tiles::DeviceGuard guard(q.device());
  return pam_forward<attnbench_tiles::CudaRows>(q, k, v, key_block);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pam_backward_cuda(const at::Tensor& grad_out, const at::Tensor& q,
                                                                 const at::Tensor& k, const at::Tensor& v,
                                                                 const at::Tensor& out, const at::Tensor& lse,
                                                                 int64_t key_block) {
  check_cuda_dtype("pam_backward", q);
  const attnbench_tiles::DeviceGuard guard(q.device());
  return pam_backward<attnbench_tiles::CudaRows>(grad_out, q, k, v, out, lse, key_block);
}

std::tuple<at::Tensor, at::Tensor> cam_forward_cuda(const at::Tensor& x, c10::string_view sign) {
  check_cuda_dtype("cam_forward", x);
  const attnbench_tiles::DeviceGuard guard(x.device());
  return cam_forward<CudaCamRows>(x, std::string(sign));
}

at::Tensor cam_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& attn,
                             c10::string_view sign) {
  check_cuda_dtype("cam_backward", x);
  const attnbench_tiles::DeviceGuard guard(x.device());
  return cam_backward<CudaCamRows>(grad_out, x, attn, std::string(sign));
}

}  // namespace attnbench_danet

TORCH_LIBRARY_IMPL(attnbench_danet, CUDA, m) {
  m.impl("pam_forward", &attnbench_danet::pam_forward_cuda);
  m.impl("pam_backward", &attnbench_danet::pam_backward_cuda);
  m.impl("cam_forward", &attnbench_danet::cam_forward_cuda);
  m.impl("cam_backward", &attnbench_danet::cam_backward_cuda);
}
