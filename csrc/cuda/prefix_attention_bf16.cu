// Instantiates the prefix-attention kernels for __nv_bfloat16 (one file per dtype keeps nvcc runs parallel).
#include "prefix_attention.h"
#include "prefix_attention_kernel.cuh"
static_assert(scangraph::cuda::prefix::kMaxDim == scangraph::kPrefixAttentionMaxDim, "one limit on d and dv");
SCANGRAPH_INSTANTIATE_PREFIX_ATTENTION(__nv_bfloat16)
