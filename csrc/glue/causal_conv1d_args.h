// Torch-side checks, copies and allocations shared by the CPU and CUDA glue of the causal
// convolution ops. Kernels get the torch-free structs of causal_conv1d_params.h. The checks are
// ops/causal_conv1d.py's, in its order and words.
#pragma once
#include <optional>

#include "glue/common_args.h"
#include "glue/output_tensor.h"
#include "scangraph/causal_conv1d_params.h"

namespace scangraph {

struct ConvCall : KernelArgs<CausalConv1dParams> {
  Tensor x, weight, bias, seq_idx, initial_states, out;
};

// weight (dim, W) with 1 <= W <= kMaxConvWidth and bias (dim,), of any float dtype, copied to
// acc; returns W.
inline int64_t check_conv_weight(const Tensor& weight, const std::optional<Tensor>& bias,
                                 const Tensor& x, int64_t dim, const char* op) {
  check_float(weight, op, "weight");
  check_same_device(weight, x, op, "weight", "x");
  SCANGRAPH_CHECK_VALUE(weight.dim() == 2 && weight.size(0) == dim && weight.size(1) >= 1 &&
                            weight.size(1) <= kMaxConvWidth,
                        op, ": weight must be (dim, width) with dim = ", dim, " and width in [1, ", kMaxConvWidth,
                        "], got shape ", shape_str(weight.sizes()));
  if (bias.has_value()) {
    check_shape(*bias, {dim}, op, "bias");
    check_float(*bias, op, "bias");
    check_same_device(*bias, x, op, "bias", "x");
  }
  return weight.size(1);
}

inline ConvCall prepare_causal_conv1d(const Tensor& x, const Tensor& weight,
                                      const std::optional<Tensor>& bias,
                                      const std::optional<Tensor>& seq_idx,
                                      const std::optional<Tensor>& initial_states, bool silu) {
  const char* op = "causal_conv1d_fn";
  check_float(x, op, "x");
  SCANGRAPH_CHECK_VALUE(x.dim() == 3, op, ": x must be (batch, dim, L), got shape ", shape_str(x.sizes()));
  const int64_t batch = x.size(0), dim = x.size(1), length = x.size(2);
  const int64_t width = check_conv_weight(weight, bias, x, dim, op);
  SCANGRAPH_CHECK_VALUE(!(seq_idx.has_value() && initial_states.has_value()), op,
                        ": seq_idx and initial_states exclude each other (each packed sequence starts from zeros)");
  ConvCall call;
  if (seq_idx.has_value()) {
    check_shape(*seq_idx, {batch, length}, op, "seq_idx");
    check_dtype(*seq_idx, ScalarType::Int, op, "seq_idx");
    check_same_device(*seq_idx, x, op, "seq_idx", "x");
    call.seq_idx = as_contiguous(*seq_idx);
  }
  if (initial_states.has_value()) {
    check_shape(*initial_states, {batch, dim, width - 1}, op, "initial_states");
    check_dtype(*initial_states, x.scalar_type(), op, "initial_states");
    check_same_device(*initial_states, x, op, "initial_states", "x");
    call.initial_states = as_contiguous(*initial_states);
  }
  const ScalarType acc = opmath_type(x.scalar_type());
  call.x = as_contiguous(x);
  call.weight = as_contiguous(converted(weight, acc));
  if (bias.has_value()) call.bias = as_contiguous(converted(*bias, acc));
  call.out = empty_output(x.sizes().vec(), x.scalar_type(), x);
  CausalConv1dParams& p = call.params;
  p.batch = batch;
  p.dim = dim;
  p.length = length;
  p.width = width;
  p.silu = silu;
  p.x = call.x.const_data_ptr();
  p.weight = call.weight.const_data_ptr();
  p.bias = call.bias.defined() ? call.bias.const_data_ptr() : nullptr;
  p.seq_idx = call.seq_idx.defined() ? call.seq_idx.const_data_ptr<int32_t>() : nullptr;
  p.initial_states = call.initial_states.defined() ? call.initial_states.const_data_ptr() : nullptr;
  p.out = call.out.mutable_data_ptr();
  return call;
}

struct ConvBackwardCall : KernelArgs<CausalConv1dBackwardParams> {
  ConvCall fwd;
  Tensor grad_out, dx, dinitial_states, partial, dweight, dbias;
};

inline ConvBackwardCall prepare_causal_conv1d_backward(const Tensor& x, const Tensor& weight,
                                                       const std::optional<Tensor>& bias,
                                                       const std::optional<Tensor>& seq_idx,
                                                       const std::optional<Tensor>& initial_states,
                                                       const Tensor& grad_out, bool silu) {
  ConvBackwardCall call;
  call.fwd = prepare_causal_conv1d(x, weight, bias, seq_idx, initial_states, silu);
  const CausalConv1dParams& f = call.fwd.params;
  check_shape(grad_out, x.sizes(), "causal_conv1d_fn", "grad_out");
  const ScalarType acc = opmath_type(x.scalar_type());
  call.grad_out = as_contiguous(converted(grad_out, x.scalar_type()));
  call.dx = empty_output(x.sizes().vec(), x.scalar_type(), x);
  if (initial_states.has_value())
    call.dinitial_states = empty_output(initial_states->sizes().vec(), x.scalar_type(), x);
  call.partial = empty_output({f.batch, f.dim, conv_grad_blocks(f.length), f.width + 1}, acc, x);
  call.dweight = empty_output({f.dim, f.width}, acc, x);
  if (bias.has_value()) call.dbias = empty_output({f.dim}, acc, x);
  CausalConv1dBackwardParams& q = call.params;
  q.fwd = f;
  q.fwd.out = nullptr;
  q.grad_out = call.grad_out.const_data_ptr();
  q.dx = call.dx.mutable_data_ptr();
  q.dinitial_states = call.dinitial_states.defined() ? call.dinitial_states.mutable_data_ptr() : nullptr;
  q.partial = call.partial.mutable_data_ptr();
  q.dweight = call.dweight.mutable_data_ptr();
  q.dbias = call.dbias.defined() ? call.dbias.mutable_data_ptr() : nullptr;
  return call;
}

// (dx, dweight, dbias, dinitial_states) in the dtypes of their inputs; absent inputs get
// zero-size gradients.
inline std::tuple<Tensor, Tensor, Tensor, Tensor> conv_backward_results(
    const ConvBackwardCall& call, const Tensor& weight, const std::optional<Tensor>& bias) {
  const Tensor absent = empty_output({0}, call.dweight.scalar_type(), call.dweight);
  return {call.dx, converted(call.dweight, weight.scalar_type()),
          bias.has_value() ? converted(call.dbias, bias->scalar_type()) : absent,
          call.dinitial_states.defined() ? call.dinitial_states : empty_output({0}, call.dx.scalar_type(), call.dx)};
}

// causal_conv1d_update: conv_state is updated in place; a strided one through a contiguous
// copy, written back after the kernel.
struct ConvUpdateCall : KernelArgs<CausalConv1dUpdateParams> {
  Tensor x, state, weight, bias, cache_seqlens, conv_state_indices, out;
  bool copy_back = false;
};

inline ConvUpdateCall prepare_causal_conv1d_update(const Tensor& x, const Tensor& conv_state,
                                                   const Tensor& weight, const std::optional<Tensor>& bias,
                                                   bool silu, const std::optional<Tensor>& cache_seqlens,
                                                   const std::optional<Tensor>& conv_state_indices) {
  const char* op = "causal_conv1d_update";
  check_float(x, op, "x");
  SCANGRAPH_CHECK_VALUE(x.dim() == 3, op, ": x must be (batch, dim) or (batch, dim, seqlen), got shape ",
                        shape_str(x.sizes()));
  const int64_t batch = x.size(0), dim = x.size(1);
  const int64_t width = check_conv_weight(weight, bias, x, dim, op);
  check_dtype(conv_state, x.scalar_type(), op, "conv_state");
  check_same_device(conv_state, x, op, "conv_state", "x");
  SCANGRAPH_CHECK_VALUE(conv_state.dim() == 3 && conv_state.size(1) == dim && conv_state.size(2) >= width - 1, op,
                        ": conv_state must be (batch, dim, state_len) with dim = ", dim,
                        " and state_len >= width - 1 = ", width - 1, ", got shape ", shape_str(conv_state.sizes()));
  ConvUpdateCall call;
  const auto per_row = [&](const std::optional<Tensor>& t, const char* name) {
    if (!t.has_value()) return Tensor();
    check_shape(*t, {batch}, op, name);
    check_dtype(*t, ScalarType::Int, op, name);
    check_same_device(*t, x, op, name, "x");
    return as_contiguous(*t);
  };
  call.cache_seqlens = per_row(cache_seqlens, "cache_seqlens");
  call.conv_state_indices = per_row(conv_state_indices, "conv_state_indices");
  SCANGRAPH_CHECK_VALUE(conv_state_indices.has_value() || conv_state.size(0) == batch, op,
                        ": without conv_state_indices, conv_state must have one row per batch row (", batch,
                        "), got shape ", shape_str(conv_state.sizes()));
  if (call.conv_state_indices.defined() && x.is_cpu()) {  // the kernels index with them; a GPU's
    const int32_t* slot = call.conv_state_indices.const_data_ptr<int32_t>();  // are checked in Python
    for (int64_t b = 0; b < batch; ++b)
      SCANGRAPH_CHECK_VALUE(slot[b] < conv_state.size(0), op, ": conv_state_indices holds slot ", slot[b],
                            ", but conv_state has ", conv_state.size(0), " slots");
  }
  const ScalarType acc = opmath_type(x.scalar_type());
  call.x = as_contiguous(x);
  call.weight = as_contiguous(converted(weight, acc));
  if (bias.has_value()) call.bias = as_contiguous(converted(*bias, acc));
  call.copy_back = !conv_state.is_contiguous();
  call.state = call.copy_back ? as_contiguous(conv_state) : conv_state;
  call.out = empty_output(x.sizes().vec(), x.scalar_type(), x);
  CausalConv1dUpdateParams& p = call.params;
  p.batch = batch;
  p.dim = dim;
  p.seqlen = x.size(2);
  p.width = width;
  p.state_len = conv_state.size(2);
  p.slots = conv_state.size(0);
  p.silu = silu;
  p.x = call.x.const_data_ptr();
  p.conv_state = call.state.mutable_data_ptr();
  p.weight = call.weight.const_data_ptr();
  p.bias = call.bias.defined() ? call.bias.const_data_ptr() : nullptr;
  p.cache_seqlens = call.cache_seqlens.defined() ? call.cache_seqlens.const_data_ptr<int32_t>() : nullptr;
  p.conv_state_indices =
      call.conv_state_indices.defined() ? call.conv_state_indices.const_data_ptr<int32_t>() : nullptr;
  p.out = call.out.mutable_data_ptr();
  return call;
}

}  // namespace scangraph
