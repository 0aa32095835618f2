// What the CUDA glue (csrc/cuda/*_launch.cpp) needs of the device, in one place: a device guard,
// the current stream, the device's size, the launch check, and where its kernels register. Three
// builds of the same glue:
// - the regular API (ATen / c10's CUDA context);
// - the LibTorch stable ABI (SCANGRAPH_STABLE_ABI, glue/torch_api.h): torch's stable device guard
//   and the C shim's current CUDA stream, the CUDA runtime for the rest;
// - the test-only CPU emulation of the CUDA kernels (SCANGRAPH_CUDA_EMULATION,
//   csrc/testing/cuda_emulation.h), on either API: no device, CPU tensors, the kernels registered
//   as CPU kernels of `<op>_cuda_emulated` twins (their schemas are defined by
//   csrc/testing/cuda_emulation.cpp), and every output pre-filled with NaN (output_tensor.h) so
//   that an element no thread writes fails the tests.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "glue/torch_api.h"

#ifdef SCANGRAPH_CUDA_EMULATION
#include <cstdlib>
#elif defined(SCANGRAPH_STABLE_ABI)
#include <torch/csrc/stable/accelerator.h>

#include <stdexcept>
// Declared by torch's C shim only when it is compiled with USE_CUDA; exported by libtorch_cuda
// since torch 2.3, and part of the shim's stable C ABI.
extern "C" AOTITorchError aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream);
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace scangraph {

#ifdef SCANGRAPH_CUDA_EMULATION
struct CudaDeviceGuard {
  explicit CudaDeviceGuard(const Tensor&) {}
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
#elif defined(SCANGRAPH_STABLE_ABI)
// The guard sets the tensor's device current: the stream and device queries below ask for it.
struct CudaDeviceGuard {
  explicit CudaDeviceGuard(const Tensor& t) : guard(device_index(t)) {}
  torch::stable::accelerator::DeviceGuard guard;
};
inline cudaStream_t current_cuda_stream() {
  void* stream = nullptr;
  const int32_t device = torch::stable::accelerator::getCurrentDeviceIndex();
  SCANGRAPH_CHECK(aoti_torch_get_current_cuda_stream(device, &stream) == AOTI_TORCH_SUCCESS,
                  "scangraph: could not read the current CUDA stream of device ", device);
  return static_cast<cudaStream_t>(stream);
}
inline void check_cuda_status(cudaError_t status) {
  SCANGRAPH_CHECK(status == cudaSuccess, "CUDA error: ", cudaGetErrorString(status));
}
// Warps that fill the device, for the launch rules: SMs x 64 (the most warps an SM holds).
inline int64_t cuda_target_warps() {
  int device = 0, sms = 0;
  check_cuda_status(cudaGetDevice(&device));
  check_cuda_status(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return int64_t(sms) * 64;
}
inline void check_cuda_launch() { check_cuda_status(cudaGetLastError()); }
#else
struct CudaDeviceGuard {
  explicit CudaDeviceGuard(const Tensor& t) : guard(t.device()) {}
  c10::cuda::CUDAGuard guard;
};
inline cudaStream_t current_cuda_stream() { return at::cuda::getCurrentCUDAStream(); }
// Warps that fill the device, for the launch rules: SMs x 64 (the most warps an SM holds).
inline int64_t cuda_target_warps() { return int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 64; }
inline void check_cuda_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }
#endif

}  // namespace scangraph

// A file's CUDA kernels, registered: SCANGRAPH_CUDA_KERNELS(m) { SCANGRAPH_CUDA_IMPL(m, "op", &op_cuda); }.
#ifdef SCANGRAPH_CUDA_EMULATION
#define SCANGRAPH_CUDA_KERNELS(m) SCANGRAPH_CPU_IMPLS(m)
#define SCANGRAPH_CUDA_IMPL(m, name, kernel) SCANGRAPH_IMPL(m, name "_cuda_emulated", kernel)
#else
#ifdef SCANGRAPH_STABLE_ABI
#define SCANGRAPH_CUDA_KERNELS(m) STABLE_TORCH_LIBRARY_IMPL(scangraph, CUDA, m)
#else
#define SCANGRAPH_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(scangraph, CUDA, m)
#endif
#define SCANGRAPH_CUDA_IMPL(m, name, kernel) SCANGRAPH_IMPL(m, name, kernel)
#endif
