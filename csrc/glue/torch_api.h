// The one place where the glue, the CPU kernels and the schema registration name torch. By default
// it is torch's regular C++ API (ATen). With SCANGRAPH_STABLE_ABI it is the LibTorch stable ABI
// of torch >= 2.10 (torch::stable::Tensor, the C shims): a library built that way loads under
// every torch from 2.10 on (issue 23, docs/packaging.md). The schemas, every CPU op and the CUDA
// glue build both ways from the same sources (`SCANGRAPH_STABLE_ABI=1` in setup.py builds the
// stable library); what the CUDA glue needs of the device is in cuda_context.h.
//
// What differs between the two, and is bridged here:
// - the tensor, dtype, shape and device types, and the few tensor functions the glue uses;
// - the checks: TORCH_CHECK_VALUE / _TYPE raise c10 errors, which the stable ABI cannot name.
//   There, std::invalid_argument reaches Python as ValueError (pybind11's translation) and
//   std::runtime_error as RuntimeError; no std exception becomes a TypeError, so the type checks
//   raise RuntimeError there. The public functions check dtypes in Python first
//   (ops/_rules.py), so only callers of the raw ops see the difference.
// - the thread pool and the half-precision element types of the kernels. A kernel raises after
//   a parallel region, not inside it: under torch 2.11 an exception thrown inside the body of
//   torch::stable::parallel_for loses its message in the shim.
#pragma once

#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#ifdef SCANGRAPH_STABLE_ABI
#include <torch/csrc/stable/device.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <array>
#include <stdexcept>
#else
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#endif

namespace scangraph {

#ifdef SCANGRAPH_STABLE_ABI
using Tensor = torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
using IntList = torch::headeronly::IntHeaderOnlyArrayRef;
using Half = torch::headeronly::Half;
using BFloat16 = torch::headeronly::BFloat16;
using StringArg = std::string;  // a `str` argument as the stable ABI unboxes it

inline Tensor as_contiguous(const Tensor& t) { return torch::stable::contiguous(t); }
inline Tensor unsqueezed(const Tensor& t, int64_t dim) { return torch::stable::unsqueeze(t, dim); }
inline Tensor empty_tensor(const std::vector<int64_t>& shape, ScalarType dtype, const Tensor& like) {
  return torch::stable::new_empty(like, IntList(shape), dtype);
}
inline Tensor zeros_tensor(const std::vector<int64_t>& shape, ScalarType dtype, const Tensor& like) {
  return torch::stable::new_zeros(like, IntList(shape), dtype);
}
inline void fill_in_place(const Tensor& t, double value) { torch::stable::fill_(t, value); }
inline Tensor converted(const Tensor& t, ScalarType dtype) { return torch::stable::to(t, dtype); }
inline Tensor reshaped(const Tensor& t, IntList shape) { return torch::stable::reshape(t, shape); }
inline Tensor squeezed(const Tensor& t, int64_t dim) { return torch::stable::squeeze(t, dim); }
inline Tensor summed(const Tensor& t, int64_t dim) {
  const int64_t dims[1] = {dim};
  return torch::stable::sum(t, IntList(dims, 1));
}
inline void copy_into(const Tensor& dst, const Tensor& src) {
  Tensor target = dst;
  torch::stable::copy_(target, src);
}
// t.cumsum_(0) of a 1-d tensor, through the dispatcher (the stable ABI has no wrapper for it).
inline void prefix_sum_in_place(const Tensor& t) {
  std::array<StableIValue, 3> stack{torch::stable::detail::from(t), torch::stable::detail::from(int64_t(0)),
                                    torch::stable::detail::from(std::optional<ScalarType>())};
  STABLE_TORCH_ERROR_CODE_CHECK(torch_call_dispatcher("aten::cumsum_", "", stack.data(), TORCH_ABI_VERSION));
  (void)torch::stable::detail::to<Tensor>(stack[0]);  // releases the returned reference
}
inline Tensor narrowed(const Tensor& t, int64_t dim, int64_t start, int64_t length) {
  Tensor whole = t;  // narrow takes a non-const reference
  return torch::stable::narrow(whole, dim, start, length);
}
// Element i of a 1-d int64 tensor, on the host (a device-to-host copy for a device tensor).
inline int64_t read_int64(const Tensor& t, int64_t i) {
  const Tensor one = torch::stable::to(narrowed(t, 0, i, 1), torch::stable::Device(torch::headeronly::DeviceType::CPU));
  return *static_cast<const int64_t*>(one.const_data_ptr());
}
inline int device_index(const Tensor& t) { return int(t.get_device_index()); }
inline const char* scalar_type_name(ScalarType t) { return torch::headeronly::toString(t); }
// at::isFloatingType: the float dtypes, float8 included.
inline bool is_floating_type(ScalarType t) {
  switch (t) {
    case ScalarType::Double: case ScalarType::Float: case ScalarType::Half: case ScalarType::BFloat16:
    case ScalarType::Float8_e5m2: case ScalarType::Float8_e4m3fn: case ScalarType::Float8_e5m2fnuz:
    case ScalarType::Float8_e4m3fnuz: case ScalarType::Float8_e8m0fnu: return true;
    default: return false;
  }
}
inline bool is_complex_type(ScalarType t) {
  return t == ScalarType::ComplexHalf || t == ScalarType::ComplexFloat || t == ScalarType::ComplexDouble;
}
// A device as torch prints it: "cpu", "cuda:0".
inline std::string device_name(const Tensor& t) {
  if (t.is_cpu()) return "cpu";
  std::string type = t.is_cuda() ? "cuda" : "device";
  return t.get_device_index() < 0 ? type : type + ":" + std::to_string(int(t.get_device_index()));
}
template <typename F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  torch::stable::parallel_for(begin, end, grain, f);
}
inline int64_t num_threads() { return int64_t(torch::stable::get_num_threads()); }
#else
using Tensor = at::Tensor;
using ScalarType = at::ScalarType;
using IntList = at::IntArrayRef;
using Half = c10::Half;
using BFloat16 = c10::BFloat16;
using StringArg = c10::string_view;

inline Tensor as_contiguous(const Tensor& t) { return t.contiguous(); }
inline Tensor unsqueezed(const Tensor& t, int64_t dim) { return t.unsqueeze(dim); }
inline Tensor empty_tensor(const std::vector<int64_t>& shape, ScalarType dtype, const Tensor& like) {
  return at::empty(shape, like.options().dtype(dtype));
}
inline Tensor zeros_tensor(const std::vector<int64_t>& shape, ScalarType dtype, const Tensor& like) {
  return at::zeros(shape, like.options().dtype(dtype));
}
inline void fill_in_place(const Tensor& t, double value) { const_cast<Tensor&>(t).fill_(value); }
inline Tensor converted(const Tensor& t, ScalarType dtype) { return t.to(dtype); }
inline Tensor reshaped(const Tensor& t, IntList shape) { return t.reshape(shape); }
inline Tensor squeezed(const Tensor& t, int64_t dim) { return t.squeeze(dim); }
inline Tensor summed(const Tensor& t, int64_t dim) { return t.sum(dim); }
inline void copy_into(const Tensor& dst, const Tensor& src) { const_cast<Tensor&>(dst).copy_(src); }
inline Tensor narrowed(const Tensor& t, int64_t dim, int64_t start, int64_t length) {
  return t.narrow(dim, start, length);
}
inline void prefix_sum_in_place(const Tensor& t) { const_cast<Tensor&>(t).cumsum_(0); }
inline int64_t read_int64(const Tensor& t, int64_t i) { return t.select(0, i).item<int64_t>(); }
inline int device_index(const Tensor& t) { return int(t.get_device()); }
inline const char* scalar_type_name(ScalarType t) { return c10::toString(t); }
inline bool is_floating_type(ScalarType t) { return at::isFloatingType(t); }
inline bool is_complex_type(ScalarType t) { return at::isComplexType(t); }
inline std::string device_name(const Tensor& t) { return t.device().str(); }
template <typename F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  at::parallel_for(begin, end, grain, f);
}
inline int64_t num_threads() { return int64_t(at::get_num_threads()); }
#endif

// A message from its parts, as TORCH_CHECK joins them (operator<< of each).
template <typename... Parts>
inline std::string message(const Parts&... parts) {
  std::ostringstream s;
  ((s << parts), ...);
  return s.str();
}

// The kernels accumulate in float32, or in float64 for float64 inputs (at::opmath_type).
template <typename T>
using opmath_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Carries an element type into a generic lambda: [&](auto t) { f<element_t<decltype(t)>>(p); }.
template <typename T>
struct ElementType {
  using type = T;
};
template <typename Tag>
using element_t = typename Tag::type;

}  // namespace scangraph

// SCANGRAPH_CHECK(cond, parts...): RuntimeError; _VALUE: ValueError; _TYPE: TypeError on the
// regular API and RuntimeError on the stable ABI (above). The message is the parts joined.
#ifdef SCANGRAPH_STABLE_ABI
#define SCANGRAPH_THROW_IF_NOT(cond, exception, ...)                   \
  do {                                                                  \
    if (!(cond)) throw exception(::scangraph::message(__VA_ARGS__));    \
  } while (0)
#define SCANGRAPH_CHECK(cond, ...) SCANGRAPH_THROW_IF_NOT(cond, std::runtime_error, __VA_ARGS__)
#define SCANGRAPH_CHECK_VALUE(cond, ...) SCANGRAPH_THROW_IF_NOT(cond, std::invalid_argument, __VA_ARGS__)
#define SCANGRAPH_CHECK_TYPE(cond, ...) SCANGRAPH_THROW_IF_NOT(cond, std::runtime_error, __VA_ARGS__)
#else
#define SCANGRAPH_CHECK(cond, ...) TORCH_CHECK(cond, __VA_ARGS__)
#define SCANGRAPH_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, __VA_ARGS__)
#define SCANGRAPH_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, __VA_ARGS__)
#endif

// The op library, defined: SCANGRAPH_LIBRARY(m) { m.def(schema); } (registration.cpp), and
// extended by another library: SCANGRAPH_LIBRARY_FRAGMENT(m). A file's
// CPU kernels, registered: SCANGRAPH_CPU_IMPLS(m) { SCANGRAPH_IMPL(m, "op", &op_cpu); }. On the
// stable ABI a kernel is called through torch's boxed convention (TORCH_BOX).
// SCANGRAPH_TORCH_ABI names the API in the built library (scangraph._C.TORCH_ABI).
#ifdef SCANGRAPH_STABLE_ABI
#define SCANGRAPH_TORCH_ABI "stable"
#define SCANGRAPH_LIBRARY(m) STABLE_TORCH_LIBRARY(scangraph, m)
#define SCANGRAPH_LIBRARY_FRAGMENT(m) STABLE_TORCH_LIBRARY_FRAGMENT(scangraph, m)
#define SCANGRAPH_CPU_IMPLS(m) STABLE_TORCH_LIBRARY_IMPL(scangraph, CPU, m)
#define SCANGRAPH_IMPL(m, name, kernel) m.impl(name, TORCH_BOX(kernel))
#else
#define SCANGRAPH_TORCH_ABI "regular"
#define SCANGRAPH_LIBRARY(m) TORCH_LIBRARY(scangraph, m)
#define SCANGRAPH_LIBRARY_FRAGMENT(m) TORCH_LIBRARY_FRAGMENT(scangraph, m)
#define SCANGRAPH_CPU_IMPLS(m) TORCH_LIBRARY_IMPL(scangraph, CPU, m)
#define SCANGRAPH_IMPL(m, name, kernel) m.impl(name, kernel)
#endif

namespace scangraph {

// The CPU kernels' dtype switch (float64, float32, float16, bfloat16).
template <typename Launch>
inline void dispatch_float(ScalarType dtype, const char* op, Launch&& launch) {
  switch (dtype) {
    case ScalarType::Double: launch(ElementType<double>{}); break;
    case ScalarType::Float: launch(ElementType<float>{}); break;
    case ScalarType::Half: launch(ElementType<Half>{}); break;
    case ScalarType::BFloat16: launch(ElementType<BFloat16>{}); break;
    default: SCANGRAPH_CHECK(false, op, ": unsupported dtype ", scalar_type_name(dtype));
  }
}

}  // namespace scangraph
