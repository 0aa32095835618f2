// Torch-side argument checks and parameter packing shared by the CPU and CUDA glue of the
// low-precision ops. Kernels see only the torch-free structs of scangraph/lowp_params.h. Where
// the public function (ops/lowp.py) checks the same thing, the exception and the message are
// its own (tests/test_bad_input.py asserts it).
#pragma once
#include <optional>
#include <vector>

#include "glue/sparse_args.h"
#include "scangraph/lowp_params.h"
#include "glue/output_tensor.h"

namespace scangraph {

inline void check_bits(int64_t bits, const char* op) {
  SCANGRAPH_CHECK_VALUE(bits == 8 || bits == 4, op, ": bits must be 8 or 4, got ", bits);
}

// quantize -> (data, scale) as (out, out2): data int8 of x's shape (8 bits) or uint8 with the
// last dimension halved, rounded up (4 bits); scale (channels,) float32.
inline KernelCall<QuantizeParams> prepare_quantize(const Tensor& x, int64_t bits, std::optional<int64_t> axis) {
  const char* op = "quantize";
  check_bits(bits, op);
  check_float(x, op, "x");
  SCANGRAPH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least one dimension, got a scalar");
  KernelCall<QuantizeParams> call;
  const Tensor xc = as_contiguous(x);
  call.owned.push_back(xc);
  int64_t outer = 1, channels = 1, inner = x.numel();
  if (axis.has_value()) {
    const int64_t a = *axis < 0 ? *axis + x.dim() : *axis;
    SCANGRAPH_CHECK_VALUE(a >= 0 && a < x.dim(), op, ": axis must be None or an int in [", -x.dim(), ", ", x.dim(),
                          "), got ", *axis);
    outer = 1;
    for (int64_t d = 0; d < a; ++d) outer *= x.size(d);
    channels = x.size(a);
    inner = 1;
    for (int64_t d = a + 1; d < x.dim(); ++d) inner *= x.size(d);
  }
  const int64_t last = x.size(x.dim() - 1);
  std::vector<int64_t> shape = x.sizes().vec();
  if (bits == 4) shape.back() = (last + 1) / 2;
  call.out = empty_output(shape, bits == 4 ? ScalarType::Byte : ScalarType::Char, x);
  call.out2 = empty_output({channels}, ScalarType::Float, x);
  QuantizeParams& p = call.params;
  p.x = xc.const_data_ptr();
  p.data = static_cast<int8_t*>(call.out.mutable_data_ptr());
  p.scale = call.out2.mutable_data_ptr<float>();
  p.outer = outer;
  p.channels = channels;
  p.inner = inner;
  p.last_dim = last;
  p.bits = static_cast<int>(bits);
  return call;
}

inline Activation parse_activation(StringArg name, const char* op) {
  if (name == "none") return Activation::None;
  if (name == "relu") return Activation::Relu;
  if (name == "gelu") return Activation::Gelu;
  if (name == "silu") return Activation::Silu;
  SCANGRAPH_CHECK_VALUE(false, op, ": activation must be one of (None, 'none', 'relu', 'gelu', 'silu'), got '",
                        std::string(name), "'");
}

// x (M, K) float; w (N, K) int8 or (N, ceil(K / 2)) uint8 for 4 bits; w_scale (N,) float32;
// bias (N,) float; out_dtype float32 | float16 | bfloat16 | int32 (raw accumulator).
inline KernelCall<QLinearParams> prepare_qlinear(const Tensor& x, const Tensor& w, const Tensor& w_scale,
                                   int64_t w_bits, int64_t in_features, const std::optional<Tensor>& bias,
                                   StringArg activation, std::optional<ScalarType> out_dtype) {
  const char* op = "qlinear";
  check_bits(w_bits, op);
  check_float(x, op, "x");
  SCANGRAPH_CHECK_VALUE(x.dim() >= 1 && x.size(x.dim() - 1) == in_features, op, ": x must be (..., K) with K = ",
                        in_features, " (the weight's in_features), got shape ", shape_str(x.sizes()));
  SCANGRAPH_CHECK_VALUE(x.dim() == 2, op, ": the op takes x as (M, K) (the public function flattens the leading "
                        "dimensions), got shape ", shape_str(x.sizes()));
  const int64_t M = x.size(0), K = x.size(1);
  SCANGRAPH_CHECK(K <= kMaxExactK, op, ": K = ", K, " exceeds ", kMaxExactK,
                  ", beyond which the int32 accumulator could overflow");
  SCANGRAPH_CHECK(w.dim() == 2, op, ": w must be 2-D (N, K), got shape ", sizes_str(w.sizes()));
  const int64_t N = w.size(0);
  if (w_bits == 8) {
    SCANGRAPH_CHECK(w.scalar_type() == ScalarType::Char && w.size(1) == K, op,
                    ": an 8-bit weight must be int8 (N, K) with K = ", K, ", got ", w.scalar_type(), " ",
                    sizes_str(w.sizes()));
  } else {
    SCANGRAPH_CHECK(w.scalar_type() == ScalarType::Byte && w.size(1) == (K + 1) / 2, op,
                    ": a 4-bit weight must be packed uint8 (N, ceil(K / 2)) = (N, ", (K + 1) / 2, "), got ",
                    w.scalar_type(), " ", sizes_str(w.sizes()));
  }
  SCANGRAPH_CHECK(w_scale.scalar_type() == ScalarType::Float && w_scale.dim() == 1 && w_scale.size(0) == N, op,
                  ": w_scale must be float32 (N,) = (", N, ",), got ", w_scale.scalar_type(), " ",
                  sizes_str(w_scale.sizes()));
  check_same_device(x, w, op, "x", "w");
  check_same_device(w_scale, w, op, "w_scale", "w");
  const ScalarType out_type =
      out_dtype.value_or(x.scalar_type() == ScalarType::Double ? ScalarType::Float : x.scalar_type());
  SCANGRAPH_CHECK_VALUE(out_type == ScalarType::Float || out_type == ScalarType::Half ||
                            out_type == ScalarType::BFloat16 || out_type == ScalarType::Int,
                        op, ": out_dtype must be None, float32, float16, bfloat16 or int32, got ", dtype_name(out_type));
  const Activation act = parse_activation(activation, op);
  const bool int_output = out_type == ScalarType::Int;
  SCANGRAPH_CHECK_VALUE(!int_output || (act == Activation::None && !bias.has_value()), op,
                        ": out_dtype=int32 returns the raw integer accumulator: bias and activation must be None");
  KernelCall<QLinearParams> call;
  QLinearParams& p = call.params;
  Tensor xv = x.stride(1) == 1 ? x : as_contiguous(x);
  call.owned.push_back(xv);
  const Tensor wc = call.owned.emplace_back(as_contiguous(w));
  const Tensor sc = call.owned.emplace_back(as_contiguous(w_scale));
  if (bias.has_value()) {
    SCANGRAPH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N && is_floating_type(bias->scalar_type()), op,
                          ": bias must be a float (", N, ",) tensor, got ", dtype_name(bias->scalar_type()), " ",
                          shape_str(bias->sizes()));
    check_same_device(*bias, x, op, "bias", "x");
    // The epilogue adds the bias in fp32 (rounded once to the output at the end).
    p.bias = call.owned.emplace_back(as_contiguous(converted(*bias, ScalarType::Float))).const_data_ptr();
  }
  call.out = empty_output({M, N}, out_type, x);
  p.x = xv.const_data_ptr();
  p.w = static_cast<const int8_t*>(wc.const_data_ptr());
  p.w_scale = sc.const_data_ptr<float>();
  p.out = call.out.mutable_data_ptr();
  p.M = M;
  p.N = N;
  p.K = K;
  p.x_row_stride = xv.stride(0);
  p.w_row_stride = wc.size(1);
  p.w_bits = static_cast<int>(w_bits);
  p.activation = act;
  p.int_output = int_output;
  return call;
}

inline KernelCall<QSpmmParams> prepare_qspmm(const Tensor& rowptr, const Tensor& col,
                                             const std::optional<Tensor>& weight, const Tensor& x,
                                             const Tensor& x_scale, StringArg reduce) {
  const char* op = "qspmm";
  const int64_t num_edges = check_csr(rowptr, col, x, op);
  check_reduce(op, reduce);
  SCANGRAPH_CHECK(x.dim() == 2 && x.scalar_type() == ScalarType::Char, op,
                  ": x must be int8 (num_src, F) (8-bit per-row quantized features), got ", x.scalar_type(), " ",
                  sizes_str(x.sizes()));
  SCANGRAPH_CHECK(x_scale.scalar_type() == ScalarType::Float && x_scale.dim() == 1 && x_scale.size(0) == x.size(0), op,
                  ": x_scale must be float32 (num_src,) = (", x.size(0), ",), got ", x_scale.scalar_type(), " ",
                  sizes_str(x_scale.sizes()));
  SCANGRAPH_CHECK(x_scale.device() == x.device(), op, ": x_scale must be on ", device_name(x));
  KernelCall<QSpmmParams> call;
  QSpmmParams& p = call.params;
  if (weight.has_value()) {
    // The public function's order and messages: the dtype, the device, then the shape.
    SCANGRAPH_CHECK_TYPE(is_floating_type(weight->scalar_type()), op, ": edge_weight must be a float (", num_edges,
                         ",) tensor, got ", dtype_name(weight->scalar_type()));
    check_same_device(*weight, rowptr, op, "edge_weight", "the graph");
    SCANGRAPH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == num_edges, op, ": edge_weight must be (", num_edges,
                          ",), got ", shape_str(weight->sizes()));
    // The kernels weigh in fp32, as the public function passes them.
    p.weight = call.owned.emplace_back(as_contiguous(converted(*weight, ScalarType::Float))).const_data_ptr<float>();
  }
  const Tensor xv = call.owned.emplace_back(x.stride(1) == 1 ? x : as_contiguous(x));
  const Tensor sv = call.owned.emplace_back(as_contiguous(x_scale));
  call.out = empty_output({rowptr.numel() - 1, x.size(1)}, ScalarType::Float, x);
  p.rowptr = rowptr.const_data_ptr<int64_t>();
  p.col = col.const_data_ptr();
  p.x = static_cast<const int8_t*>(xv.const_data_ptr());
  p.x_scale = sv.const_data_ptr<float>();
  p.out = call.out.mutable_data_ptr<float>();
  p.num_rows = rowptr.numel() - 1;
  p.num_features = x.size(1);
  p.x_row_stride = xv.stride(0);
  p.col_is_int32 = col.scalar_type() == ScalarType::Int;
  p.reduce = reduce == "sum" ? 0 : reduce == "mean" ? 1 : reduce == "max" ? 2 : 3;
  return call;
}

}  // namespace scangraph
