// Torch glue of the sparse CUDA kernels: argument checks, device guard, current stream,
// dtype dispatch, launch check. Index values are validated by CSRGraph on construction (a
// check here would synchronise the device on every call).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "dispatch_dtype.h"
#include "glue/sparse_args.h"
#include "sparse.h"

namespace scangraph {
namespace {

// The split plan of rows longer than kSpmmSplitEdges (see sparse_params.h), built with device
// ops from rowptr alone: per-row segment counts, their prefix sum, and a segment -> row map by
// binary search. No host sync: the launch and scratch are sized by the bound
// max_segments = 2 E / (T + 1) (a row of d > T edges has ceil(d / T) <= (d + T - 1) / T
// <= 2 d / (T + 1) segments), and the kernels read the real count from segment_ptr[num_rows].
// Empty (max_segments == 0) when no row can be that long.
struct LongRowPlan {
  at::Tensor segment_ptr, segment_row;
  int64_t max_segments = 0;
};

LongRowPlan plan_long_rows(const at::Tensor& rowptr, int64_t num_edges) {
  LongRowPlan plan;
  if (num_edges <= kSpmmSplitEdges || rowptr.numel() < 2) return plan;
  plan.max_segments = 2 * num_edges / (kSpmmSplitEdges + 1);
  const at::Tensor degree = rowptr.slice(0, 1) - rowptr.slice(0, 0, -1);
  const at::Tensor counts =
      at::where(degree > kSpmmSplitEdges, at::floor_divide(degree + (kSpmmSplitEdges - 1), kSpmmSplitEdges),
                at::zeros_like(degree));
  plan.segment_ptr = at::cat({at::zeros({1}, rowptr.options()), counts.cumsum(0)});
  // right=True: the last row whose first segment is <= s, so rows without segments are skipped.
  plan.segment_row = at::searchsorted(plan.segment_ptr, at::arange(plan.max_segments, rowptr.options()),
                                      /*out_int32=*/false, /*right=*/true) - 1;
  return plan;
}

// The kernels' view of a plan, its tensors kept alive by `owned`; {} when no row is split.
template <typename Params>
SplitPlan split_plan(KernelArgs<Params>& call, const at::Tensor& rowptr, int64_t num_edges) {
  const LongRowPlan plan = plan_long_rows(rowptr, num_edges);
  if (plan.max_segments == 0) return SplitPlan{};
  return SplitPlan{call.owned.emplace_back(plan.segment_ptr).template data_ptr<int64_t>(),
                   call.owned.emplace_back(plan.segment_row).template data_ptr<int64_t>(), plan.max_segments};
}

// Scratch of shape (count, *inner); with a zero in `inner` its pointer may be null, which is
// fine: the kernels index it only below F.
template <typename Params>
void* scratch(KernelArgs<Params>& call, int64_t count, at::IntArrayRef inner, const at::TensorOptions& options) {
  std::vector<int64_t> shape{count};
  shape.insert(shape.end(), inner.begin(), inner.end());
  return call.owned.emplace_back(empty_output(shape, options)).data_ptr();
}

KernelCall<SpmmParams> run_spmm(const at::Tensor& rowptr, const at::Tensor& col,
                                const std::optional<at::Tensor>& weight, const at::Tensor& x,
                                c10::string_view reduce) {
  const CudaDeviceGuard guard(x.device());
  KernelCall<SpmmParams> call = prepare_spmm(rowptr, col, weight, x, reduce);
  SpmmParams& p = call.params;
  if (p.num_rows > 0 && p.num_heads * p.num_features > 0) {
    p.plan = split_plan(call, rowptr, col.numel());
    if (p.plan.max_segments > 0) {
      p.partial = scratch(call, p.plan.max_segments, {p.num_heads, p.num_features},
                          x.options().dtype(opmath_type(x.scalar_type())));
      if (p.reduce == Reduce::Max || p.reduce == Reduce::Min)
        p.partial_arg = static_cast<int64_t*>(
            scratch(call, p.plan.max_segments, {p.num_heads, p.num_features}, rowptr.options()));
    }
  }
  dispatch_dtype(x.scalar_type(), "spmm", [&](auto t, cudaStream_t s) { spmm_cuda<element_t<decltype(t)>>(p, s); });
  return call;
}

at::Tensor spmm_cuda_op(const at::Tensor& rowptr, const at::Tensor& col,
                     const std::optional<at::Tensor>& weight, const at::Tensor& x,
                     c10::string_view reduce, const std::optional<at::Tensor>& /*rowptr_t*/,
                     const std::optional<at::Tensor>& /*col_t*/,
                     const std::optional<at::Tensor>& /*perm_t*/) {
  check_reduce_for("spmm", reduce, /*extreme=*/false);
  return run_spmm(rowptr, col, weight, x, reduce).out;
}

std::tuple<at::Tensor, at::Tensor> spmm_arg_cuda_op(
    const at::Tensor& rowptr, const at::Tensor& col, const std::optional<at::Tensor>& weight,
    const at::Tensor& x, c10::string_view reduce, const std::optional<at::Tensor>& /*rowptr_t*/,
    const std::optional<at::Tensor>& /*col_t*/, const std::optional<at::Tensor>& /*perm_t*/) {
  check_reduce_for("spmm_arg", reduce, /*extreme=*/true);
  KernelCall<SpmmParams> call = run_spmm(rowptr, col, weight, x, reduce);
  return {call.out, call.out2};
}

std::tuple<at::Tensor, at::Tensor> spmm_arg_backward_cuda_op(
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& rowptr_t, const at::Tensor& col_t,
    const at::Tensor& perm_t, const std::optional<at::Tensor>& weight, const at::Tensor& x,
    const at::Tensor& grad, const at::Tensor& arg, bool weight_grad) {
  const CudaDeviceGuard guard(x.device());
  KernelCall<SpmmArgBackwardParams> call =
      prepare_spmm_arg_backward(rowptr, col, rowptr_t, col_t, perm_t, weight, x, grad, arg, weight_grad);
  SpmmArgBackwardParams& p = call.params;
  if (p.num_src > 0 && p.num_heads * p.num_features > 0) {
    p.transpose_plan = split_plan(call, rowptr_t, col_t.numel());
    if (p.transpose_plan.max_segments > 0)
      p.partial_dx = scratch(call, p.transpose_plan.max_segments, {p.num_heads, p.num_features},
                             x.options().dtype(opmath_type(x.scalar_type())));
  }
  dispatch_dtype(x.scalar_type(), "spmm_arg_backward",
                 [&](auto t, cudaStream_t s) { spmm_arg_backward_cuda<element_t<decltype(t)>>(p, s); });
  return {call.out, call.out2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gat_aggregate_cuda_op(
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& x, const at::Tensor& alpha_src,
    const at::Tensor& alpha_dst, double negative_slope, const std::optional<at::Tensor>& /*rowptr_t*/,
    const std::optional<at::Tensor>& /*col_t*/, const std::optional<at::Tensor>& /*perm_t*/, double dropout,
    const std::optional<at::Tensor>& rng) {
  const CudaDeviceGuard guard(x.device());
  KernelCall<GatParams> call = prepare_gat(rowptr, col, x, alpha_src, alpha_dst, negative_slope, dropout, rng);
  const at::Tensor row_sum = call.owned.back();  // before the plan adds its scratch
  GatParams& p = call.params;
  if (p.num_rows > 0 && p.num_heads > 0) {
    p.plan = split_plan(call, rowptr, col.numel());
    const at::TensorOptions acc = x.options().dtype(opmath_type(x.scalar_type()));
    if (p.plan.max_segments > 0) {
      p.partial = scratch(call, p.plan.max_segments, {p.num_heads, p.num_features}, acc);
      p.partial_stats = scratch(call, p.plan.max_segments, {p.num_heads, 2}, acc);
    }
  }
  dispatch_dtype(x.scalar_type(), "gat_aggregate",
                 [&](auto t, cudaStream_t s) { gat_cuda<element_t<decltype(t)>>(p, s); });
  return {call.out, call.out2, row_sum};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gat_aggregate_backward_cuda_op(
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& rowptr_t, const at::Tensor& col_t,
    const at::Tensor& perm_t, const at::Tensor& x, const at::Tensor& alpha_src, const at::Tensor& alpha_dst,
    const at::Tensor& row_max, const at::Tensor& row_sum, const at::Tensor& delta, const at::Tensor& grad,
    double negative_slope, double dropout, const std::optional<at::Tensor>& rng) {
  const CudaDeviceGuard guard(x.device());
  KernelCall<GatBackwardParams> call =
      prepare_gat_backward(rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, row_max, row_sum, delta,
                           grad, negative_slope, dropout, rng);
  const at::Tensor dalpha_dst = call.owned.back();  // before the plans add their scratch
  GatBackwardParams& p = call.params;
  if (p.num_heads > 0) {
    const at::TensorOptions acc = x.options().dtype(opmath_type(x.scalar_type()));
    if (p.num_rows > 0) {
      p.plan = split_plan(call, rowptr, col.numel());
      if (p.plan.max_segments > 0) p.partial_dalpha_dst = scratch(call, p.plan.max_segments, {p.num_heads}, acc);
    }
    if (p.num_src > 0) {
      p.transpose_plan = split_plan(call, rowptr_t, col_t.numel());
      if (p.transpose_plan.max_segments > 0) {
        p.partial_dx = scratch(call, p.transpose_plan.max_segments, {p.num_heads, p.num_features}, acc);
        p.partial_dalpha_src = scratch(call, p.transpose_plan.max_segments, {p.num_heads}, acc);
      }
    }
  }
  dispatch_dtype(x.scalar_type(), "gat_aggregate_backward",
                 [&](auto t, cudaStream_t s) { gat_backward_cuda<element_t<decltype(t)>>(p, s); });
  return {call.out, call.out2, dalpha_dst};
}

std::tuple<at::Tensor, at::Tensor> common_neighbors_cuda_op(const at::Tensor& rowptr, const at::Tensor& col,
                                                            const at::Tensor& src, const at::Tensor& dst) {
  const CudaDeviceGuard guard(src.device());
  CommonNeighborParams p = prepare_common_neighbors(rowptr, col, src, dst);
  cudaStream_t stream = current_cuda_stream();
  at::Tensor counts = empty_output({p.num_pairs}, src.options());
  p.counts = counts.data_ptr<int64_t>();
  common_neighbors_cuda(p, stream);
  check_cuda_launch();
  at::Tensor ptr = at::cat({at::zeros({1}, src.options()), counts.cumsum(0)});
  // The output size is data-dependent: one device-to-host read of the total.
  at::Tensor neighbors = empty_output({ptr[-1].item<int64_t>()}, col.options());
  p.counts = nullptr;
  p.offsets = ptr.data_ptr<int64_t>();
  p.neighbors = neighbors.data_ptr();
  common_neighbors_cuda(p, stream);
  check_cuda_launch();
  return {ptr, neighbors};
}

at::Tensor sddmm_cuda_op(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& a,
                      const at::Tensor& b,
                     const std::optional<at::Tensor>& /*rowptr_t*/,
                     const std::optional<at::Tensor>& /*col_t*/,
                     const std::optional<at::Tensor>& /*perm_t*/) {
  const CudaDeviceGuard guard(a.device());
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
