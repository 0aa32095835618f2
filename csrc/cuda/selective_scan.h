// Entry points of the selective-scan CUDA kernels, one set per element type
// (selective_scan_<dtype>.cu). Torch-free, so the glue (selective_scan_launch.cpp) and C++ users
// can call them alike.
#pragma once
#include <cuda_runtime_api.h>

#include "scangraph/selective_scan_params.h"

namespace scangraph {
#define SCANGRAPH_DECLARE_SCAN(NAME)                                                                  \
  void selective_scan_cuda_##NAME(const SelectiveScanParams& p, cudaStream_t stream);                 \
  void selective_scan_backward_cuda_##NAME(const SelectiveScanBackwardParams& p, cudaStream_t stream); \
  void selective_state_update_cuda_##NAME(const SelectiveStateUpdateParams& p, cudaStream_t stream);
SCANGRAPH_DECLARE_SCAN(fp64)
SCANGRAPH_DECLARE_SCAN(fp32)
SCANGRAPH_DECLARE_SCAN(fp16)
SCANGRAPH_DECLARE_SCAN(bf16)
#undef SCANGRAPH_DECLARE_SCAN
}  // namespace scangraph
