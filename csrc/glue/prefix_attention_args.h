// Torch-side argument checks and parameter packing shared by the CPU and CUDA glue of the
// prefix-attention ops. Kernels never see a Tensor: they get the structs of
// prefix_attention_params.h. cu_seqlens: glue/common_args.h (its values on CPU tensors; on a
// GPU the public Python function checks them, a check here would synchronise the device).
#pragma once
#include <limits>
#include <optional>
#include <vector>

#include "scangraph/prefix_attention_params.h"
#include "glue/common_args.h"
#include "glue/output_tensor.h"

namespace scangraph {

// Shapes shared by the forward and backward ops.
struct PrefixAttentionShape {
  int64_t batch, seqlen, heads, dim, dim_v, num_seqs;
  Tensor q3, k, v;   // q as (batch or 1, heads, d); k, v with unit last stride
};

// _check_qkv of ops/prefix_attention.py, in its order, with its exception types and messages: q, k
// and v of k_dims dimensions (4 for the scan, 3 for the step), one dtype, one device, matching sizes.
inline void check_prefix_attention_qkv(const Tensor& q, const Tensor& k, const Tensor& v, int64_t k_dims,
                                       const char* k_expected, const char* v_expected, const char* op) {
  const auto check = [op](const Tensor& t, const char* name, bool dims_ok, const char* expected) {
    SCANGRAPH_CHECK_VALUE(dims_ok, op, ": ", name, " must be ", expected, ", got shape ", shape_str(t.sizes()));
    check_float(t, op, name);
  };
  check(q, "q", q.dim() == 2 || q.dim() == 3, "(heads, d) or (batch, heads, d)");
  check(k, "k", k.dim() == k_dims, k_expected);
  check(v, "v", v.dim() == k_dims, v_expected);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"q", &q}, {"v", &v}}) {
    SCANGRAPH_CHECK_TYPE(t->scalar_type() == k.scalar_type(), op, ": ", name, " must have the dtype of k (",
                         dtype_name(k.scalar_type()), "), got ", dtype_name(t->scalar_type()));
    check_same_device(*t, k, op, name, "k");
  }
  const int64_t heads = k.size(k_dims - 2), dim = k.size(k_dims - 1);
  const IntList leading = k.sizes().slice(0, k_dims - 1);
  SCANGRAPH_CHECK_VALUE(v.sizes().slice(0, k_dims - 1).equals(leading), op, ": v must be ", v_expected,
                        " with the leading sizes of k ", shape_str(leading), ", got shape ", shape_str(v.sizes()));
  SCANGRAPH_CHECK_VALUE(q.size(q.dim() - 2) == heads && q.size(q.dim() - 1) == dim, op,
                        ": q must have (heads, d) = (", heads, ", ", dim, ") as its last two sizes (from k), got shape ",
                        shape_str(q.sizes()));
  SCANGRAPH_CHECK_VALUE(q.dim() == 2 || q.size(0) == k.size(0), op, ": a per-batch q must be (batch, heads, d) = (",
                        k.size(0), ", ", heads, ", ", dim, "), got shape ", shape_str(q.sizes()));
}

// q, k, v checked (k, v of 4 dimensions), then cu_seqlens; the shapes the kernels take.
inline PrefixAttentionShape check_prefix_attention_inputs(const Tensor& q, const Tensor& k,
                                                          const Tensor& v,
                                                          const std::optional<Tensor>& cu_seqlens,
                                                          const char* op) {
  check_prefix_attention_qkv(q, k, v, 4, "(batch, L, heads, d)", "(batch, L, heads, dv)", op);
  PrefixAttentionShape s;
  s.batch = k.size(0);
  s.seqlen = k.size(1);
  s.heads = k.size(2);
  s.dim = k.size(3);
  s.dim_v = v.size(3);
  s.q3 = q.dim() == 2 ? unsqueezed(q, 0) : q;
  if (cu_seqlens.has_value()) {
    s.num_seqs = check_cu_seqlens(*cu_seqlens, k, s.batch, s.seqlen, op);
  } else {
    s.num_seqs = s.batch;
  }
  // Unit last stride: rows of d (dv) values are read as vectors.
  s.q3 = s.q3.size(2) > 1 && s.q3.stride(2) != 1 ? as_contiguous(s.q3) : s.q3;
  s.k = k.size(3) > 1 && k.stride(3) != 1 ? as_contiguous(k) : k;
  s.v = v.size(3) > 1 && v.stride(3) != 1 ? as_contiguous(v) : v;
  return s;
}

// The initial state: none, or all three of (m0, c0, w0) as contiguous opmath tensors.
inline std::vector<Tensor> check_prefix_attention_state(const PrefixAttentionShape& s,
                                                        const std::optional<Tensor>& m0,
                                                        const std::optional<Tensor>& c0,
                                                        const std::optional<Tensor>& w0,
                                                        const Tensor& like, const char* op) {
  const bool any = m0.has_value() || c0.has_value() || w0.has_value();
  if (!any) return {};
  SCANGRAPH_CHECK(m0.has_value() && c0.has_value() && w0.has_value(), op,
                  ": the initial state is all three of (m0, c0, w0) or none of them");
  const ScalarType acc = opmath_type(like.scalar_type());
  const std::vector<int64_t> stat_shape{s.num_seqs, s.heads}, w_shape{s.num_seqs, s.heads, s.dim_v};
  const char* names[3] = {"m0", "c0", "w0"};
  const Tensor* tensors[3] = {&*m0, &*c0, &*w0};
  std::vector<Tensor> out;
  for (int i = 0; i < 3; ++i) {
    const Tensor& t = *tensors[i];
    const std::vector<int64_t>& shape = i == 2 ? w_shape : stat_shape;
    SCANGRAPH_CHECK(t.sizes().equals(shape), op, ": ", names[i], " must have shape ", sizes_str(shape),
                    " (one state per sequence and head), got ", sizes_str(t.sizes()));
    SCANGRAPH_CHECK(t.scalar_type() == acc, op, ": ", names[i], " must be ", scalar_type_name(acc),
                    " (the accumulation type of ", scalar_type_name(like.scalar_type()), " inputs), got ",
                    scalar_type_name(t.scalar_type()));
    SCANGRAPH_CHECK(t.device() == like.device(), op, ": ", names[i], " must be on ", device_name(like), ", got ",
                    device_name(t));
    out.push_back(as_contiguous(t));
  }
  return out;
}

template <typename Params>
inline void fill_prefix_attention_layout(Params& p, const PrefixAttentionShape& s, double scale,
                                         const std::optional<Tensor>& cu_seqlens) {
  p.q = s.q3.data_ptr();
  p.k = s.k.data_ptr();
  p.v = s.v.data_ptr();
  p.cu_seqlens = cu_seqlens.has_value() ? cu_seqlens->const_data_ptr<int32_t>() : nullptr;
  p.batch = s.batch;
  p.seqlen = s.seqlen;
  p.heads = s.heads;
  p.dim = s.dim;
  p.dim_v = s.dim_v;
  p.num_seqs = s.num_seqs;
  p.q_batch_stride = s.q3.size(0) == 1 ? 0 : s.q3.stride(0);
  p.q_head_stride = s.q3.stride(1);
  p.k_batch_stride = s.k.stride(0);
  p.k_pos_stride = s.k.stride(1);
  p.k_head_stride = s.k.stride(2);
  p.v_batch_stride = s.v.stride(0);
  p.v_pos_stride = s.v.stride(1);
  p.v_head_stride = s.v.stride(2);
  p.scale = scale;
}

struct PrefixAttentionCall : KernelArgs<PrefixAttentionParams> {
  Tensor o, m, c, m_last, c_last, w_last;
};

inline PrefixAttentionCall prepare_prefix_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                                    double scale, const std::optional<Tensor>& m0,
                                                    const std::optional<Tensor>& c0,
                                                    const std::optional<Tensor>& w0,
                                                    const std::optional<Tensor>& cu_seqlens) {
  const char* op = "prefix_attention";
  PrefixAttentionCall call;
  const PrefixAttentionShape s = check_prefix_attention_inputs(q, k, v, cu_seqlens, op);
  call.owned = check_prefix_attention_state(s, m0, c0, w0, k, op);
  call.owned.insert(call.owned.end(), {s.q3, s.k, s.v});
  PrefixAttentionParams& p = call.params;
  fill_prefix_attention_layout(p, s, scale, cu_seqlens);
  const ScalarType acc = opmath_type(k.scalar_type());
  call.o = empty_output({s.batch, s.seqlen, s.heads, s.dim_v}, v.scalar_type(), v);
  call.m = empty_output({s.batch, s.seqlen, s.heads}, acc, k);
  call.c = empty_output({s.batch, s.seqlen, s.heads}, acc, k);
  call.m_last = empty_output({s.num_seqs, s.heads}, acc, k);
  call.c_last = empty_output({s.num_seqs, s.heads}, acc, k);
  call.w_last = empty_output({s.num_seqs, s.heads, s.dim_v}, acc, k);
  p.o = call.o.data_ptr();
  p.m_stats = call.m.data_ptr();
  p.c_stats = call.c.data_ptr();
  if (m0.has_value()) {
    p.m0 = call.owned[0].data_ptr();
    p.c0 = call.owned[1].data_ptr();
    p.w0 = call.owned[2].data_ptr();
  }
  p.m_last = call.m_last.data_ptr();
  p.c_last = call.c_last.data_ptr();
  p.w_last = call.w_last.data_ptr();
  return call;
}

// The step op: one position per batch entry, the state (m, c, w) read and updated in place.
// It runs the forward kernel with L = 1, no statistics, and the final state aliasing the initial.
inline PrefixAttentionCall prepare_prefix_attention_step(const Tensor& m, const Tensor& c,
                                                         const Tensor& w, const Tensor& q,
                                                         const Tensor& k, const Tensor& v, double scale) {
  const char* op = "prefix_attention_step";
  check_prefix_attention_qkv(q, k, v, 3, "(batch, heads, d)", "(batch, heads, dv)", op);
  PrefixAttentionCall call;
  const PrefixAttentionShape s = check_prefix_attention_inputs(q, unsqueezed(k, 1), unsqueezed(v, 1), std::nullopt, op);
  const std::vector<Tensor> state = check_prefix_attention_state(s, m, c, w, k, op);
  for (const Tensor* t : {&m, &c, &w})
    SCANGRAPH_CHECK(t->is_contiguous(), op, ": the state tensors are updated in place and must be contiguous");
  call.owned = {s.q3, s.k, s.v};
  PrefixAttentionParams& p = call.params;
  fill_prefix_attention_layout(p, s, scale, std::nullopt);
  call.o = empty_output({s.batch, 1, s.heads, s.dim_v}, v.scalar_type(), v);
  p.o = call.o.data_ptr();
  p.m0 = p.m_last = m.data_ptr();
  p.c0 = p.c_last = c.data_ptr();
  p.w0 = p.w_last = w.data_ptr();
  call.o = squeezed(call.o, 1);
  return call;
}

struct PrefixAttentionBackwardCall : KernelArgs<PrefixAttentionBackwardParams> {
  Tensor dq_partial, dk, dv, dm0, dc0, dw0;
  std::vector<int64_t> q_shape;
  ScalarType q_dtype;

  // dq: the per-sequence partials summed in a fixed order (deterministic) when one q serves
  // several sequences, in q's shape and dtype.
  Tensor dq() const {
    Tensor dq = q_shape.size() == 2 || (dq_partial.size(0) != q_shape[0]) ? summed(dq_partial, 0) : dq_partial;
    return converted(reshaped(dq, q_shape), q_dtype);
  }
};

inline PrefixAttentionBackwardCall prepare_prefix_attention_backward(
    const Tensor& q, const Tensor& k, const Tensor& v, double scale,
    const std::optional<Tensor>& m0, const std::optional<Tensor>& c0, const std::optional<Tensor>& w0,
    const std::optional<Tensor>& cu_seqlens, const Tensor& o, const Tensor& m, const Tensor& c,
    const Tensor& c_last, const Tensor& w_last, const Tensor& grad_o, const Tensor& grad_m_last,
    const Tensor& grad_c_last, const Tensor& grad_w_last) {
  const char* op = "prefix_attention_backward";
  PrefixAttentionBackwardCall call;
  const PrefixAttentionShape s = check_prefix_attention_inputs(q, k, v, cu_seqlens, op);
  call.owned = check_prefix_attention_state(s, m0, c0, w0, k, op);
  const ScalarType acc = opmath_type(k.scalar_type());
  const std::vector<int64_t> o_shape{s.batch, s.seqlen, s.heads, s.dim_v}, stat_shape{s.batch, s.seqlen, s.heads},
      last_shape{s.num_seqs, s.heads}, w_shape{s.num_seqs, s.heads, s.dim_v};
  auto keep = [&](const Tensor& t, const char* name, const std::vector<int64_t>& shape, ScalarType dtype) {
    SCANGRAPH_CHECK(t.sizes().equals(shape) && t.scalar_type() == dtype && t.device() == k.device(), op, ": ",
                    name, " must be ", scalar_type_name(dtype), " of shape ", sizes_str(shape), " on ",
                    device_name(k), ", got ", scalar_type_name(t.scalar_type()), " ", sizes_str(t.sizes()), " on ",
                    device_name(t));
    return call.owned.emplace_back(as_contiguous(t)).data_ptr();
  };
  PrefixAttentionBackwardParams& p = call.params;
  p.o = keep(o, "o", o_shape, v.scalar_type());
  p.m_stats = keep(m, "m", stat_shape, acc);
  p.c_stats = keep(c, "c", stat_shape, acc);
  p.c_last = keep(c_last, "c_last", last_shape, acc);
  p.w_last = keep(w_last, "w_last", w_shape, acc);
  p.grad_o = keep(grad_o, "grad_o", o_shape, v.scalar_type());
  p.grad_m_last = keep(grad_m_last, "grad_m_last", last_shape, acc);
  p.grad_c_last = keep(grad_c_last, "grad_c_last", last_shape, acc);
  p.grad_w_last = keep(grad_w_last, "grad_w_last", w_shape, acc);
  if (m0.has_value()) {
    p.m0 = call.owned[0].data_ptr();
    p.c0 = call.owned[1].data_ptr();
    p.w0 = call.owned[2].data_ptr();
  }
  call.owned.insert(call.owned.end(), {s.q3, s.k, s.v});
  fill_prefix_attention_layout(p, s, scale, cu_seqlens);
  call.dq_partial = empty_output({s.num_seqs, s.heads, s.dim}, acc, k);
  call.dk = empty_output({s.batch, s.seqlen, s.heads, s.dim}, k.scalar_type(), k);
  call.dv = empty_output({s.batch, s.seqlen, s.heads, s.dim_v}, v.scalar_type(), v);
  call.dm0 = empty_output({s.num_seqs, s.heads}, acc, k);
  call.dc0 = empty_output({s.num_seqs, s.heads}, acc, k);
  call.dw0 = empty_output({s.num_seqs, s.heads, s.dim_v}, acc, k);
  p.dq_partial = call.dq_partial.data_ptr();
  p.dk = call.dk.data_ptr();
  p.dv = call.dv.data_ptr();
  p.dm0 = call.dm0.data_ptr();
  p.dc0 = call.dc0.data_ptr();
  p.dw0 = call.dw0.data_ptr();
  call.q_shape = q.sizes().vec();
  call.q_dtype = q.scalar_type();
  return call;
}

}  // namespace scangraph
