// Torch glue of the sparse CUDA kernels: argument checks, device guard, current stream,
// dtype dispatch, launch check. Index values are validated by CSRGraph on construction (a
// check here would synchronise the device on every call).
#include "dispatch_dtype.h"
#include "glue/output_tensor.h"
#include "glue/sparse_args.h"
#include "sparse.h"

namespace scangraph {
namespace {

// The split plan of rows longer than kSpmmSplitEdges (see sparse_params.h), built on the device
// from rowptr alone (SplitPlanParams), with no host sync: the launch and scratch are sized by the
// bound max_segments = 2 E / (T + 1) (a row of d > T edges has ceil(d / T) <= (d + T - 1) / T
// <= 2 d / (T + 1) segments), and the kernels read the real count from segment_ptr[num_rows].
// The kernels' view of a plan, its tensors kept alive by `call.owned`; {} when no row can be that
// long.
template <typename Params>
SplitPlan split_plan(KernelArgs<Params>& call, const Tensor& rowptr, int64_t num_edges) {
  if (num_edges <= kSpmmSplitEdges || rowptr.numel() < 2) return SplitPlan{};
  SplitPlanParams p{};
  p.rowptr = rowptr.const_data_ptr<int64_t>();
  p.num_rows = rowptr.numel() - 1;
  p.max_segments = 2 * num_edges / (kSpmmSplitEdges + 1);
  const Tensor segment_ptr = empty_output({p.num_rows + 1}, ScalarType::Long, rowptr);
  const Tensor segment_row = empty_output({p.max_segments}, ScalarType::Long, rowptr);
  call.owned.push_back(segment_ptr);
  call.owned.push_back(segment_row);
  p.segment_ptr = segment_ptr.mutable_data_ptr<int64_t>();
  p.segment_row = segment_row.mutable_data_ptr<int64_t>();
  const cudaStream_t stream = current_cuda_stream();
  split_plan_counts_cuda(p, stream);
  check_cuda_launch();
  prefix_sum_in_place(segment_ptr);  // on the current stream, between the two passes
  split_plan_rows_cuda(p, stream);
  check_cuda_launch();
  return SplitPlan{p.segment_ptr, p.segment_row, p.max_segments};
}

// Scratch of shape (count, *inner); with a zero in `inner` its pointer may be null, which is
// fine: the kernels index it only below F.
template <typename Params>
void* scratch(KernelArgs<Params>& call, int64_t count, std::vector<int64_t> inner, ScalarType dtype,
              const Tensor& like) {
  inner.insert(inner.begin(), count);
  return call.owned.emplace_back(empty_output(inner, dtype, like)).mutable_data_ptr();
}

KernelCall<SpmmParams> run_spmm(const Tensor& rowptr, const Tensor& col,
                                const std::optional<Tensor>& weight, const Tensor& x,
                                StringArg reduce) {
  const CudaDeviceGuard guard(x);
  KernelCall<SpmmParams> call = prepare_spmm(rowptr, col, weight, x, reduce);
  SpmmParams& p = call.params;
  if (p.num_rows > 0 && p.num_heads * p.num_features > 0) {
    p.plan = split_plan(call, rowptr, col.numel());
    if (p.plan.max_segments > 0) {
      p.partial = scratch(call, p.plan.max_segments, {p.num_heads, p.num_features}, opmath_type(x.scalar_type()), x);
      if (p.reduce == Reduce::Max || p.reduce == Reduce::Min)
        p.partial_arg = static_cast<int64_t*>(
            scratch(call, p.plan.max_segments, {p.num_heads, p.num_features}, ScalarType::Long, x));
    }
  }
  dispatch_dtype(x.scalar_type(), "spmm", [&](auto t, cudaStream_t s) { spmm_cuda<element_t<decltype(t)>>(p, s); });
  return call;
}

Tensor spmm_cuda_op(const Tensor& rowptr, const Tensor& col,
                     const std::optional<Tensor>& weight, const Tensor& x,
                     StringArg reduce, const std::optional<Tensor>& /*rowptr_t*/,
                     const std::optional<Tensor>& /*col_t*/,
                     const std::optional<Tensor>& /*perm_t*/) {
  check_reduce_for("spmm", reduce, /*extreme=*/false);
  return run_spmm(rowptr, col, weight, x, reduce).out;
}

std::tuple<Tensor, Tensor> spmm_arg_cuda_op(
    const Tensor& rowptr, const Tensor& col, const std::optional<Tensor>& weight,
    const Tensor& x, StringArg reduce, const std::optional<Tensor>& /*rowptr_t*/,
    const std::optional<Tensor>& /*col_t*/, const std::optional<Tensor>& /*perm_t*/) {
  check_reduce_for("spmm_arg", reduce, /*extreme=*/true);
  KernelCall<SpmmParams> call = run_spmm(rowptr, col, weight, x, reduce);
  return {call.out, call.out2};
}

std::tuple<Tensor, Tensor> spmm_arg_backward_cuda_op(
    const Tensor& rowptr, const Tensor& col, const Tensor& rowptr_t, const Tensor& col_t,
    const Tensor& perm_t, const std::optional<Tensor>& weight, const Tensor& x,
    const Tensor& grad, const Tensor& arg, bool weight_grad) {
  const CudaDeviceGuard guard(x);
  KernelCall<SpmmArgBackwardParams> call =
      prepare_spmm_arg_backward(rowptr, col, rowptr_t, col_t, perm_t, weight, x, grad, arg, weight_grad);
  SpmmArgBackwardParams& p = call.params;
  if (p.num_src > 0 && p.num_heads * p.num_features > 0) {
    p.transpose_plan = split_plan(call, rowptr_t, col_t.numel());
    if (p.transpose_plan.max_segments > 0)
      p.partial_dx = scratch(call, p.transpose_plan.max_segments, {p.num_heads, p.num_features},
                             opmath_type(x.scalar_type()), x);
  }
  dispatch_dtype(x.scalar_type(), "spmm_arg_backward",
                 [&](auto t, cudaStream_t s) { spmm_arg_backward_cuda<element_t<decltype(t)>>(p, s); });
  return {call.out, call.out2};
}

std::tuple<Tensor, Tensor, Tensor> gat_aggregate_cuda_op(
    const Tensor& rowptr, const Tensor& col, const Tensor& x, const Tensor& alpha_src,
    const Tensor& alpha_dst, double negative_slope, const std::optional<Tensor>& /*rowptr_t*/,
    const std::optional<Tensor>& /*col_t*/, const std::optional<Tensor>& /*perm_t*/, double dropout,
    const std::optional<Tensor>& rng) {
  const CudaDeviceGuard guard(x);
  KernelCall<GatParams> call = prepare_gat(rowptr, col, x, alpha_src, alpha_dst, negative_slope, dropout, rng);
  const Tensor row_sum = call.owned.back();  // before the plan adds its scratch
  GatParams& p = call.params;
  if (p.num_rows > 0 && p.num_heads > 0) {
    p.plan = split_plan(call, rowptr, col.numel());
    const ScalarType acc = opmath_type(x.scalar_type());
    if (p.plan.max_segments > 0) {
      p.partial = scratch(call, p.plan.max_segments, {p.num_heads, p.num_features}, acc, x);
      p.partial_stats = scratch(call, p.plan.max_segments, {p.num_heads, 2}, acc, x);
    }
  }
  dispatch_dtype(x.scalar_type(), "gat_aggregate",
                 [&](auto t, cudaStream_t s) { gat_cuda<element_t<decltype(t)>>(p, s); });
  return {call.out, call.out2, row_sum};
}

std::tuple<Tensor, Tensor, Tensor> gat_aggregate_backward_cuda_op(
    const Tensor& rowptr, const Tensor& col, const Tensor& rowptr_t, const Tensor& col_t,
    const Tensor& perm_t, const Tensor& x, const Tensor& alpha_src, const Tensor& alpha_dst,
    const Tensor& row_max, const Tensor& row_sum, const Tensor& delta, const Tensor& grad,
    double negative_slope, double dropout, const std::optional<Tensor>& rng) {
  const CudaDeviceGuard guard(x);
  KernelCall<GatBackwardParams> call =
      prepare_gat_backward(rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, row_max, row_sum, delta,
                           grad, negative_slope, dropout, rng);
  const Tensor dalpha_dst = call.owned.back();  // before the plans add their scratch
  GatBackwardParams& p = call.params;
  if (p.num_heads > 0) {
    const ScalarType acc = opmath_type(x.scalar_type());
    if (p.num_rows > 0) {
      p.plan = split_plan(call, rowptr, col.numel());
      if (p.plan.max_segments > 0) p.partial_dalpha_dst = scratch(call, p.plan.max_segments, {p.num_heads}, acc, x);
    }
    if (p.num_src > 0) {
      p.transpose_plan = split_plan(call, rowptr_t, col_t.numel());
      if (p.transpose_plan.max_segments > 0) {
        p.partial_dx = scratch(call, p.transpose_plan.max_segments, {p.num_heads, p.num_features}, acc, x);
        p.partial_dalpha_src = scratch(call, p.transpose_plan.max_segments, {p.num_heads}, acc, x);
      }
    }
  }
  dispatch_dtype(x.scalar_type(), "gat_aggregate_backward",
                 [&](auto t, cudaStream_t s) { gat_backward_cuda<element_t<decltype(t)>>(p, s); });
  return {call.out, call.out2, dalpha_dst};
}

std::tuple<Tensor, Tensor> common_neighbors_cuda_op(const Tensor& rowptr, const Tensor& col, const Tensor& src,
                                                    const Tensor& dst) {
  const CudaDeviceGuard guard(src);
  CommonNeighborParams p = prepare_common_neighbors(rowptr, col, src, dst);
  const cudaStream_t stream = current_cuda_stream();
  // Pass 1 counts each pair's neighbours into ptr[1:]; their prefix sum in place makes ptr.
  const Tensor ptr = empty_output({p.num_pairs + 1}, ScalarType::Long, src);
  fill_in_place(narrowed(ptr, 0, 0, 1), 0.0);
  p.counts = ptr.mutable_data_ptr<int64_t>() + 1;
  common_neighbors_cuda(p, stream);
  check_cuda_launch();
  prefix_sum_in_place(ptr);
  // The output size is data-dependent: one device-to-host read of the total.
  const Tensor neighbors = empty_output({read_int64(ptr, p.num_pairs)}, col.scalar_type(), col);
  p.counts = nullptr;
  p.offsets = ptr.const_data_ptr<int64_t>();
  p.neighbors = neighbors.mutable_data_ptr();
  common_neighbors_cuda(p, stream);
  check_cuda_launch();
  return {ptr, neighbors};
}

Tensor sddmm_cuda_op(const Tensor& rowptr, const Tensor& col, const Tensor& a,
                      const Tensor& b,
                     const std::optional<Tensor>& /*rowptr_t*/,
                     const std::optional<Tensor>& /*col_t*/,
                     const std::optional<Tensor>& /*perm_t*/) {
  const CudaDeviceGuard guard(a);
  const KernelCall<SddmmParams> call = prepare_sddmm(rowptr, col, a, b);
  const SddmmParams& p = call.params;
  dispatch_dtype(a.scalar_type(), "sddmm",
                 [&](auto t, cudaStream_t s) { sddmm_cuda<element_t<decltype(t)>>(p, s); });
  return call.out;
}

}  // namespace

SCANGRAPH_CUDA_KERNELS(m) {
  SCANGRAPH_CUDA_IMPL(m, "spmm", &spmm_cuda_op);
  SCANGRAPH_CUDA_IMPL(m, "spmm_arg", &spmm_arg_cuda_op);
  SCANGRAPH_CUDA_IMPL(m, "spmm_arg_backward", &spmm_arg_backward_cuda_op);
  SCANGRAPH_CUDA_IMPL(m, "sddmm", &sddmm_cuda_op);
  SCANGRAPH_CUDA_IMPL(m, "common_neighbors", &common_neighbors_cuda_op);
  SCANGRAPH_CUDA_IMPL(m, "gat_aggregate", &gat_aggregate_cuda_op);
  SCANGRAPH_CUDA_IMPL(m, "gat_aggregate_backward", &gat_aggregate_backward_cuda_op);
}

}  // namespace scangraph
