// What every attnbench .cu needs from torch's CUDA side, in one place: the
// current stream, a device guard and a launch check.
//
// They come from <c10/cuda/CUDAStream.h> and <c10/cuda/CUDAGuard.h> (what
// at::cuda::getCurrentCUDAStream forwards to) rather than
// <ATen/cuda/CUDAContext.h>, which needs cuSPARSE/cuBLAS headers that a
// compile-only toolkit (the nvcc -c check of CPU CI, `attnbench build
// --check-cuda`) does not have. The CPU torch wheel also lacks the generated
// <c10/cuda/impl/cuda_cmake_macros.h>; it only carries Windows DLL export
// settings, so it is skipped where absent. Both builds compile the same code.
#pragma once

#if defined(__has_include)
#if !__has_include(<c10/cuda/impl/cuda_cmake_macros.h>)
#define C10_CUDA_NO_CMAKE_CONFIGURE_FILE
#endif
#endif
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace attnbench_cuda {

// The stream torch is recording work on for the current device.
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

// Makes a tensor's device current for the kernels launched in its scope.
using DeviceGuard = c10::cuda::CUDAGuard;

}  // namespace attnbench_cuda

// After every launch: a bad configuration is reported at the launch, not at the next sync.
#define ATTNBENCH_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
