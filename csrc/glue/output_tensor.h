// Allocation of the ops' outputs and scratch: every tensor a kernel writes comes from here.
#pragma once
#include <cstring>
#include <limits>
#include <vector>

#include "glue/torch_api.h"

#ifdef SCANGRAPH_CUDA_EMULATION
namespace cuda_emu {
bool recording();  // csrc/testing/cuda_emulation.cpp
}
#endif

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <cstdint>

namespace scangraph {

// CPU outputs at least this large are backed by transparent huge pages where the kernel allows
// them. Allocations this size are fresh mappings on every call (glibc mmaps them), and faulting
// them in 4 KiB pages cost more than the kernels that fill them (37.6 MB: 15-18 ms against
// 3-4 ms with 2 MiB pages, measured on the development VM).
constexpr int64_t kHugePageOutputBytes = int64_t(8) << 20;

// Where the kernel allows them, transparent huge pages back the 2 MiB-aligned interior of a large
// CPU output, advised before anything touches it. Only a hint: where THP is off (or not Linux)
// nothing changes.
inline void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < kHugePageOutputBytes) return;
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = (begin + bytes) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

#ifndef SCANGRAPH_STABLE_ABI
// at::empty, with huge pages for large CPU tensors.
inline at::Tensor empty_output(at::IntArrayRef shape, const at::TensorOptions& options) {
  at::Tensor out = at::empty(shape, options);
#ifdef SCANGRAPH_CUDA_EMULATION
  // The emulated CUDA kernels (tests only) must write every element they own: NaN, or 0xA5 bytes
  // for integers, makes an element that no thread wrote fail the tests. Recording a launch plan,
  // nothing runs: zeros keep data-dependent sizes (common neighbours) at zero.
  if (cuda_emu::recording()) {
    out.zero_();
  } else if (out.is_floating_point()) {
    out.fill_(std::numeric_limits<double>::quiet_NaN());
  } else if (out.numel() > 0) {
    std::memset(out.data_ptr(), 0xA5, out.nbytes());
  }
#endif
  if (out.device().is_cpu()) advise_huge_pages(out.data_ptr(), out.numel() * int64_t(out.element_size()));
  return out;
}
#endif

// A contiguous output of `shape` in `dtype` on the device of `like`, on either torch API.
inline Tensor empty_output(const std::vector<int64_t>& shape, ScalarType dtype, const Tensor& like) {
#ifdef SCANGRAPH_STABLE_ABI
  Tensor out = empty_tensor(shape, dtype, like);
  if (out.is_cpu()) advise_huge_pages(out.mutable_data_ptr(), out.numel() * int64_t(out.element_size()));
  return out;
#else
  return empty_output(shape, like.options().dtype(dtype));
#endif
}

}  // namespace scangraph
