// Torch glue of the selective-scan CUDA kernels: the shared checks and allocations of
// glue/selective_scan_args.h, device guard, current stream, dtype dispatch, launch check.
// cu_seqlens on the GPU is validated by the Python layer (a check here would synchronise).
#include "dispatch_dtype.h"
#include "glue/output_tensor.h"
#include "glue/selective_scan_args.h"
#include "selective_scan.h"

namespace scangraph {
namespace {

std::tuple<Tensor, Tensor, Tensor> selective_scan_cuda_op(
    const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
    const std::optional<Tensor>& D, const std::optional<Tensor>& z,
    const std::optional<Tensor>& delta_bias, bool delta_softplus,
    const std::optional<Tensor>& initial_state, const std::optional<Tensor>& cu_seqlens, bool reverse) {
  const CudaDeviceGuard guard(u);
  ScanForwardCall call =
      prepare_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens, reverse);
  SelectiveScanParams& p = call.in.params;
  const ScanCudaShape shape = scan_cuda_shape(false, p.batch, p.dim, p.groups, p.length, cuda_target_warps());
  p.segments = shape.segments;
  p.segment_tiles = shape.segment_tiles;
  Tensor segment_state;  // the segments' maps, then their starting states
  if (p.segments > 1) {
    segment_state = empty_output({3, p.batch * p.dim, p.segments, p.dstate}, call.last_state.scalar_type(), u);
    p.segment_state = segment_state.mutable_data_ptr();
  }
  dispatch_dtype(u.scalar_type(), "selective_scan",
                 [&](auto t, cudaStream_t s) { selective_scan_cuda<element_t<decltype(t)>>(p, s); });
  return {call.out, call.last_state, call.checkpoints};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
           Tensor>
selective_scan_backward_cuda_op(const Tensor& grad_out, const std::optional<Tensor>& grad_last_state,
                             const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                             const Tensor& C, const std::optional<Tensor>& D,
                             const std::optional<Tensor>& z, const std::optional<Tensor>& delta_bias,
                             bool delta_softplus, const std::optional<Tensor>& initial_state,
                             const std::optional<Tensor>& cu_seqlens, bool reverse,
                             const Tensor& checkpoints) {
  const CudaDeviceGuard guard(u);
  ScanBackwardCall call = prepare_selective_scan_backward(grad_out, grad_last_state, u, delta, A, B, C, D, z,
                                                          delta_bias, delta_softplus, initial_state, cu_seqlens,
                                                          reverse, checkpoints, /*cpu_partials=*/false);
  // The CUDA kernels' own partials (selective_scan_params.h): per (b, d, segment), and per slab.
  SelectiveScanBackwardParams& q = call.params;
  const SelectiveScanParams& f = q.fwd;
  q.shape = scan_cuda_shape(true, f.batch, f.dim, f.groups, f.length, cuda_target_warps());
  const ScalarType acc = call.dA.scalar_type();
  call.param_partial = zeros_tensor({f.batch, f.dim, q.shape.segments, 3 * f.dstate + 2}, acc, u);
  q.param_partial = call.param_partial.mutable_data_ptr();
  if (f.groups != 0) {
    call.bc_partial = zeros_tensor({q.shape.slabs, f.batch, f.groups, 2, f.dstate, f.length}, acc, u);
    q.bc_partial = call.bc_partial.mutable_data_ptr();
  }
  Tensor segment_flow;
  if (q.shape.segments > 1) {
    segment_flow = empty_output({3, f.batch * f.dim, q.shape.segments, f.dstate}, acc, u);
    q.segment_flow = segment_flow.mutable_data_ptr();
  }
  dispatch_dtype(u.scalar_type(), "selective_scan_backward",
                 [&](auto t, cudaStream_t s) { selective_scan_backward_cuda<element_t<decltype(t)>>(q, s); });
  return scan_backward_results(call, A, B, C, D, delta_bias, initial_state);
}

Tensor selective_state_update_cuda_op(const Tensor& state, const Tensor& x, const Tensor& dt,
                                       const Tensor& A, const Tensor& B, const Tensor& C,
                                       const std::optional<Tensor>& D, const std::optional<Tensor>& z,
                                       const std::optional<Tensor>& dt_bias, bool dt_softplus) {
  const CudaDeviceGuard guard(x);
  StateUpdateCall call = prepare_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus);
  dispatch_dtype(x.scalar_type(), "selective_state_update",
                 [&](auto t, cudaStream_t s) { selective_state_update_cuda<element_t<decltype(t)>>(call.params, s); });
  // The kernel updated an acc copy (state not in acc or not contiguous): write it back in place,
  // as the schema's Tensor(a!) promises.
  if (call.copy_back) copy_into(state, call.state_acc);
  return call.out;
}

}  // namespace

SCANGRAPH_CUDA_KERNELS(m) {
  SCANGRAPH_CUDA_IMPL(m, "selective_scan", &selective_scan_cuda_op);
  SCANGRAPH_CUDA_IMPL(m, "selective_scan_backward", &selective_scan_backward_cuda_op);
  SCANGRAPH_CUDA_IMPL(m, "selective_state_update", &selective_state_update_cuda_op);
}

}  // namespace scangraph
