// Entry points of the sparse CUDA kernels, one pair per element type (sparse_<dtype>.cu).
// Torch-free, so the glue (sparse_launch.cpp) and C++ users can call them alike.
#pragma once
#include <cuda_runtime_api.h>

#include "scangraph/sparse_params.h"

namespace scangraph {
#define SCANGRAPH_DECLARE_SPARSE(NAME)                                 \
  void spmm_cuda_##NAME(const SpmmParams& p, cudaStream_t stream);     \
  void spmm_arg_backward_cuda_##NAME(const SpmmArgBackwardParams& p, cudaStream_t stream); \
  void gat_cuda_##NAME(const GatParams& p, cudaStream_t stream);                         \
  void gat_backward_cuda_##NAME(const GatBackwardParams& p, cudaStream_t stream);        \
  void sddmm_cuda_##NAME(const SddmmParams& p, cudaStream_t stream);
SCANGRAPH_DECLARE_SPARSE(fp64)
SCANGRAPH_DECLARE_SPARSE(fp32)
SCANGRAPH_DECLARE_SPARSE(fp16)
SCANGRAPH_DECLARE_SPARSE(bf16)
#undef SCANGRAPH_DECLARE_SPARSE
void common_neighbors_cuda(const CommonNeighborParams& p, cudaStream_t stream);  // sparse_fp32.cu
}  // namespace scangraph
