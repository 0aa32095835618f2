// CUDA's execution model on the CPU, for tests: the unmodified kernel sources of csrc/cuda,
// compiled by the host compiler with this header force-included (-include), run one block after
// another, each CUDA thread a fiber of its own. What the hardware requires of the code is
// checked, and a breach is an error naming the kernel, block, thread and source line:
//   __syncthreads   every live thread of the block reaches the same one (exited threads count
//                   as arrived, as on the hardware);
//   warp collectives (__shfl*_sync, __syncwarp, votes, WMMA)   the calling lane is in the mask,
//                   every live lane of the mask arrives at the same kind of collective with the
//                   same mask (and width), a shuffle reads only from a lane that took part;
//   WMMA            all 32 lanes, one pointer and ldm, 32-byte aligned pointers, ldm a multiple
//                   of 16 bytes;
//   launches        block and grid sizes within the hardware's limits, no empty grid, no
//                   dynamic shared memory (none of our kernels uses it);
//   deadlock        threads that wait for each other with none able to run.
// What it cannot show: races between blocks (blocks run one at a time) and within a block
// outside the rendezvous (fibers switch only there), timing, FMA contraction (compiled with
// -ffp-contract=off), the device's exp / log ulps, and real memory behaviour (read-before-write
// of shared memory, coalescing, caches). docs/testing.md says how the tests use it.
//
// Only csrc/testing and the test build (tests/cuda_emulation.py) see this header.
#pragma once

#define SCANGRAPH_CUDA_EMULATION 1

// host_defines.h keeps a __shared__ defined before it. Static storage is what shared memory is
// to the fibers: one object seen by every thread of the running block (blocks run one after
// another, and launches are serialised).
#define __shared__ static
#define __launch_bounds__(...)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>

namespace cuda_emu {

// The running thread's coordinates (valid inside a kernel only).
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

void syncthreads(const char* file, int line);

enum class Collective : int { Shfl, ShflXor, ShflUp, ShflDown, SyncWarp, Ballot, Any, All, Wmma };

// One warp collective: the calling lane gives `value` (a shuffle's bits, a vote's predicate, a
// WMMA pointer) and `arg` (source lane, lane mask, delta, WMMA ldm) and waits until every live
// lane of `mask` has arrived. Returns the shuffled bits, the ballot, or 0.
uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int arg, int width, const char* file,
                         int line);

// Stops the launch with an error (reported by cuda_emu::launch's caller as an exception).
[[noreturn]] void fail_in_kernel(const char* file, int line, const char* what);

// Record-only mode: launches are checked and listed, not run (the launch plan).
bool recording();

using KernelBody = void (*)(const void* closure);
// Runs body(closure) once per thread of the grid; throws std::runtime_error on any breach.
void run_grid(const char* kernel_name, dim3 grid, dim3 block, size_t dynamic_shared, KernelBody body,
              const void* closure);

template <typename T> inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value,
                "warp shuffles move at most 8 bytes of a trivially copyable type");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T> inline T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

template <typename T> T shfl(const char* f, int l, unsigned mask, T v, int src, int width = 32) {
  return from_bits<T>(warp_collective(Collective::Shfl, mask, to_bits(v), src, width, f, l));
}
template <typename T> T shfl_xor(const char* f, int l, unsigned mask, T v, int lane_mask, int width = 32) {
  return from_bits<T>(warp_collective(Collective::ShflXor, mask, to_bits(v), lane_mask, width, f, l));
}
template <typename T> T shfl_up(const char* f, int l, unsigned mask, T v, unsigned delta, int width = 32) {
  return from_bits<T>(warp_collective(Collective::ShflUp, mask, to_bits(v), int(delta), width, f, l));
}
template <typename T> T shfl_down(const char* f, int l, unsigned mask, T v, unsigned delta, int width = 32) {
  return from_bits<T>(warp_collective(Collective::ShflDown, mask, to_bits(v), int(delta), width, f, l));
}
inline void syncwarp(const char* f, int l, unsigned mask = 0xffffffffu) {
  warp_collective(Collective::SyncWarp, mask, 0, 0, 32, f, l);
}
inline unsigned ballot(const char* f, int l, unsigned mask, int pred) {
  return unsigned(warp_collective(Collective::Ballot, mask, pred != 0, 0, 32, f, l));
}
inline int any(const char* f, int l, unsigned mask, int pred) {
  return int(warp_collective(Collective::Any, mask, pred != 0, 0, 32, f, l));
}
inline int all(const char* f, int l, unsigned mask, int pred) {
  return int(warp_collective(Collective::All, mask, pred != 0, 0, 32, f, l));
}

// A launch: copies the arguments into a closure that every thread runs.
template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_shared,
            Args&&... args) {
  struct Closure {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
  } closure{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  run_grid(name, grid, block, dynamic_shared,
           [](const void* c) {
             const Closure& self = *static_cast<const Closure*>(c);
             std::apply(self.kernel, self.params);
           },
           &closure);
}

}  // namespace cuda_emu

#define threadIdx (::cuda_emu::thread_idx())
#define blockIdx (::cuda_emu::block_idx())
#define blockDim (::cuda_emu::block_dim())
#define gridDim (::cuda_emu::grid_dim())

#define __syncthreads() ::cuda_emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::cuda_emu::syncwarp(__FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_sync(...) ::cuda_emu::shfl(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) ::cuda_emu::shfl_xor(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) ::cuda_emu::shfl_up(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::cuda_emu::shfl_down(__FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(...) ::cuda_emu::ballot(__FILE__, __LINE__, __VA_ARGS__)
#define __any_sync(...) ::cuda_emu::any(__FILE__, __LINE__, __VA_ARGS__)
#define __all_sync(...) ::cuda_emu::all(__FILE__, __LINE__, __VA_ARGS__)

// Device intrinsics with host meanings. The _rn arithmetic is IEEE round-to-nearest, which
// host float arithmetic is (and -ffp-contract=off keeps it from being fused).
inline float __int_as_float(int v) { return cuda_emu::from_bits<float>(uint32_t(v)); }
inline int __float_as_int(float v) { return int(uint32_t(cuda_emu::to_bits(v))); }
inline float __uint_as_float(unsigned v) { return cuda_emu::from_bits<float>(v); }
inline unsigned __float_as_uint(float v) { return unsigned(cuda_emu::to_bits(v)); }
inline double __longlong_as_double(long long v) { return cuda_emu::from_bits<double>(uint64_t(v)); }
inline long long __double_as_longlong(double v) { return (long long)cuda_emu::to_bits(v); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(unsigned(v)); }
inline int __ffs(int v) { return __builtin_ffs(v); }
template <typename T> inline T __ldg(const T* p) { return *p; }

// ---- WMMA, per warp --------------------------------------------------------------------------
// A fragment holds its whole tile in every lane (the hardware spreads it over the lanes in an
// unspecified order, so code may only use fragment elements elementwise, which this allows).
// load / mma / store are collectives of all 32 lanes, which must pass one pointer and one ldm.
namespace nvcuda {
namespace wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
  static constexpr int num_elements = rows * cols;
  T x[num_elements];
};

namespace detail {
inline void rendezvous(const void* ptr, unsigned ldm, size_t element_bytes, const char* file, int line) {
  if (reinterpret_cast<uintptr_t>(ptr) % 32 != 0)
    ::cuda_emu::fail_in_kernel(file, line, "WMMA: the matrix pointer must be 32-byte aligned");
  if ((size_t(ldm) * element_bytes) % 16 != 0)
    ::cuda_emu::fail_in_kernel(file, line, "WMMA: ldm must be a multiple of 16 bytes");
  ::cuda_emu::warp_collective(::cuda_emu::Collective::Wmma, 0xffffffffu, reinterpret_cast<uintptr_t>(ptr),
                              int(ldm), 32, file, line);
}
template <typename Layout> constexpr bool is_row_major() { return std::is_same<Layout, row_major>::value; }
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync_at(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm, const char* file, int line) {
  detail::rendezvous(p, ldm, sizeof(T), file, line);
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = detail::is_row_major<Layout>() ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
}

template <int M, int N, int K, typename T>
void load_matrix_sync_at(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t layout,
                         const char* file, int line) {
  detail::rendezvous(p, ldm, sizeof(T), file, line);
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      f.x[r * N + c] = layout == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
}

template <int M, int N, int K, typename T>
void store_matrix_sync_at(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout,
                          const char* file, int line) {
  detail::rendezvous(p, ldm, sizeof(T), file, line);
  // Every lane holds the whole tile; lane 0 writes it (the others would write the same values).
  if (::cuda_emu::thread_idx().x % 32 != 0) return;
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (layout == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r]) = f.x[r * N + c];
}

template <typename Use, int M, int N, int K, typename T, typename Layout, typename V>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const V& v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = T(v);
}

template <int M, int N, int K, typename Ta, typename La, typename Tb, typename Lb, typename Tc>
void mma_sync_at(fragment<accumulator, M, N, K, Tc>& d, const fragment<matrix_a, M, N, K, Ta, La>& a,
                 const fragment<matrix_b, M, N, K, Tb, Lb>& b, const fragment<accumulator, M, N, K, Tc>& c,
                 const char* file, int line) {
  ::cuda_emu::warp_collective(::cuda_emu::Collective::Wmma, 0xffffffffu, 0, 0, 32, file, line);
  Tc out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      Tc acc = c.x[i * N + j];
      for (int k = 0; k < K; ++k) acc += Tc(a.x[i * K + k]) * Tc(b.x[k * N + j]);
      out[i * N + j] = acc;
    }
  for (int i = 0; i < M * N; ++i) d.x[i] = out[i];
}
}  // namespace wmma
}  // namespace nvcuda

#define load_matrix_sync(...) load_matrix_sync_at(__VA_ARGS__, __FILE__, __LINE__)
#define store_matrix_sync(...) store_matrix_sync_at(__VA_ARGS__, __FILE__, __LINE__)
#define mma_sync(...) mma_sync_at(__VA_ARGS__, __FILE__, __LINE__)
