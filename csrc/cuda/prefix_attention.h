// Entry points of the prefix-attention CUDA kernels, typed by element type T (double, float,
// __half, __nv_bfloat16): defined in prefix_attention_kernel.cuh, explicitly instantiated once per
// prefix_attention_<dtype>.cu. Torch-free, so the glue and C++ users can call them alike.
// d and dv are at most kPrefixAttentionMaxDim (one warp holds a row in registers).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "scangraph/prefix_attention_params.h"

namespace scangraph {
constexpr int64_t kPrefixAttentionMaxDim = 256;
template <typename T>
void prefix_attention_fwd_cuda(const PrefixAttentionParams& p, cudaStream_t stream);
template <typename T>
void prefix_attention_bwd_cuda(const PrefixAttentionBackwardParams& p, cudaStream_t stream);
}  // namespace scangraph
