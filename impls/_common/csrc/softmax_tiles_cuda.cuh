// CUDA rows for softmax_tiles.h: one thread per query row, the same
// softmax_math.h functions as the CPU rows. Used by impls/non_local and impls/danet.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "cuda_compat.cuh"

#include "softmax_math.h"

namespace attnbench_tiles {

using attnbench_cuda::current_stream;
using attnbench_cuda::DeviceGuard;

constexpr int kRowThreads = 128;

inline unsigned int row_blocks(int64_t rows) {
  return static_cast<unsigned int>((rows + kRowThreads - 1) / kRowThreads);
}

template <typename scalar_t>
__global__ void online_rows_kernel(scalar_t* s, scalar_t* m, scalar_t* l, scalar_t* alpha, int64_t N, int64_t T) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  alpha[i] = attnbench_math::online_softmax_tile<scalar_t>(s + i * T, T, 1, m[i], l[i]);
}

template <typename scalar_t>
__global__ void backward_rows_kernel(scalar_t* s, scalar_t* dp, const scalar_t* lse, const scalar_t* D, scalar_t scale,
                                     int64_t N, int64_t T) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  attnbench_math::softmax_tile_backward<scalar_t>(s + i * T, dp + i * T, T, 1, lse[i], D[i], scale);
}

struct CudaRows {
  static void online(const at::Tensor& s, const at::Tensor& m, const at::Tensor& l, const at::Tensor& alpha) {
    const int64_t N = s.size(0), T = s.size(1);
    if (N == 0) return;
    const cudaStream_t stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "softmax_tiles online (cuda)", [&] {
      online_rows_kernel<scalar_t><<<row_blocks(N), kRowThreads, 0, stream>>>(
          s.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(), N, T);
    });
    ATTNBENCH_LAUNCH_CHECK();
  }
  static void backward(const at::Tensor& s, const at::Tensor& dp, const at::Tensor& lse, const at::Tensor& D,
                       double scale) {
    const int64_t N = s.size(0), T = s.size(1);
    if (N == 0) return;
    const cudaStream_t stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "softmax_tiles backward (cuda)", [&] {
      backward_rows_kernel<scalar_t><<<row_blocks(N), kRowThreads, 0, stream>>>(
          s.data_ptr<scalar_t>(), dp.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), D.data_ptr<scalar_t>(),
          static_cast<scalar_t>(scale), N, T);
    });
    ATTNBENCH_LAUNCH_CHECK();
  }
};

}  // namespace attnbench_tiles
