// HOST_DEVICE marks math written once for the CPU kernels and the CUDA kernels:
// __host__ __device__ under nvcc, nothing for the host compiler.
#pragma once

#if defined(__CUDACC__)
#define HOST_DEVICE __host__ __device__
#else
#define HOST_DEVICE
#endif
