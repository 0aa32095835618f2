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

// ---- the CUDA kernels' launch shape (csrc/cuda/selective_scan_kernel.cuh) -------------------
// A warp owns one (batch, channel) and one segment of the scan order, all N states, and walks the
// segment in tiles of kScanTile positions (32 lanes x 4 consecutive positions). When the
// channels alone leave the GPU short of work, the scan order is cut into segments: a summary
// pass, a short composition of the segments' maps, and the full pass from each segment's true
// state. target_warps is what fills the device: SMs x 64, the most warps an SM holds (8448 on an
// H100 / H200 of 132 SMs), so a launch is at least one full wave whatever its occupancy.
constexpr int64_t kScanTile = 128;
// Backward warps per block: consecutive channels of one group, whose varying dB / dC the block
// sums in warp order before adding them to its partial (no atomics).
constexpr int64_t kScanBlockChannels = 8;
// Partials of a varying dB / dC (batch, groups, N, L) summed at the end: at most this many, or
// as many as filling the GPU takes when batch x groups is small (their memory is then at most
// target_warps / kScanBlockChannels / tiles x (2, N, L) per (batch, group), small); a block
// walks several rounds of channels when a group has more.
constexpr int64_t kScanMaxSlabs = 16;

struct ScanCudaShape {
  int64_t segments = 1;       // segments per channel
  int64_t segment_tiles = 1;  // tiles of kScanTile positions per segment (the last may be shorter)
  int64_t slabs = 1;          // backward, varying B / C: channel slabs per group (partials)
  int64_t rounds = 1;         // backward, varying: channels each warp walks, one after another
};

inline int64_t scan_cuda_segments(int64_t warps, int64_t length, int64_t target_warps, int64_t& segment_tiles) {
  const int64_t tiles = (length + kScanTile - 1) / kScanTile;
  int64_t want = warps > 0 ? (target_warps + warps - 1) / warps : 1;
  if (want > tiles) want = tiles;
  if (want < 1) want = 1;
  segment_tiles = tiles > 0 ? (tiles + want - 1) / want : 1;
  return tiles > 0 ? (tiles + segment_tiles - 1) / segment_tiles : 1;
}

// groups: 0 for fixed B / C. The forward's warps are the batch x dim channels; the backward's,
// with varying B / C, batch x groups x slabs x kScanBlockChannels (each walking `rounds`).
inline ScanCudaShape scan_cuda_shape(bool backward, int64_t batch, int64_t dim, int64_t groups, int64_t length,
                                     int64_t target_warps) {
  ScanCudaShape s;
  int64_t warps = batch * dim;
  if (backward && groups > 0) {
    const int64_t per_group = dim / groups;
    const int64_t blocks = (per_group + kScanBlockChannels - 1) / kScanBlockChannels;
    const int64_t tiles = (length + kScanTile - 1) / kScanTile > 0 ? (length + kScanTile - 1) / kScanTile : 1;
    const int64_t per_slab = batch * groups * kScanBlockChannels * tiles;  // warps of one slab, all segments
    int64_t cap = per_slab > 0 ? (target_warps + per_slab - 1) / per_slab : 1;
    if (cap < kScanMaxSlabs) cap = kScanMaxSlabs;
    s.slabs = blocks < cap ? blocks : cap;
    if (s.slabs < 1) s.slabs = 1;
    s.rounds = (per_group + s.slabs * kScanBlockChannels - 1) / (s.slabs * kScanBlockChannels);
    if (s.rounds < 1) s.rounds = 1;
    warps = batch * groups * s.slabs * kScanBlockChannels;
  }
  s.segments = scan_cuda_segments(warps, length, target_warps, s.segment_tiles);
  return s;
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
  // CUDA only (scan_cuda_shape): segments of the scan order and their scratch, (3, batch * dim,
  // segments, N) acc: each segment's map (P, Q) from the summary pass, then its starting state.
  int64_t segments;
  int64_t segment_tiles;
  void* segment_state;
};

// Backward (docs/selective_scan.md). The forward's fields are its inputs; checkpoints is read.
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
  // CUDA only: the backward's own segments (scan_cuda_shape(true, ...)); param_partial is then
  // (batch, dim, segments, 3 N + 2), bc_partial (slabs, batch, groups, 2, N, length), and
  // segment_flow (3, batch * dim, segments, N) acc holds each segment's map of the adjoint flow
  // and the flow entering it from the right.
  ScanCudaShape shape;
  void* segment_flow;
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
