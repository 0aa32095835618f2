// Entry points of the selective-scan CUDA kernels, typed by element type T (double, float, __half,
// __nv_bfloat16): defined in selective_scan_kernel.cuh, explicitly instantiated once per
// selective_scan_<dtype>.cu. Torch-free, so the glue (selective_scan_launch.cpp) and C++ users can
// call them alike.
#pragma once
#include <cuda_runtime_api.h>

#include "scangraph/selective_scan_params.h"

namespace scangraph {
template <typename T>
void selective_scan_cuda(const SelectiveScanParams& p, cudaStream_t stream);
template <typename T>
void selective_scan_backward_cuda(const SelectiveScanBackwardParams& p, cudaStream_t stream);
template <typename T>
void selective_state_update_cuda(const SelectiveStateUpdateParams& p, cudaStream_t stream);
}  // namespace scangraph
