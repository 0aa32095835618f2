// Entry points of the low-precision CUDA kernels (lowp_int8.cu). Torch-free, so the glue
// (lowp_launch.cpp) and C++ users call them alike; element types are named by an enum.
#pragma once
#include <cuda_runtime_api.h>

#include "scangraph/lowp_params.h"

namespace scangraph {

enum class LowpType : int8_t { Float, Double, Half, BFloat16, Int32 };

// Two launches: per-channel absmax -> scale, then the quantized (packed) values.
void quantize_cuda(const QuantizeParams& p, LowpType x_type, cudaStream_t stream);
// x_type: Float | Double | Half | BFloat16; out_type: Float | Half | BFloat16 | Int32 (raw acc).
void qlinear_cuda(const QLinearParams& p, LowpType x_type, LowpType out_type, cudaStream_t stream);
void qspmm_cuda(const QSpmmParams& p, cudaStream_t stream);

}  // namespace scangraph
