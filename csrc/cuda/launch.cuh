// The one way the CUDA kernels are launched. Under nvcc it is <<< >>> on the given stream; in
// the test-only CPU emulation (csrc/testing/cuda_emulation.h) the emulator runs the same kernel,
// so one kernel source serves both.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

namespace scangraph {

template <auto Kernel, typename... Args>
inline void launch_kernel(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, const Args&... args) {
#ifdef SCANGRAPH_CUDA_EMULATION
  (void)stream;
  cuda_emu::launch(__PRETTY_FUNCTION__, Kernel, grid, block, shared_bytes, args...);
#else
  Kernel<<<grid, block, shared_bytes, stream>>>(args...);
#endif
}

}  // namespace scangraph
