// Entry points of the sparse CUDA kernels, typed by element type T (double, float, __half,
// __nv_bfloat16): defined in sparse_kernel.cuh, explicitly instantiated once per sparse_<dtype>.cu.
// Torch-free, so the glue (sparse_launch.cpp) and C++ users can call them alike.
#pragma once
#include <cuda_runtime_api.h>

#include "scangraph/sparse_params.h"

namespace scangraph {
template <typename T>
void spmm_cuda(const SpmmParams& p, cudaStream_t stream);
template <typename T>
void spmm_arg_backward_cuda(const SpmmArgBackwardParams& p, cudaStream_t stream);
template <typename T>
void gat_cuda(const GatParams& p, cudaStream_t stream);
template <typename T>
void gat_backward_cuda(const GatBackwardParams& p, cudaStream_t stream);
template <typename T>
void sddmm_cuda(const SddmmParams& p, cudaStream_t stream);
// Common neighbours and the split plan's passes move indices only: one instantiation each, in
// sparse_fp32.cu.
void common_neighbors_cuda(const CommonNeighborParams& p, cudaStream_t stream);
void split_plan_counts_cuda(const SplitPlanParams& p, cudaStream_t stream);
void split_plan_rows_cuda(const SplitPlanParams& p, cudaStream_t stream);
}  // namespace scangraph
