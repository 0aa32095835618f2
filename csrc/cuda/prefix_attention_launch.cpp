// Torch glue of the prefix-attention CUDA kernels: argument checks, device guard, current
// stream, dtype dispatch, launch check. cu_seqlens values are validated by the public Python
// function (a check here would synchronise the device on every call).
#include <type_traits>
#include <vector>

#include "dispatch_dtype.h"
#include "glue/output_tensor.h"
#include "glue/prefix_attention_args.h"
#include "prefix_attention.h"

namespace scangraph {
namespace {

// Cuts L into segments where the (sequence, head) pairs alone leave the GPU short of warps, with
// the scratch the segmented passes need (prefix_attention_params.h), in the opmath type of k.
template <typename Params>
std::vector<Tensor> plan_segments(Params& p, const Tensor& k) {
  p.segment_length = prefix_attention_segment_length(p.num_seqs * p.heads, p.seqlen, cuda_target_warps());
  p.segments = p.seqlen > 0 ? (p.seqlen + p.segment_length - 1) / p.segment_length : 1;
  std::vector<Tensor> scratch;
  if (p.segments > 1) {
    scratch.push_back(empty_output({2, p.num_seqs, p.heads, p.segments, 2 + p.dim_v}, opmath_type(k.scalar_type()), k));
    p.segment_state = scratch.back().mutable_data_ptr();
  }
  return scratch;
}

template <typename Params>
void launch(const Tensor& k, Params p, const char* op) {
  SCANGRAPH_CHECK(p.dim <= kPrefixAttentionMaxDim && p.dim_v <= kPrefixAttentionMaxDim, op,
              ": the CUDA kernel holds a row of d and dv values in one warp's registers and supports d, dv <= ",
              kPrefixAttentionMaxDim, ", got d = ", p.dim, ", dv = ", p.dim_v, " (use backend='triton')");
  std::vector<Tensor> scratch = plan_segments(p, k);
  if constexpr (std::is_same<Params, PrefixAttentionBackwardParams>::value) {
    if (p.segments > 1) {
      scratch.push_back(empty_output({p.num_seqs, p.heads, p.segments, p.dim}, opmath_type(k.scalar_type()), k));
      p.dq_segments = scratch.back().mutable_data_ptr();
    }
  }
  dispatch_dtype(k.scalar_type(), op, [&](auto t, cudaStream_t s) {
    if constexpr (std::is_same<Params, PrefixAttentionBackwardParams>::value)
      prefix_attention_bwd_cuda<element_t<decltype(t)>>(p, s);
    else
      prefix_attention_fwd_cuda<element_t<decltype(t)>>(p, s);
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> prefix_attention_cuda_op(
    const Tensor& q, const Tensor& k, const Tensor& v, double scale, const std::optional<Tensor>& m0,
    const std::optional<Tensor>& c0, const std::optional<Tensor>& w0,
    const std::optional<Tensor>& cu_seqlens) {
  const CudaDeviceGuard guard(k);
  const PrefixAttentionCall call = prepare_prefix_attention(q, k, v, scale, m0, c0, w0, cu_seqlens);
  launch(k, call.params, "prefix_attention");
  return {call.o, call.m, call.c, call.m_last, call.c_last, call.w_last};
}

Tensor prefix_attention_step_cuda_op(const Tensor& m, const Tensor& c, const Tensor& w,
                                      const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  const CudaDeviceGuard guard(k);
  const PrefixAttentionCall call = prepare_prefix_attention_step(m, c, w, q, k, v, scale);
  launch(k, call.params, "prefix_attention_step");
  return call.o;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> prefix_attention_backward_cuda_op(
    const Tensor& q, const Tensor& k, const Tensor& v, double scale, const std::optional<Tensor>& m0,
    const std::optional<Tensor>& c0, const std::optional<Tensor>& w0,
    const std::optional<Tensor>& cu_seqlens, const Tensor& o, const Tensor& m, const Tensor& c,
    const Tensor& c_last, const Tensor& w_last, const Tensor& grad_o, const Tensor& grad_m_last,
    const Tensor& grad_c_last, const Tensor& grad_w_last) {
  const CudaDeviceGuard guard(k);
  const PrefixAttentionBackwardCall call = prepare_prefix_attention_backward(
      q, k, v, scale, m0, c0, w0, cu_seqlens, o, m, c, c_last, w_last, grad_o, grad_m_last, grad_c_last, grad_w_last);
  launch(k, call.params, "prefix_attention_backward");
  return {call.dq(), call.dk, call.dv, call.dm0, call.dc0, call.dw0};
}

}  // namespace

SCANGRAPH_CUDA_KERNELS(m) {
  SCANGRAPH_CUDA_IMPL(m, "prefix_attention", &prefix_attention_cuda_op);
  SCANGRAPH_CUDA_IMPL(m, "prefix_attention_backward", &prefix_attention_backward_cuda_op);
  SCANGRAPH_CUDA_IMPL(m, "prefix_attention_step", &prefix_attention_step_cuda_op);
}

}  // namespace scangraph
