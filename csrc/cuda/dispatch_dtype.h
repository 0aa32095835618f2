// Torch glue shared by the CUDA families: calls the instantiation of a kernel launcher for the
// tensors' dtype (one per .cu file) on the current stream, then reports a failed launch.
#pragma once
#include <ATen/ATen.h>

#include "glue/cuda_context.h"

namespace scangraph {

template <typename Params>
using CudaLauncher = void (*)(const Params&, cudaStream_t);

template <typename Params>
void dispatch_dtype(at::ScalarType dtype, const Params& p, const char* op, CudaLauncher<Params> fp64,
                    CudaLauncher<Params> fp32, CudaLauncher<Params> fp16, CudaLauncher<Params> bf16) {
  cudaStream_t stream = current_cuda_stream();
  switch (dtype) {
    case at::kDouble: fp64(p, stream); break;
    case at::kFloat: fp32(p, stream); break;
    case at::kHalf: fp16(p, stream); break;
    case at::kBFloat16: bf16(p, stream); break;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", dtype);
  }
  // Launchers skip empty grids; this reports a failed launch of the ones that ran.
  check_cuda_launch();
}

}  // namespace scangraph
