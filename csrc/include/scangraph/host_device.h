// SCANGRAPH_HOST_DEVICE: a function compiled for the host and, under nvcc, for the device too,
// so the CPU kernels, the CUDA kernels and the CUDA emulation share one definition.
#pragma once

#if defined(__CUDACC__)
#define SCANGRAPH_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SCANGRAPH_HOST_DEVICE inline
#endif
