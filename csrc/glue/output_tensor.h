// Allocation of the ops' outputs and scratch: every tensor a kernel writes comes from here.
#pragma once
#include <ATen/ATen.h>

#include <cstring>
#include <limits>

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

// at::empty, and for large CPU tensors an madvise(MADV_HUGEPAGE) of the 2 MiB-aligned interior
// before anything touches it. Only a hint: where THP is off (or not Linux) nothing changes.
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
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const int64_t bytes = out.numel() * int64_t(out.element_size());
  if (out.device().is_cpu() && bytes >= kHugePageOutputBytes) {
    constexpr uintptr_t kHuge = uintptr_t(2) << 20;
    const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
    const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = (begin + bytes) & ~(kHuge - 1);
    if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#endif
  return out;
}

}  // namespace scangraph
