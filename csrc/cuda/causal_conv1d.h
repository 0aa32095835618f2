// Entry points of the causal convolution CUDA kernels, typed by element type T (double, float,
// __half, __nv_bfloat16): defined in causal_conv1d_kernel.cuh, explicitly instantiated once per
// causal_conv1d_<dtype>.cu. Torch-free, so the glue (causal_conv1d_launch.cpp) and C++ users can
// call them alike.
#pragma once
#include <cuda_runtime_api.h>

#include "scangraph/causal_conv1d_params.h"

namespace scangraph {
template <typename T>
void causal_conv1d_cuda(const CausalConv1dParams& p, cudaStream_t stream);
template <typename T>
void causal_conv1d_backward_cuda(const CausalConv1dBackwardParams& q, cudaStream_t stream);
template <typename T>
void causal_conv1d_update_cuda(const CausalConv1dUpdateParams& p, cudaStream_t stream);
}  // namespace scangraph
