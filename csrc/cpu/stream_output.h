// When a CPU kernel writes its output with streaming (non-temporal) stores.
#pragma once

#include <cstdint>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace scangraph {

// Outputs at least this large bypass the cache: a write-allocate store first reads every line it
// overwrites (twice the memory traffic), and beyond a last-level cache's size the lines would be
// evicted unread before the consumer gets to them anyway. Smaller outputs stay cached for it.
constexpr int64_t kStreamOutputBytes = int64_t(16) << 20;

// True when rows x F elements at out are large enough to stream and every 8-element group of a
// row starts 32-byte aligned (F % 8 == 0 and an aligned base), as the streaming stores need.
inline bool stream_output(const void* out, int64_t rows, int64_t F, int64_t element_size) {
#if defined(__x86_64__)
  return F % 8 == 0 && element_size == 4 && reinterpret_cast<uintptr_t>(out) % 32 == 0 &&
         rows * F * element_size >= kStreamOutputBytes;
#else
  return false;  // the fences below are x86's
#endif
}

#if defined(__x86_64__)
// dst[0..8) = src[0..8) * scale with streaming stores (SSE: compiled into any ISA's clone).
inline void stream_store8(float* dst, const float* src, float scale) {
  const __m128 s = _mm_set1_ps(scale);
  _mm_stream_ps(dst, _mm_mul_ps(_mm_loadu_ps(src), s));
  _mm_stream_ps(dst + 4, _mm_mul_ps(_mm_loadu_ps(src + 4), s));
}
#endif

// dst[0..n) = src[0..n) with streaming stores where stream_output allowed them (n % 8 == 0, dst
// 32-byte aligned); a plain copy elsewhere.
inline void stream_copy(float* dst, const float* src, int64_t n) {
#if defined(__x86_64__)
  for (int64_t i = 0; i < n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
#else
  std::memcpy(dst, src, n * sizeof(float));
#endif
}

// Drains a thread's streaming stores, which are weakly ordered, before it hands its rows over.
inline void stream_fence() {
#if defined(__x86_64__)
  __builtin_ia32_sfence();
#endif
}

}  // namespace scangraph
