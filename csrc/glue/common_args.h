// Rules and checks that every family's glue shares, written once: the dtype the kernels
// accumulate in, the checks of a tensor argument, and the packed-sequence offsets (cu_seqlens)
// of the scans. Their Python twins are in python/scangraph/ops/_rules.py: where both layers
// check (Python before the Triton ops, which have no glue; C++ before the kernels, for callers
// of the raw ops), the same exception type carries the same message (tests/test_bad_input.py).
#pragma once
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "glue/torch_api.h"

namespace scangraph {

// The kernels accumulate in float32, or in float64 for float64 inputs (opmath_dtype in Python).
inline ScalarType opmath_type(ScalarType t) {
  return t == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

// The kernels' float dtypes: float64, float32, float16, bfloat16 (FLOAT_DTYPES in Python).
inline bool is_float_dtype(ScalarType t) {
  return t == ScalarType::Double || t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16;
}

// A dtype as the messages name it, torch's Python name without "torch.": "float32".
inline std::string dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Double: return "float64";
    case ScalarType::Float: return "float32";
    case ScalarType::Half: return "float16";
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::Long: return "int64";
    case ScalarType::Int: return "int32";
    case ScalarType::Short: return "int16";
    case ScalarType::Char: return "int8";
    case ScalarType::Byte: return "uint8";
    case ScalarType::Bool: return "bool";
    case ScalarType::ComplexFloat: return "complex64";
    case ScalarType::ComplexDouble: return "complex128";
    default: return scalar_type_name(t);
  }
}

// A shape as Python prints a tuple: "(2, 3)", "(5,)", "()".
inline std::string shape_str(IntList sizes) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < sizes.size(); ++i) s << (i ? ", " : "") << sizes[i];
  s << (sizes.size() == 1 ? ",)" : ")");
  return s.str();
}

// Values as Python prints a list: "[0, 3, 7]".
template <typename T>
inline std::string list_str(const T* values, int64_t n) {
  std::ostringstream s;
  s << "[";
  for (int64_t i = 0; i < n; ++i) s << (i ? ", " : "") << values[i];
  s << "]";
  return s.str();
}

// Sizes as torch's C++ messages print them, which is the same: "[2, 3]".
inline std::string sizes_str(IntList sizes) { return list_str(sizes.data(), int64_t(sizes.size())); }

// check_tensor of _rules.py, in its order: the shape (ValueError), then the dtype (TypeError),
// then the device (ValueError).
inline void check_shape(const Tensor& t, IntList shape, const char* op, const char* name) {
  SCANGRAPH_CHECK_VALUE(t.sizes().equals(shape), op, ": ", name, " must have shape ", shape_str(shape), ", got ",
                        shape_str(t.sizes()));
}

inline void check_float(const Tensor& t, const char* op, const char* name) {
  SCANGRAPH_CHECK_TYPE(is_float_dtype(t.scalar_type()), op, ": ", name,
                       " must be float64, float32, float16 or bfloat16, got ", dtype_name(t.scalar_type()));
}

inline void check_dtype(const Tensor& t, ScalarType dtype, const char* op, const char* name) {
  SCANGRAPH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype_name(dtype), ", got ",
                       dtype_name(t.scalar_type()));
}

inline void check_same_device(const Tensor& t, const Tensor& like, const char* op, const char* name,
                              const char* like_name = "u") {
  SCANGRAPH_CHECK_VALUE(t.device() == like.device(), op, ": ", name, " is on ", device_name(t), " but ", like_name,
                        " is on ", device_name(like));
}

// What a glue's prepare_<op> returns: the kernel's parameters plus the tensors their pointers
// refer to (contiguous copies made there), which must outlive the launch. Ops with several named
// outputs derive from it and name them (prefix attention); the others return a KernelCall.
template <typename Params>
struct KernelArgs {
  Params params{};
  std::vector<Tensor> owned;
};

// ... with the op's output, and the second one of two-output ops (spmm's arg, quantize's scale,
// dweight).
template <typename Params>
struct KernelCall : KernelArgs<Params> {
  Tensor out;
  Tensor out2;
};

// cu_seqlens: a 1-D int32 tensor of num_seqs + 1 >= 2 offsets on like's device, packing the
// sequences of a batch of one along L. On the CPU its values are checked too (0 first, L last,
// never decreasing), as the kernels index with them; on a GPU the Python layer checks them (one
// sync there, none here). Returns num_seqs.
inline int64_t check_cu_seqlens(const Tensor& cu, const Tensor& like, int64_t batch, int64_t length,
                                const char* op) {
  SCANGRAPH_CHECK_TYPE(cu.scalar_type() == ScalarType::Int, op,
                       ": cu_seqlens must be int32 (num_seqs + 1 offsets), got ", dtype_name(cu.scalar_type()));
  SCANGRAPH_CHECK_VALUE(cu.dim() == 1 && cu.numel() >= 2, op,
                        ": cu_seqlens must be 1-D with at least 2 offsets (one sequence), got shape ",
                        shape_str(cu.sizes()));
  SCANGRAPH_CHECK_VALUE(cu.device() == like.device(), op, ": cu_seqlens is on ", device_name(cu),
                            " but the inputs are on ", device_name(like));
  SCANGRAPH_CHECK_VALUE(batch == 1, op, ": cu_seqlens packs sequences along L and needs batch == 1, got batch ", batch);
  SCANGRAPH_CHECK_VALUE(length < std::numeric_limits<int32_t>::max(), op, ": cu_seqlens is int32, L = ", length,
                        " does not fit");
  if (cu.is_cpu()) {
    const Tensor offsets = as_contiguous(cu);
    const int32_t* c = offsets.const_data_ptr<int32_t>();
    const int64_t n = offsets.numel();
    SCANGRAPH_CHECK_VALUE(c[0] == 0 && c[n - 1] == length, op, ": cu_seqlens must start at 0 and end at L = ", length,
                          ", got ", list_str(c, n));
    for (int64_t i = 1; i < n; ++i)
      SCANGRAPH_CHECK_VALUE(c[i] >= c[i - 1], op, ": cu_seqlens must not decrease, got ", list_str(c, n));
  }
  return cu.numel() - 1;
}

}  // namespace scangraph
