// Torch glue of the low-precision CUDA kernels: argument checks (shared with the CPU glue),
// device guard, current stream, dtype mapping, launch check. Index values of qspmm's graph are
// validated by CSRGraph on construction (a check here would synchronise the device).
#include "glue/cuda_context.h"

#include "glue/lowp_args.h"
#include "lowp.h"

namespace scangraph {
namespace {

LowpType lowp_type(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return LowpType::Float;
    case ScalarType::Double: return LowpType::Double;
    case ScalarType::Half: return LowpType::Half;
    case ScalarType::BFloat16: return LowpType::BFloat16;
    case ScalarType::Int: return LowpType::Int32;
    default: SCANGRAPH_CHECK(false, "scangraph low-precision ops: unsupported dtype ", scalar_type_name(t));
  }
}

std::tuple<Tensor, Tensor> quantize_cuda_op(const Tensor& x, int64_t bits, std::optional<int64_t> axis) {
  const CudaDeviceGuard guard(x);
  KernelCall<QuantizeParams> call = prepare_quantize(x, bits, axis);
  SCANGRAPH_CHECK(call.params.channels < (int64_t(1) << 31), "quantize: at most 2^31 - 1 channels on CUDA");
  quantize_cuda(call.params, lowp_type(x.scalar_type()), current_cuda_stream());
  check_cuda_launch();
  return {call.out, call.out2};
}

Tensor qlinear_cuda_op(const Tensor& x, const Tensor& w, const Tensor& w_scale, int64_t w_bits,
                           int64_t in_features, const std::optional<Tensor>& bias, StringArg activation,
                           std::optional<ScalarType> out_dtype) {
  const CudaDeviceGuard guard(x);
  KernelCall<QLinearParams> call = prepare_qlinear(x, w, w_scale, w_bits, in_features, bias, activation, out_dtype);
  // Output tiles of 64: grid.y (N) is limited to 65535 blocks.
  SCANGRAPH_CHECK(call.params.N <= int64_t(65535) * 64, "qlinear: N = ", call.params.N,
              " exceeds the CUDA kernel's limit of ", int64_t(65535) * 64);
  qlinear_cuda(call.params, lowp_type(x.scalar_type()), lowp_type(call.out.scalar_type()),
               current_cuda_stream());
  check_cuda_launch();
  return call.out;
}

Tensor qspmm_cuda_op(const Tensor& rowptr, const Tensor& col, const std::optional<Tensor>& weight,
                         const Tensor& x, const Tensor& x_scale, StringArg reduce) {
  const CudaDeviceGuard guard(x);
  KernelCall<QSpmmParams> call = prepare_qspmm(rowptr, col, weight, x, x_scale, reduce);
  qspmm_cuda(call.params, current_cuda_stream());
  check_cuda_launch();
  return call.out;
}

}  // namespace

SCANGRAPH_CUDA_KERNELS(m) {
  SCANGRAPH_CUDA_IMPL(m, "quantize", &quantize_cuda_op);
  SCANGRAPH_CUDA_IMPL(m, "qlinear", &qlinear_cuda_op);
  SCANGRAPH_CUDA_IMPL(m, "qspmm", &qspmm_cuda_op);
}

}  // namespace scangraph
