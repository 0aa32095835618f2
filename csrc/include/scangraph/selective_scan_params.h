// Torch-free parameter structs of the selective-scan kernels (Mamba's S6 recurrence).
//
// Per batch b, channel d and state n, in scan order s = 0..L-1 (position t = s, or L-1-s when
// reverse):
//   delta_t = softplus(delta_raw_t + delta_bias[d]) (softplus optional)
//   h_t = exp(delta_t A[d, n]) h_{t-1} + delta_t B_t[n] u_t,   y_t = sum_n C_t[n] h_t + D[d] u_t
//   out_t = y_t silu(z_t) (without z: y_t)
// B / C are fixed, (dim, N) in the accumulation type, or varying, (batch, groups, N, L) in the
// element type T, channel d using group d / (dim / groups). With cu_seqlens (batch == 1) the
// state restarts at every sequence's first position in scan order, from that sequence's
// initial state (or 0), and each sequence's final state is its last state.
//
// Layouts are contiguous (the glue copies strided inputs once). Element type T is u's: float,
// double, half or bfloat16; "acc" is float (double for double inputs): A, D, delta_bias, fixed
// B / C, states, checkpoints and every reduction.
#pragma once
#include <cstdint>

namespace scangraph {

// Scan-order positions between two checkpoints. The forward stores the state entering every
// chunk, (batch, dim, num_chunks, N) in acc; the backward recomputes one chunk at a time from it.
constexpr int64_t kScanChunk = 64;
constexpr int64_t kMaxDstate = 256;

inline int64_t scan_num_chunks(int64_t length) { return (length + kScanChunk - 1) / kScanChunk; }

// Varying B / C: their gradients sum over the channels of a group. Without float atomics the
// channels of a group are split into this many partitions, each owning one fp32 partial of
// dB / dC (batch, groups, N, L), summed in partition order at the end. It depends on the shape
// alone, so results are bitwise identical for any thread count; the partials stay within the
// size of the checkpoints (partitions * groups <= dim / kScanChunk unless that is below 1).
inline int64_t scan_partitions(int64_t channels_per_group) {
  int64_t p = channels_per_group / kScanChunk;
  if (p < 1) p = 1;
  if (p > 16) p = 16;
  return p;
}

struct SelectiveScanParams {
  int64_t batch, dim, length, dstate;
  int64_t groups;           // varying B / C; 0 when B / C are fixed (dim, N)
  int64_t num_chunks;       // scan_num_chunks(length)
  int64_t num_sequences;    // rows of initial_state / last_state: batch, or packed sequences
  bool delta_softplus;
  bool reverse;
  const void* u;            // (batch, dim, length) T
  const void* delta;        // (batch, dim, length) T
  const void* z;            // (batch, dim, length) T, or nullptr
  const void* A;            // (dim, N) acc
  const void* B;            // (dim, N) acc, or (batch, groups, N, length) T
  const void* C;            // like B
  const void* D;            // (dim,) acc, or nullptr
  const void* delta_bias;   // (dim,) acc, or nullptr
  const void* initial_state;   // (num_sequences, dim, N) acc, or nullptr (zeros)
  const int32_t* cu_seqlens;   // (num_sequences + 1,) offsets into length, or nullptr
  void* out;                // (batch, dim, length) T
  void* last_state;         // (num_sequences, dim, N) acc
  void* checkpoints;        // (batch, dim, num_chunks, N) acc: the state entering each chunk
};

// Backward (ALGORITHMS.md section 1). The forward's fields are its inputs; checkpoints is read.
// Gradients: du, ddelta (w.r.t. the raw delta), dz in T; dA, dD, ddelta_bias, dinitial_state
// and fixed dB / dC in acc; varying dB / dC in T. Reductions run in a fixed order through the
// partial buffers below (no atomics), which the caller allocates in acc:
//   param_partial: (batch, dim, 3 * N + 2): per (b, d) partial sums: [0, N) dA[d, :],
//                  [N, 2N) dB[d, :] and [2N, 3N) dC[d, :] (fixed B / C; unused when varying),
//                  3N dD[d], 3N + 1 ddelta_bias[d]; the kernel sums them over b in order.
//   bc_partial:    varying only: (partitions, batch, groups, 2, N, length), partition =
//                  scan_partitions(dim / groups); fixed: nullptr.
struct SelectiveScanBackwardParams {
  SelectiveScanParams fwd;  // fwd.out, fwd.last_state unused; fwd.checkpoints read
  const void* grad_out;         // (batch, dim, length) T
  const void* grad_last_state;  // (num_sequences, dim, N) acc, or nullptr
  void* du;
  void* ddelta;
  void* dz;                 // nullptr without z
  void* dA;                 // (dim, N) acc
  void* dB;                 // (dim, N) acc, or (batch, groups, N, length) T
  void* dC;
  void* dD;                 // (dim,) acc, or nullptr without D
  void* ddelta_bias;        // (dim,) acc, or nullptr without delta_bias
  void* dinitial_state;     // (num_sequences, dim, N) acc, or nullptr without initial_state
  void* param_partial;
  void* bc_partial;
};

// One decode step, the scan with length 1 starting from `state` (updated in place):
// x, dt, z, out: (batch, dim) T; B, C: (batch, groups, N) T; state: (batch, dim, N) acc.
struct SelectiveStateUpdateParams {
  int64_t batch, dim, dstate, groups;
  bool dt_softplus;
  void* state;
  const void* x;
  const void* dt;
  const void* A;
  const void* B;
  const void* C;
  const void* D;            // or nullptr
  const void* z;            // or nullptr
  const void* dt_bias;      // or nullptr
  void* out;
};

}  // namespace scangraph
