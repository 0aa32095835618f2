// Torch glue of the low-precision CUDA kernels: argument checks (shared with the CPU glue),
// device guard, current stream, dtype mapping, launch check. Index values of qspmm's graph are
// validated by CSRGraph on construction (a check here would synchronise the device).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "glue/cuda_context.h"

#include "glue/lowp_args.h"
#include "lowp.h"

namespace scangraph {
namespace {

LowpType lowp_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return LowpType::Float;
    case at::kDouble: return LowpType::Double;
    case at::kHalf: return LowpType::Half;
    case at::kBFloat16: return LowpType::BFloat16;
    case at::kInt: return LowpType::Int32;
    default: TORCH_CHECK(false, "scangraph low-precision ops: unsupported dtype ", t);
  }
}

std::tuple<at::Tensor, at::Tensor> quantize_cuda_op(const at::Tensor& x, int64_t bits, std::optional<int64_t> axis) {
  const CudaDeviceGuard guard(x.device());
  KernelCall<QuantizeParams> call = prepare_quantize(x, bits, axis);
  TORCH_CHECK(call.params.channels < (int64_t(1) << 31), "quantize: at most 2^31 - 1 channels on CUDA");
  quantize_cuda(call.params, lowp_type(x.scalar_type()), current_cuda_stream());
  check_cuda_launch();
  return {call.out, call.out2};
}

at::Tensor qlinear_cuda_op(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale, int64_t w_bits,
                           int64_t in_features, const std::optional<at::Tensor>& bias, c10::string_view activation,
                           std::optional<at::ScalarType> out_dtype) {
  const CudaDeviceGuard guard(x.device());
  KernelCall<QLinearParams> call = prepare_qlinear(x, w, w_scale, w_bits, in_features, bias, activation, out_dtype);
  // Output tiles of 64: grid.y (N) is limited to 65535 blocks.
  TORCH_CHECK(call.params.N <= int64_t(65535) * 64, "qlinear: N = ", call.params.N,
              " exceeds the CUDA kernel's limit of ", int64_t(65535) * 64);
  qlinear_cuda(call.params, lowp_type(x.scalar_type()), lowp_type(call.out.scalar_type()),
               current_cuda_stream());
  check_cuda_launch();
  return call.out;
}

at::Tensor qspmm_cuda_op(const at::Tensor& rowptr, const at::Tensor& col, const std::optional<at::Tensor>& weight,
                         const at::Tensor& x, const at::Tensor& x_scale, c10::string_view reduce) {
  const CudaDeviceGuard guard(x.device());
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
