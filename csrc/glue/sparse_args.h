// Torch-side argument checks and parameter packing shared by the CPU and CUDA glue of the
// sparse ops. Kernels never see a Tensor: they get the torch-free structs of sparse_params.h.
#pragma once
#include <optional>
#include <vector>

#include "glue/common_args.h"
#include "glue/output_tensor.h"
#include "scangraph/sparse_params.h"

namespace scangraph {

// Checks what does not depend on values (ranks, dtypes, devices, sizes) and returns the
// number of edges. Index values are checked by validate_csr (CPU) or by CSRGraph (any device).
inline int64_t check_csr(const Tensor& rowptr, const Tensor& col, const Tensor& like,
                         const char* op) {
  SCANGRAPH_CHECK(rowptr.dim() == 1 && rowptr.scalar_type() == ScalarType::Long,
                  op, ": rowptr must be a 1-D int64 tensor, got ", rowptr.dim(), "-D ",
                  rowptr.scalar_type());
  SCANGRAPH_CHECK(rowptr.numel() >= 1, op, ": rowptr must hold num_rows + 1 >= 1 offsets, got 0");
  SCANGRAPH_CHECK(col.dim() == 1 &&
                      (col.scalar_type() == ScalarType::Long || col.scalar_type() == ScalarType::Int),
                  op, ": col must be a 1-D int32 or int64 tensor, got ", col.dim(), "-D ",
                  col.scalar_type());
  SCANGRAPH_CHECK(rowptr.is_contiguous() && col.is_contiguous(), op,
                  ": rowptr and col must be contiguous (CSRGraph makes them so)");
  SCANGRAPH_CHECK(rowptr.device() == like.device() && col.device() == like.device(), op,
                  ": rowptr, col and the features must be on one device, got rowptr on ",
                  device_name(rowptr), ", col on ", device_name(col), ", features on ", device_name(like));
  return col.numel();
}

// check_reduce of ops/_rules.py: the reductions of spmm and qspmm.
inline void check_reduce(const char* op, StringArg reduce) {
  SCANGRAPH_CHECK_VALUE(reduce == "sum" || reduce == "mean" || reduce == "max" || reduce == "min", op,
                        ": reduce must be 'sum', 'mean', 'max' or 'min', got '", std::string(reduce), "'");
}

// spmm (sum | mean) and spmm_arg (max | min) are separate ops: the latter returns the winners.
// A reduction that neither takes gets the public function's message.
inline void check_reduce_for(const char* op, StringArg reduce, bool extreme) {
  check_reduce(op, reduce);
  if (extreme) {
    SCANGRAPH_CHECK_VALUE(reduce == "max" || reduce == "min", op, ": reduce must be 'max' or 'min', got '",
                          std::string(reduce), "'");
  } else {
    SCANGRAPH_CHECK_VALUE(reduce == "sum" || reduce == "mean", op, ": reduce must be 'sum' or 'mean' ",
                          "(max / min are spmm_arg), got '", std::string(reduce), "'");
  }
}

// Features are (nodes, features) or (nodes, heads, features); returns a view with unit
// feature stride (copied once only when the last dimension is strided).
inline Tensor as_node_head_feature(const Tensor& t, const char* op, const char* name) {
  SCANGRAPH_CHECK_VALUE(t.dim() == 2 || t.dim() == 3, op, ": ", name,
                        " must be (nodes, features) or (nodes, heads, features), got shape ", shape_str(t.sizes()));
  check_float(t, op, name);
  Tensor v = t.dim() == 2 ? unsqueezed(t, 1) : t;
  if (v.size(2) > 1 && v.stride(2) != 1) v = as_contiguous(v);
  return v;
}

inline KernelCall<SpmmParams> prepare_spmm(const Tensor& rowptr, const Tensor& col,
                                           const std::optional<Tensor>& weight,
                                           const Tensor& x, StringArg reduce) {
  const char* op = "spmm";
  const int64_t num_edges = check_csr(rowptr, col, x, op);
  check_reduce(op, reduce);
  KernelCall<SpmmParams> call;
  SpmmParams& p = call.params;
  const Tensor xv = call.owned.emplace_back(as_node_head_feature(x, op, "x"));
  const int64_t num_rows = rowptr.numel() - 1, heads = xv.size(1), features = xv.size(2);
  if (weight.has_value()) {
    // _edge_weight of ops/sparse.py: the shape, then dtype and device, with its messages.
    const Tensor& w = *weight;
    SCANGRAPH_CHECK_VALUE((w.dim() == 1 && w.size(0) == num_edges) ||
                              (w.dim() == 2 && w.size(0) == num_edges && w.size(1) == heads),
                          op, ": edge_weight must be (", num_edges, ",) or (", num_edges, ", ", heads, "), got ",
                          shape_str(w.sizes()));
    SCANGRAPH_CHECK_VALUE(w.scalar_type() == x.scalar_type() && w.device() == x.device(), op,
                          ": edge_weight must match x in dtype and device (", dtype_name(x.scalar_type()), ", ",
                          device_name(x), "), got ", dtype_name(w.scalar_type()), " on ", device_name(w));
    const Tensor weight_contig = call.owned.emplace_back(as_contiguous(w));
    p.weight = weight_contig.const_data_ptr();
    p.weight_edge_stride = weight_contig.dim() == 1 ? 1 : heads;
    p.weight_head_stride = weight_contig.dim() == 1 ? 0 : 1;
  }
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape[0] = num_rows;
  call.out = empty_output(out_shape, x.scalar_type(), x);
  p.rowptr = rowptr.const_data_ptr<int64_t>();
  p.col = col.const_data_ptr();
  p.x = xv.const_data_ptr();
  p.out = call.out.mutable_data_ptr();
  p.num_rows = num_rows;
  p.num_heads = heads;
  p.num_features = features;
  p.x_row_stride = xv.stride(0);
  p.x_head_stride = xv.stride(1);
  p.col_is_int32 = col.scalar_type() == ScalarType::Int;
  p.reduce = reduce == "sum" ? Reduce::Sum : reduce == "mean" ? Reduce::Mean
             : reduce == "max" ? Reduce::Max : Reduce::Min;
  if (p.reduce == Reduce::Max || p.reduce == Reduce::Min) {
    call.out2 = empty_output(out_shape, ScalarType::Long, x);
    p.arg = call.out2.mutable_data_ptr<int64_t>();
  }
  return call;
}

// Backward of max / min spmm; dweight is computed only when want_dweight.
inline KernelCall<SpmmArgBackwardParams> prepare_spmm_arg_backward(
    const Tensor& rowptr, const Tensor& col, const Tensor& rowptr_t,
    const Tensor& col_t, const Tensor& perm_t, const std::optional<Tensor>& weight,
    const Tensor& x, const Tensor& grad, const Tensor& arg, bool want_dweight) {
  const char* op = "spmm_arg_backward";
  const int64_t num_edges = check_csr(rowptr, col, x, op);
  SCANGRAPH_CHECK(check_csr(rowptr_t, col_t, x, op) == num_edges && perm_t.numel() == num_edges &&
                      perm_t.scalar_type() == ScalarType::Long && perm_t.is_contiguous(),
                  op, ": the transpose (rowptr_t, col_t, perm_t) must hold the graph's ", num_edges,
                  " edges with an int64 perm_t");
  SCANGRAPH_CHECK(col_t.scalar_type() == col.scalar_type(), op, ": col and col_t must share a dtype");
  KernelCall<SpmmArgBackwardParams> call;
  SpmmArgBackwardParams& p = call.params;
  const Tensor xv = call.owned.emplace_back(as_node_head_feature(x, op, "x"));
  const Tensor gv = call.owned.emplace_back(as_contiguous(as_node_head_feature(grad, op, "grad")));
  SCANGRAPH_CHECK(arg.scalar_type() == ScalarType::Long && arg.sizes().equals(grad.sizes()), op,
                  ": arg must be int64 with the shape of grad ", sizes_str(grad.sizes()), ", got ",
                  arg.scalar_type(), " ", sizes_str(arg.sizes()));
  SCANGRAPH_CHECK(grad.scalar_type() == x.scalar_type() && gv.size(0) == rowptr.numel() - 1 &&
                      gv.size(1) == xv.size(1) && gv.size(2) == xv.size(2),
                  op, ": grad must be (num_rows, [heads,] F) in the dtype of x, got ", sizes_str(grad.sizes()));
  SCANGRAPH_CHECK(grad.device() == x.device() && arg.device() == x.device() && perm_t.device() == x.device(), op,
                  ": grad, arg and perm_t must be on the device of x (", device_name(x), "), got ",
                  device_name(grad), ", ", device_name(arg), ", ", device_name(perm_t));
  const Tensor av = call.owned.emplace_back(as_contiguous(arg));
  const int64_t heads = xv.size(1);
  if (weight.has_value()) {
    const Tensor w = call.owned.emplace_back(as_contiguous(*weight));
    SCANGRAPH_CHECK(w.scalar_type() == x.scalar_type() && w.device() == x.device() && w.size(0) == num_edges &&
                        (w.dim() == 1 || (w.dim() == 2 && w.size(1) == heads)),
                    op, ": edge_weight must be (num_edges[, heads]) = (", num_edges, "[, ", heads,
                    "]) in the dtype and on the device of x, got ", sizes_str(w.sizes()), " ", w.scalar_type(),
                    " on ", device_name(w));
    p.weight = w.const_data_ptr();
    p.weight_edge_stride = w.dim() == 1 ? 1 : heads;
    p.weight_head_stride = w.dim() == 1 ? 0 : 1;
  }
  call.out = empty_output(x.sizes().vec(), x.scalar_type(), x);
  // dweight is (E, heads); a weight shared by all heads sums it over heads afterwards.
  call.out2 = empty_output({want_dweight ? num_edges : 0, heads}, x.scalar_type(), x);
  if (want_dweight) p.dweight = call.out2.mutable_data_ptr();
  p.rowptr = rowptr.const_data_ptr<int64_t>();
  p.col = col.const_data_ptr();
  p.rowptr_t = rowptr_t.const_data_ptr<int64_t>();
  p.col_t = col_t.const_data_ptr();
  p.perm_t = perm_t.const_data_ptr<int64_t>();
  p.x = xv.const_data_ptr();
  p.grad = gv.const_data_ptr();
  p.arg = av.const_data_ptr<int64_t>();
  p.dx = call.out.mutable_data_ptr();
  p.num_rows = rowptr.numel() - 1;
  p.num_src = xv.size(0);
  p.num_edges = num_edges;
  p.num_heads = heads;
  p.num_features = xv.size(2);
  p.x_row_stride = xv.stride(0);
  p.x_head_stride = xv.stride(1);
  p.col_is_int32 = col.scalar_type() == ScalarType::Int;
  SCANGRAPH_CHECK(rowptr_t.numel() - 1 == p.num_src, op, ": the transpose must have one row per source node (",
                  p.num_src, "), got ", rowptr_t.numel() - 1);
  return call;
}

inline KernelCall<SddmmParams> prepare_sddmm(const Tensor& rowptr, const Tensor& col,
                                             const Tensor& a, const Tensor& b) {
  const char* op = "sddmm";
  const int64_t num_edges = check_csr(rowptr, col, a, op);
  // sddmm's checks in ops/sparse.py, in its order and with its messages (b's rows are the
  // graph's columns, which the raw op learns from b itself).
  KernelCall<SddmmParams> call;
  SddmmParams& p = call.params;
  const Tensor av = call.owned.emplace_back(as_node_head_feature(a, op, "a"));
  const int64_t num_rows = rowptr.numel() - 1;
  SCANGRAPH_CHECK_VALUE(a.size(0) == num_rows, op, ": a must have ", num_rows,
                        " rows (one per destination row of the graph), got shape ", shape_str(a.sizes()));
  const Tensor bv = call.owned.emplace_back(as_node_head_feature(b, op, "b"));
  SCANGRAPH_CHECK_VALUE(a.scalar_type() == b.scalar_type() && a.sizes().slice(1).equals(b.sizes().slice(1)), op,
                        ": a and b must share dtype and trailing shape, got ", dtype_name(a.scalar_type()), " ",
                        shape_str(a.sizes()), " and ", dtype_name(b.scalar_type()), " ", shape_str(b.sizes()));
  check_same_device(b, a, op, "b", "a");
  call.out = a.dim() == 2 ? empty_output({num_edges}, a.scalar_type(), a)
                          : empty_output({num_edges, a.size(1)}, a.scalar_type(), a);
  p.rowptr = rowptr.const_data_ptr<int64_t>();
  p.col = col.const_data_ptr();
  p.a = av.const_data_ptr();
  p.b = bv.const_data_ptr();
  p.out = call.out.mutable_data_ptr();
  p.num_rows = num_rows;
  p.num_edges = num_edges;
  p.num_heads = av.size(1);
  p.num_features = av.size(2);
  p.a_row_stride = av.stride(0);
  p.a_head_stride = av.stride(1);
  p.b_row_stride = bv.stride(0);
  p.b_head_stride = bv.stride(1);
  p.col_is_int32 = col.scalar_type() == ScalarType::Int;
  return call;
}

inline void check_gat_features(const Tensor& x, const Tensor& alpha_src, const Tensor& alpha_dst,
                               int64_t num_rows, const char* op) {
  SCANGRAPH_CHECK(x.dim() == 3 && is_floating_type(x.scalar_type()), op,
                  ": x must be a floating (nodes, heads, features) tensor, got ", sizes_str(x.sizes()), " ",
                  x.scalar_type());
  SCANGRAPH_CHECK(alpha_src.dim() == 2 && alpha_src.size(0) == x.size(0) && alpha_src.size(1) == x.size(1), op,
                  ": alpha_src must be (num_src, heads) = (", x.size(0), ", ", x.size(1), "), got ",
                  sizes_str(alpha_src.sizes()));
  SCANGRAPH_CHECK(alpha_dst.dim() == 2 && alpha_dst.size(0) == num_rows && alpha_dst.size(1) == x.size(1), op,
                  ": alpha_dst must be (num_rows, heads) = (", num_rows, ", ", x.size(1), "), got ",
                  sizes_str(alpha_dst.sizes()));
  SCANGRAPH_CHECK(alpha_src.scalar_type() == x.scalar_type() && alpha_dst.scalar_type() == x.scalar_type(), op,
                  ": alpha_src and alpha_dst must have the dtype of x (", x.scalar_type(), ")");
  SCANGRAPH_CHECK(alpha_src.device() == x.device() && alpha_dst.device() == x.device(), op,
                  ": x, alpha_src and alpha_dst must be on one device");
}

// The attention dropout of p with rng = (seed, offset): none for p = 0.
inline DropoutParams prepare_dropout(double p, const std::optional<Tensor>& rng, const Tensor& x,
                                     const char* op) {
  SCANGRAPH_CHECK(p >= 0.0 && p <= 1.0, op, ": dropout must be in [0, 1], got ", p);
  DropoutParams d;
  if (p == 0.0) return d;
  SCANGRAPH_CHECK(rng.has_value() && rng->scalar_type() == ScalarType::Long && rng->numel() == 2 &&
                      rng->is_contiguous() && rng->device() == x.device(),
                  op, ": dropout > 0 needs rng, a contiguous int64 (seed, offset) tensor of 2 elements on ",
                  device_name(x));
  d.rng = rng->const_data_ptr<int64_t>();
  d.threshold = dropout_threshold(p);
  d.scale = dropout_scale(p);
  return d;
}

inline KernelCall<GatParams> prepare_gat(const Tensor& rowptr, const Tensor& col, const Tensor& x,
                                         const Tensor& alpha_src, const Tensor& alpha_dst,
                                         double negative_slope, double dropout,
                                         const std::optional<Tensor>& rng) {
  const char* op = "gat_aggregate";
  check_csr(rowptr, col, x, op);
  const int64_t num_rows = rowptr.numel() - 1;
  check_gat_features(x, alpha_src, alpha_dst, num_rows, op);
  KernelCall<GatParams> call;
  GatParams& p = call.params;
  const Tensor xc = call.owned.emplace_back(as_contiguous(x));
  const Tensor as = call.owned.emplace_back(as_contiguous(alpha_src));
  const Tensor ad = call.owned.emplace_back(as_contiguous(alpha_dst));
  call.out = empty_output({num_rows, x.size(1), x.size(2)}, x.scalar_type(), x);
  // Row statistics: max in out2, denominator in owned[3] (returned by the op as well).
  call.out2 = empty_output({num_rows, x.size(1)}, opmath_type(x.scalar_type()), x);
  const Tensor row_sum =
      call.owned.emplace_back(empty_output(call.out2.sizes().vec(), call.out2.scalar_type(), call.out2));
  p.rowptr = rowptr.const_data_ptr<int64_t>();
  p.col = col.const_data_ptr();
  p.x = xc.const_data_ptr();
  p.alpha_src = as.const_data_ptr();
  p.alpha_dst = ad.const_data_ptr();
  p.out = call.out.mutable_data_ptr();
  p.row_max = call.out2.mutable_data_ptr();
  p.row_sum = row_sum.mutable_data_ptr();
  p.num_rows = num_rows;
  p.num_src = x.size(0);
  p.num_heads = x.size(1);
  p.num_features = x.size(2);
  p.negative_slope = negative_slope;
  p.col_is_int32 = col.scalar_type() == ScalarType::Int;
  p.dropout = prepare_dropout(dropout, rng, x, op);
  return call;
}

// Outputs: dx in out, dalpha_src in out2, dalpha_dst in owned.back().
inline KernelCall<GatBackwardParams> prepare_gat_backward(
    const Tensor& rowptr, const Tensor& col, const Tensor& rowptr_t, const Tensor& col_t,
    const Tensor& perm_t, const Tensor& x, const Tensor& alpha_src, const Tensor& alpha_dst,
    const Tensor& row_max, const Tensor& row_sum, const Tensor& delta, const Tensor& grad,
    double negative_slope, double dropout, const std::optional<Tensor>& rng) {
  const char* op = "gat_aggregate_backward";
  const int64_t num_edges = check_csr(rowptr, col, x, op);
  SCANGRAPH_CHECK(check_csr(rowptr_t, col_t, x, op) == num_edges && rowptr_t.numel() - 1 == x.size(0) &&
                      col_t.scalar_type() == col.scalar_type() && perm_t.scalar_type() == ScalarType::Long &&
                      perm_t.numel() == num_edges && perm_t.is_contiguous() && perm_t.device() == x.device(),
                  op, ": (rowptr_t, col_t, perm_t) must be the transpose of the graph");
  const int64_t num_rows = rowptr.numel() - 1;
  check_gat_features(x, alpha_src, alpha_dst, num_rows, op);
  const ScalarType acc = opmath_type(x.scalar_type());
  for (const Tensor* t : {&row_max, &row_sum, &delta})
    SCANGRAPH_CHECK(t->scalar_type() == acc && t->dim() == 2 && t->size(0) == num_rows && t->size(1) == x.size(1) &&
                        t->device() == x.device(),
                    op, ": row statistics must be (num_rows, heads) ", acc, " on ", device_name(x), ", got ",
                    sizes_str(t->sizes()), " ", t->scalar_type(), " on ", device_name(*t));
  SCANGRAPH_CHECK(grad.device() == x.device(), op, ": grad must be on the device of x (", device_name(x), "), got ",
                  device_name(grad));
  SCANGRAPH_CHECK(grad.sizes().equals(IntList({num_rows, x.size(1), x.size(2)})) &&
                      grad.scalar_type() == x.scalar_type(),
                  op, ": grad must be (num_rows, heads, F) in the dtype of x, got ", sizes_str(grad.sizes()));
  KernelCall<GatBackwardParams> call;
  GatBackwardParams& p = call.params;
  auto keep = [&](const Tensor& t) { return call.owned.emplace_back(as_contiguous(t)).const_data_ptr(); };
  p.rowptr = rowptr.const_data_ptr<int64_t>();
  p.col = col.const_data_ptr();
  p.rowptr_t = rowptr_t.const_data_ptr<int64_t>();
  p.col_t = col_t.const_data_ptr();
  p.perm_t = perm_t.const_data_ptr<int64_t>();
  p.x = keep(x);
  p.alpha_src = keep(alpha_src);
  p.alpha_dst = keep(alpha_dst);
  p.row_max = keep(row_max);
  p.row_sum = keep(row_sum);
  p.delta = keep(delta);
  p.grad = keep(grad);
  call.out = empty_output({x.size(0), x.size(1), x.size(2)}, x.scalar_type(), x);
  call.out2 = empty_output({x.size(0), x.size(1)}, x.scalar_type(), x);
  p.dx = call.out.mutable_data_ptr();
  p.dalpha_src = call.out2.mutable_data_ptr();
  p.dalpha_dst = call.owned.emplace_back(empty_output({num_rows, x.size(1)}, x.scalar_type(), x)).mutable_data_ptr();
  p.num_rows = num_rows;
  p.num_src = x.size(0);
  p.num_heads = x.size(1);
  p.num_features = x.size(2);
  p.negative_slope = negative_slope;
  p.col_is_int32 = col.scalar_type() == ScalarType::Int;
  p.dropout = prepare_dropout(dropout, rng, x, op);
  return call;
}

inline CommonNeighborParams prepare_common_neighbors(const Tensor& rowptr, const Tensor& col,
                                                     const Tensor& src, const Tensor& dst) {
  const char* op = "common_neighbors";
  check_csr(rowptr, col, src, op);
  SCANGRAPH_CHECK(src.dim() == 1 && dst.dim() == 1 && src.numel() == dst.numel() &&
                      src.scalar_type() == ScalarType::Long && dst.scalar_type() == ScalarType::Long &&
                      src.is_contiguous() && dst.is_contiguous(),
                  op, ": src and dst must be contiguous 1-D int64 tensors of one length, got ",
                  sizes_str(src.sizes()), " ", src.scalar_type(), " and ", sizes_str(dst.sizes()), " ",
                  dst.scalar_type());
  SCANGRAPH_CHECK(dst.device() == src.device(), op, ": src and dst must be on one device");
  CommonNeighborParams p{};
  p.rowptr = rowptr.const_data_ptr<int64_t>();
  p.col = col.const_data_ptr();
  p.src = src.const_data_ptr<int64_t>();
  p.dst = dst.const_data_ptr<int64_t>();
  p.num_pairs = src.numel();
  p.num_rows = rowptr.numel() - 1;
  p.col_is_int32 = col.scalar_type() == ScalarType::Int;
  return p;
}

}  // namespace scangraph
