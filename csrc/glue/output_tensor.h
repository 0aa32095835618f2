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

// A contiguous output of `shape` in `dtype` on the device of `like`, with huge pages when large
// and on the CPU.
inline Tensor empty_output(const std::vector<int64_t>& shape, ScalarType dtype, const Tensor& like) {
  Tensor out = empty_tensor(shape, dtype, like);
#ifdef SCANGRAPH_CUDA_EMULATION
  // The emulated CUDA kernels (tests only) must write every element they own: NaN, or 0xA5 bytes
  // for integers, makes an element that no thread wrote fail the tests. Recording a launch plan,
  // nothing runs: zeros keep data-dependent sizes (common neighbours) at zero.
  if (cuda_emu::recording()) {
    fill_in_place(out, 0.0);
  } else if (is_floating_type(dtype)) {
    fill_in_place(out, std::numeric_limits<double>::quiet_NaN());
  } else if (out.numel() > 0) {
    std::memset(out.mutable_data_ptr(), 0xA5, size_t(out.numel()) * out.element_size());
  }
#endif
  if (out.is_cpu()) advise_huge_pages(out.mutable_data_ptr(), out.numel() * int64_t(out.element_size()));
  return out;
}

}  // namespace scangraph
