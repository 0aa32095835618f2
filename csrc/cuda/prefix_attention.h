// Entry points of the prefix-attention CUDA kernels, one pair per element type
// (prefix_attention_<dtype>.cu). Torch-free, so the glue and C++ users can call them alike.
// d and dv are at most kPrefixAttentionMaxDim (one warp holds a row in registers).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "scangraph/prefix_attention_params.h"

namespace scangraph {
constexpr int64_t kPrefixAttentionMaxDim = 256;
#define SCANGRAPH_DECLARE_PREFIX_ATTENTION(NAME)                                                    \
  void prefix_attention_fwd_cuda_##NAME(const PrefixAttentionParams& p, cudaStream_t stream);       \
  void prefix_attention_bwd_cuda_##NAME(const PrefixAttentionBackwardParams& p, cudaStream_t stream);
SCANGRAPH_DECLARE_PREFIX_ATTENTION(fp64)
SCANGRAPH_DECLARE_PREFIX_ATTENTION(fp32)
SCANGRAPH_DECLARE_PREFIX_ATTENTION(fp16)
SCANGRAPH_DECLARE_PREFIX_ATTENTION(bf16)
#undef SCANGRAPH_DECLARE_PREFIX_ATTENTION
}  // namespace scangraph
