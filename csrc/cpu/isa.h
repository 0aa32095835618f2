// The CPU kernels' instruction sets, in one place: the always-inline macro, the gate of the
// x86 paths, and what the CPU running this process supports, read once per feature. The
// kernels compiled for AVX2 / AVX-512 / AMX (per-function targets, no -march flag) run only
// where these say so. Off x86-64 or without GCC / Clang builtins every answer is false,
// matching the files that then compile no such paths.
#pragma once

// SCANGRAPH_X86: the x86 paths (per-function targets and intrinsics) are compiled in.
// -DSCANGRAPH_X86=0 leaves the portable code alone, as on ARM: CI compiles it so (.ci/run).
#ifndef SCANGRAPH_X86
#if defined(__GNUC__) && defined(__x86_64__)
#define SCANGRAPH_X86 1
#else
#define SCANGRAPH_X86 0
#endif
#endif

// Forced inlining, so that a loop body compiled into a per-ISA caller vectorises for that ISA.
#if defined(__GNUC__)
#define SCANGRAPH_INLINE inline __attribute__((always_inline))
#else
#define SCANGRAPH_INLINE inline
#endif

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace scangraph {
namespace cpu {

#if defined(__GNUC__) && defined(__x86_64__)
inline bool has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
inline bool has_avx2_fma() {
  static const bool has = has_avx2() && __builtin_cpu_supports("fma");
  return has;
}
inline bool has_avx512f() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}
// F + DQ with AVX2 + FMA: what the selective scan's 16-lane build is compiled for.
inline bool has_avx512_dq() {
  static const bool has = has_avx2_fma() && has_avx512f() && __builtin_cpu_supports("avx512dq");
  return has;
}
// F + BW + VNNI: qlinear's vpdpbusd path.
inline bool has_avx512_vnni() {
  static const bool has = has_avx512f() && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vnni");
  return has;
}
#if defined(__linux__)
// AMX-INT8 tiles: the CPU has them and Linux granted this process the tile data state, which a
// process must request (arch_prctl ARCH_REQ_XCOMP_PERM) before its first tile instruction; a
// kernel or hypervisor that refuses leaves AMX unused.
inline bool has_amx_int8() {
  static const bool has = [] {
    if (!has_avx512_vnni() || !__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-int8"))
      return false;
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return has;
}
#else
inline bool has_amx_int8() { return false; }
#endif
#else
inline bool has_amx_int8() { return false; }
inline bool has_avx2() { return false; }
inline bool has_avx2_fma() { return false; }
inline bool has_avx512f() { return false; }
inline bool has_avx512_dq() { return false; }
inline bool has_avx512_vnni() { return false; }
#endif

}  // namespace cpu
}  // namespace scangraph
