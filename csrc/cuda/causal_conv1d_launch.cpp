// Torch glue of the causal convolution CUDA kernels: the shared checks and allocations of
// glue/causal_conv1d_args.h, device guard, current stream, dtype dispatch, launch check.
#include "causal_conv1d.h"
#include "dispatch_dtype.h"
#include "glue/causal_conv1d_args.h"

namespace scangraph {
namespace {

Tensor causal_conv1d_cuda_op(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                                 const std::optional<Tensor>& seq_idx,
                                 const std::optional<Tensor>& initial_states, bool silu) {
  const CudaDeviceGuard guard(x);
  ConvCall call = prepare_causal_conv1d(x, weight, bias, seq_idx, initial_states, silu);
  dispatch_dtype(x.scalar_type(), "causal_conv1d",
                 [&](auto t, cudaStream_t s) { causal_conv1d_cuda<element_t<decltype(t)>>(call.params, s); });
  return call.out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> causal_conv1d_backward_cuda_op(
    const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
    const std::optional<Tensor>& seq_idx, const std::optional<Tensor>& initial_states,
    const Tensor& grad_out, bool silu) {
  const CudaDeviceGuard guard(x);
  ConvBackwardCall call = prepare_causal_conv1d_backward(x, weight, bias, seq_idx, initial_states, grad_out, silu);
  dispatch_dtype(x.scalar_type(), "causal_conv1d_backward", [&](auto t, cudaStream_t s) {
    causal_conv1d_backward_cuda<element_t<decltype(t)>>(call.params, s);
  });
  return conv_backward_results(call, weight, bias);
}

Tensor causal_conv1d_update_cuda_op(const Tensor& x, const Tensor& conv_state, const Tensor& weight,
                                        const std::optional<Tensor>& bias, bool silu,
                                        const std::optional<Tensor>& cache_seqlens,
                                        const std::optional<Tensor>& conv_state_indices) {
  const CudaDeviceGuard guard(x);
  ConvUpdateCall call =
      prepare_causal_conv1d_update(x, conv_state, weight, bias, silu, cache_seqlens, conv_state_indices);
  dispatch_dtype(x.scalar_type(), "causal_conv1d_update",
                 [&](auto t, cudaStream_t s) { causal_conv1d_update_cuda<element_t<decltype(t)>>(call.params, s); });
  // A strided conv_state was updated as a contiguous copy: write it back in place, as the
  // schema's Tensor(a!) promises.
  if (call.copy_back) copy_into(conv_state, call.state);
  return call.out;
}

}  // namespace

SCANGRAPH_CUDA_KERNELS(m) {
  SCANGRAPH_CUDA_IMPL(m, "causal_conv1d", &causal_conv1d_cuda_op);
  SCANGRAPH_CUDA_IMPL(m, "causal_conv1d_backward", &causal_conv1d_backward_cuda_op);
  SCANGRAPH_CUDA_IMPL(m, "causal_conv1d_update", &causal_conv1d_update_cuda_op);
}

}  // namespace scangraph
