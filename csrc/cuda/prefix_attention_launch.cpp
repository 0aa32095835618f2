// Torch glue of the prefix-attention CUDA kernels: argument checks, device guard, current
// stream, dtype dispatch, launch check. cu_seqlens values are validated by the public Python
// function (a check here would synchronise the device on every call).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "dispatch_dtype.h"
#include "glue/prefix_attention_args.h"
#include "prefix_attention.h"

namespace scangraph {
namespace {

template <typename Params>
void launch(at::ScalarType dtype, const Params& p, const char* op, CudaLauncher<Params> fp64,
            CudaLauncher<Params> fp32, CudaLauncher<Params> fp16, CudaLauncher<Params> bf16) {
  TORCH_CHECK(p.dim <= kPrefixAttentionMaxDim && p.dim_v <= kPrefixAttentionMaxDim, op,
              ": the CUDA kernel holds a row of d and dv values in one warp's registers and supports d, dv <= ",
              kPrefixAttentionMaxDim, ", got d = ", p.dim, ", dv = ", p.dim_v, " (use backend='triton')");
  dispatch_dtype(dtype, p, op, fp64, fp32, fp16, bf16);
}

void run_forward(const PrefixAttentionParams& p, at::ScalarType dtype, const char* op) {
  launch(dtype, p, op, prefix_attention_fwd_cuda_fp64, prefix_attention_fwd_cuda_fp32, prefix_attention_fwd_cuda_fp16,
         prefix_attention_fwd_cuda_bf16);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> prefix_attention_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale, const std::optional<at::Tensor>& m0,
    const std::optional<at::Tensor>& c0, const std::optional<at::Tensor>& w0,
    const std::optional<at::Tensor>& cu_seqlens) {
  const CudaDeviceGuard guard(k.device());
  const PrefixAttentionCall call = prepare_prefix_attention(q, k, v, scale, m0, c0, w0, cu_seqlens);
  run_forward(call.params, k.scalar_type(), "scangraph::prefix_attention");
  return {call.o, call.m, call.c, call.m_last, call.c_last, call.w_last};
}

at::Tensor prefix_attention_step_cuda(const at::Tensor& m, const at::Tensor& c, const at::Tensor& w,
                                      const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  const CudaDeviceGuard guard(k.device());
  const PrefixAttentionCall call = prepare_prefix_attention_step(m, c, w, q, k, v, scale);
  run_forward(call.params, k.scalar_type(), "scangraph::prefix_attention_step");
  return call.o;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> prefix_attention_backward_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale, const std::optional<at::Tensor>& m0,
    const std::optional<at::Tensor>& c0, const std::optional<at::Tensor>& w0,
    const std::optional<at::Tensor>& cu_seqlens, const at::Tensor& o, const at::Tensor& m, const at::Tensor& c,
    const at::Tensor& c_last, const at::Tensor& w_last, const at::Tensor& grad_o, const at::Tensor& grad_m_last,
    const at::Tensor& grad_c_last, const at::Tensor& grad_w_last) {
  const CudaDeviceGuard guard(k.device());
  const PrefixAttentionBackwardCall call = prepare_prefix_attention_backward(
      q, k, v, scale, m0, c0, w0, cu_seqlens, o, m, c, c_last, w_last, grad_o, grad_m_last, grad_c_last, grad_w_last);
  launch(k.scalar_type(), call.params, "scangraph::prefix_attention_backward", prefix_attention_bwd_cuda_fp64,
         prefix_attention_bwd_cuda_fp32, prefix_attention_bwd_cuda_fp16, prefix_attention_bwd_cuda_bf16);
  return {call.dq(), call.dk, call.dv, call.dm0, call.dc0, call.dw0};
}

}  // namespace

SCANGRAPH_CUDA_KERNELS(m) {
  SCANGRAPH_CUDA_IMPL(m, "prefix_attention", &prefix_attention_cuda);
  SCANGRAPH_CUDA_IMPL(m, "prefix_attention_backward", &prefix_attention_backward_cuda);
  SCANGRAPH_CUDA_IMPL(m, "prefix_attention_step", &prefix_attention_step_cuda);
}

}  // namespace scangraph
