// CPU kernels of the selective scan (Mamba's S6 recurrence, docs/selective_scan.md): forward,
// backward and the one-step state update.
//
// The state of one (batch, channel) is a short vector over N held in 32-byte vectors (8 floats
// or 4 doubles); exp is computed once per (position, state) with a vectorised exp2 polynomial.
// Work is split over (batch, channel block), and positions are walked in chunks of kScanChunk:
// varying B / C of a chunk are transposed once to (position, N) and reused by every channel of
// the block. The backward walks the chunks in reverse, recomputing each chunk's states from its
// checkpoint, so it keeps no (batch, dim, L, N) tensor; its reductions over channels and batch
// go through fixed partitions (scan_partitions) and run in a fixed order: no atomics, the same
// bits for any thread count.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu/isa.h"
#include "glue/selective_scan_args.h"

namespace scangraph {
namespace {

#if !defined(__GNUC__)
#error "csrc/cpu/selective_scan.cpp uses GCC / Clang vector extensions"
#endif


// The kernels, compiled for the baseline ISA, for AVX2 + FMA and for AVX-512 (chosen at run
// time). AVX-512 holds 16 fp32 states in one register: N = 16, Mamba's default, is one vector.
#define SCANGRAPH_VEC_BYTES 32
namespace baseline {
#include "selective_scan_body.inc"
}  // namespace baseline
#if SCANGRAPH_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "selective_scan_body.inc"
}  // namespace avx2
#pragma GCC pop_options
#undef SCANGRAPH_VEC_BYTES
#define SCANGRAPH_VEC_BYTES 64
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx2,fma")
namespace avx512 {
#include "selective_scan_body.inc"
}  // namespace avx512
#pragma GCC pop_options
#undef SCANGRAPH_VEC_BYTES

// 16-lane vectors pad N up to a multiple of 16; below 9 states that would be over half padding,
// and the 8-lane AVX2 kernels do less work.
bool use_avx512(const SelectiveScanParams& p) { return p.dstate > 8 && cpu::has_avx512_dq(); }
#endif

std::tuple<Tensor, Tensor, Tensor> selective_scan_cpu(
    const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
    const std::optional<Tensor>& D, const std::optional<Tensor>& z, const std::optional<Tensor>& delta_bias,
    bool delta_softplus, const std::optional<Tensor>& initial_state, const std::optional<Tensor>& cu_seqlens,
    bool reverse) {
  ScanForwardCall call =
      prepare_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens, reverse);
  const SelectiveScanParams& p = call.in.params;
  dispatch_float(u.scalar_type(), "selective_scan_cpu", [&](auto t) {
    using scalar_t = element_t<decltype(t)>;
#if SCANGRAPH_X86
    if (use_avx512(p)) return avx512::scan_forward<scalar_t>(p);
    if (cpu::has_avx2_fma()) return avx2::scan_forward<scalar_t>(p);
#endif
    baseline::scan_forward<scalar_t>(p);
  });
  return {call.out, call.last_state, call.checkpoints};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> selective_scan_backward_cpu(
    const Tensor& grad_out, const std::optional<Tensor>& grad_last_state, const Tensor& u, const Tensor& delta,
    const Tensor& A, const Tensor& B, const Tensor& C, const std::optional<Tensor>& D,
    const std::optional<Tensor>& z, const std::optional<Tensor>& delta_bias, bool delta_softplus,
    const std::optional<Tensor>& initial_state, const std::optional<Tensor>& cu_seqlens, bool reverse,
    const Tensor& checkpoints) {
  ScanBackwardCall call = prepare_selective_scan_backward(grad_out, grad_last_state, u, delta, A, B, C, D, z,
                                                          delta_bias, delta_softplus, initial_state, cu_seqlens,
                                                          reverse, checkpoints);
  const SelectiveScanBackwardParams& p = call.params;
  dispatch_float(u.scalar_type(), "selective_scan_backward_cpu", [&](auto t) {
    using scalar_t = element_t<decltype(t)>;
#if SCANGRAPH_X86
    if (use_avx512(p.fwd)) return avx512::scan_backward<scalar_t>(p);
    if (cpu::has_avx2_fma()) return avx2::scan_backward<scalar_t>(p);
#endif
    baseline::scan_backward<scalar_t>(p);
  });
  return scan_backward_results(call, A, B, C, D, delta_bias, initial_state);
}

Tensor selective_state_update_cpu(const Tensor& state, const Tensor& x, const Tensor& dt, const Tensor& A,
                                  const Tensor& B, const Tensor& C, const std::optional<Tensor>& D,
                                  const std::optional<Tensor>& z, const std::optional<Tensor>& dt_bias,
                                  bool dt_softplus) {
  StateUpdateCall call = prepare_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus);
  dispatch_float(x.scalar_type(), "selective_state_update_cpu",
                 [&](auto t) { baseline::state_update<element_t<decltype(t)>>(call.params); });
  if (call.copy_back) copy_into(state, call.state_acc);
  return call.out;
}

}  // namespace

SCANGRAPH_CPU_IMPLS(m) {
  SCANGRAPH_IMPL(m, "selective_scan", &selective_scan_cpu);
  SCANGRAPH_IMPL(m, "selective_scan_backward", &selective_scan_backward_cpu);
  SCANGRAPH_IMPL(m, "selective_state_update", &selective_state_update_cpu);
}

}  // namespace scangraph
