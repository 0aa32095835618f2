// What the CUDA glue (csrc/cuda/*_launch.cpp) needs of the device, in one place: a device guard,
// the current stream, the launch check, and where its kernels register. The test-only CPU
// emulation of the CUDA kernels (csrc/testing/cuda_emulation.h) compiles the same glue with
// SCANGRAPH_CUDA_EMULATION: no device, CPU tensors, the kernels registered as CPU kernels of
// `<op>_cuda_emulated` twins with the same schemas, and every output pre-filled with NaN
// (output_tensor.h) so that an element no thread writes fails the tests.
#pragma once
#include <ATen/ATen.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#ifdef SCANGRAPH_CUDA_EMULATION
#include <cstdlib>

#include "schemas.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace scangraph {

#ifdef SCANGRAPH_CUDA_EMULATION
struct CudaDeviceGuard {
  explicit CudaDeviceGuard(const at::Device&) {}
};
inline cudaStream_t current_cuda_stream() { return nullptr; }
// Warps that fill the device, for the launch rules (SMs x 64): an H100 / H200's 132 SMs, so that
// the emulation runs the launch shapes of the GPU the project targets. Tests may set another
// (SCANGRAPH_EMULATION_TARGET_WARPS) to reach the rules' other branches at small sizes.
inline int64_t cuda_target_warps() {
  const char* given = std::getenv("SCANGRAPH_EMULATION_TARGET_WARPS");
  return given != nullptr ? std::atoll(given) : int64_t(132) * 64;
}
// The emulator reports a breach by throwing, at the launch itself.
inline void check_cuda_launch() {}
#define SCANGRAPH_CUDA_KERNELS(m) TORCH_LIBRARY_FRAGMENT(scangraph, m)
#define SCANGRAPH_CUDA_IMPL(m, name, fn)                                \
  (m).def(torch::schema(::scangraph::schema_with_suffix(name, "_cuda_emulated").c_str())); \
  (m).impl(name "_cuda_emulated", torch::dispatch(c10::DispatchKey::CPU, fn))
#else
using CudaDeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_cuda_stream() { return at::cuda::getCurrentCUDAStream(); }
// Warps that fill the device, for the launch rules: SMs x 64 (the most warps an SM holds).
inline int64_t cuda_target_warps() { return int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 64; }
inline void check_cuda_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }
#define SCANGRAPH_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(scangraph, CUDA, m)
#define SCANGRAPH_CUDA_IMPL(m, name, fn) (m).impl(name, fn)
#endif

}  // namespace scangraph
