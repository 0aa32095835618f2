// Rules and checks that every family's glue shares, written once: the dtype the kernels
// accumulate in, the checks of a tensor argument, and the packed-sequence offsets (cu_seqlens)
// of the scans. Their Python twins are in python/scangraph/ops/_rules.py: where both layers
// check (Python before the Triton ops, which have no glue; C++ before the kernels, for callers
// of the raw ops), the same exception type carries the same message (tests/test_bad_input.py).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace scangraph {

// The kernels accumulate in float32, or in float64 for float64 inputs (opmath_dtype in Python).
inline at::ScalarType opmath_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The kernels' float dtypes: float64, float32, float16, bfloat16 (FLOAT_DTYPES in Python).
inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kDouble || t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// A dtype as the messages name it, torch's Python name without "torch.": "float32".
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return "float64";
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    case at::kComplexFloat: return "complex64";
    case at::kComplexDouble: return "complex128";
    default: return c10::toString(t);
  }
}

// A shape as Python prints a tuple: "(2, 3)", "(5,)", "()".
inline std::string shape_str(at::IntArrayRef sizes) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < sizes.size(); ++i) s << (i ? ", " : "") << sizes[i];
  s << (sizes.size() == 1 ? ",)" : ")");
  return s.str();
}

// Offsets as Python prints a list: "[0, 3, 7]".
inline std::string list_str(const int32_t* values, int64_t n) {
  std::ostringstream s;
  s << "[";
  for (int64_t i = 0; i < n; ++i) s << (i ? ", " : "") << values[i];
  s << "]";
  return s.str();
}

// check_tensor of _rules.py, in its order: the shape (ValueError), then the dtype (TypeError),
// then the device (ValueError).
inline void check_shape(const at::Tensor& t, at::IntArrayRef shape, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " must have shape ", shape_str(shape), ", got ",
                    shape_str(t.sizes()));
}

inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), op, ": ", name,
                   " must be float64, float32, float16 or bfloat16, got ", dtype_name(t.scalar_type()));
}

inline void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* op, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype_name(dtype), ", got ",
                   dtype_name(t.scalar_type()));
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name,
                              const char* like_name = "u") {
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but ", like_name,
                    " is on ", like.device());
}

// What a glue's prepare_<op> returns: the kernel's parameters plus the tensors their pointers
// refer to (contiguous copies made there), which must outlive the launch. Ops with several named
// outputs derive from it and name them (prefix attention); the others return a KernelCall.
template <typename Params>
struct KernelArgs {
  Params params{};
  std::vector<at::Tensor> owned;
};

// ... with the op's output, and the second one of two-output ops (spmm's arg, quantize's scale,
// dweight).
template <typename Params>
struct KernelCall : KernelArgs<Params> {
  at::Tensor out;
  at::Tensor out2;
};

// cu_seqlens: a 1-D int32 tensor of num_seqs + 1 >= 2 offsets on like's device, packing the
// sequences of a batch of one along L. On the CPU its values are checked too (0 first, L last,
// never decreasing), as the kernels index with them; on a GPU the Python layer checks them (one
// sync there, none here). Returns num_seqs.
inline int64_t check_cu_seqlens(const at::Tensor& cu, const at::Tensor& like, int64_t batch, int64_t length,
                                const char* op) {
  TORCH_CHECK_TYPE(cu.scalar_type() == at::kInt, op, ": cu_seqlens must be int32 (num_seqs + 1 offsets), got ",
                   dtype_name(cu.scalar_type()));
  TORCH_CHECK_VALUE(cu.dim() == 1 && cu.numel() >= 2, op,
                    ": cu_seqlens must be 1-D with at least 2 offsets (one sequence), got shape ",
                    shape_str(cu.sizes()));
  TORCH_CHECK_VALUE(cu.device() == like.device(), op, ": cu_seqlens is on ", cu.device(),
                    " but the inputs are on ", like.device());
  TORCH_CHECK_VALUE(batch == 1, op, ": cu_seqlens packs sequences along L and needs batch == 1, got batch ", batch);
  TORCH_CHECK_VALUE(length < std::numeric_limits<int32_t>::max(), op, ": cu_seqlens is int32, L = ", length,
                    " does not fit");
  if (cu.device().is_cpu()) {
    const at::Tensor offsets = cu.contiguous();
    const int32_t* c = offsets.data_ptr<int32_t>();
    const int64_t n = offsets.numel();
    TORCH_CHECK_VALUE(c[0] == 0 && c[n - 1] == length, op, ": cu_seqlens must start at 0 and end at L = ", length,
                      ", got ", list_str(c, n));
    for (int64_t i = 1; i < n; ++i)
      TORCH_CHECK_VALUE(c[i] >= c[i - 1], op, ": cu_seqlens must not decrease, got ", list_str(c, n));
  }
  return cu.numel() - 1;
}

}  // namespace scangraph
