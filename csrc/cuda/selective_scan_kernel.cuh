// CUDA kernels of the selective scan (Mamba's S6 recurrence, ALGORITHMS.md section 1): forward,
// backward and the one-step state update. Torch-free: they read the structs of
// scangraph/selective_scan_params.h.
//
// Layout of the work: the N states of one (batch, channel) are spread over a group of K lanes
// of one warp, K = next_pow2(ceil(N / 8)) <= 32, each lane holding up to kStatesPerLane = 8
// states in registers (lanes or slots beyond N hold zeros and are never written); a warp holds
// 32 / K channels. Positions are walked sequentially in scan order; sums over the states (y,
// and the backward's du / ddelta) are butterflies over the K lanes, a fixed pattern that leaves
// the same bits in every lane.
//
// The backward keeps no (batch, dim, L, N) tensor: it walks the kScanChunk chunks in reverse,
// recomputes each chunk's states from the forward's checkpoint into per-lane local memory and
// runs the adjoint backwards through it. Its reductions are deterministic without atomics:
// per-(b, d) parameter partials summed over b in order by a second kernel; varying dB / dC
// accumulated by one lane group per (batch, group, partition) that visits its channels in
// increasing order, the partitions' partials summed in order by a third kernel.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "numeric.cuh"
#include "scangraph/selective_scan_params.h"
#include "launch.cuh"

namespace scangraph {
// A namespace of its own: sparse_kernel.cuh defines helpers of the same names in
// scangraph::cuda, and an inline function defined twice differently would break the ODR.
namespace scan_cuda {

constexpr int kWarp = 32;
constexpr int kStatesPerLane = 8;
// 4 warps per block: the kernels are latency bound (one sequential walk per lane group), so
// small blocks spread the lane groups over more SMs when batch * dim is modest.
constexpr int kThreads = 128;
constexpr double kLog2e = 1.4426950408889634;

using numeric::Acc;
using numeric::exp2_acc;
using numeric::exp_acc;
using numeric::from_acc;
using numeric::to_acc;
__device__ __forceinline__ float log1p_acc(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_acc(double x) { return log1p(x); }

template <typename acc_t> __device__ __forceinline__ acc_t sigmoid(acc_t x) {
  return acc_t(1) / (acc_t(1) + exp_acc(-x));
}
// mamba_ssm's softplus: log1p(exp(x)), the identity above 20; its derivative there is 1.
template <typename acc_t> __device__ __forceinline__ acc_t softplus(acc_t x) {
  return x <= acc_t(20) ? log1p_acc(exp_acc(x)) : x;
}
template <typename acc_t> __device__ __forceinline__ acc_t softplus_grad(acc_t x) {
  return x <= acc_t(20) ? sigmoid(x) : acc_t(1);
}

// Lanes per channel: enough lanes of 8 states for N, rounded up to a power of two so that a
// group never straddles a warp and the butterflies stay inside it.
inline int scan_lanes(int64_t dstate) {
  const int64_t needed = (dstate + kStatesPerLane - 1) / kStatesPerLane;
  int lanes = 1;
  while (lanes < needed) lanes *= 2;
  return lanes;
}

// The K lanes of the calling thread's group: the shuffle mask names only them, so a group
// whose unit is out of range may return while the others keep shuffling.
struct LaneGroup {
  int width;
  unsigned mask;
  int rank;
};

__device__ __forceinline__ LaneGroup lane_group(int width) {
  const int lane = threadIdx.x % kWarp;
  const int first = lane & ~(width - 1);
  LaneGroup g;
  g.width = width;
  g.mask = width == kWarp ? 0xffffffffu : ((1u << width) - 1u) << first;
  g.rank = lane - first;
  return g;
}

// The group's unit: blockDim.x is a multiple of every width, so a group never spans blocks.
__device__ __forceinline__ int64_t group_unit(int width) {
  return (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / width;
}

template <typename V> __device__ __forceinline__ V group_sum(V v, const LaneGroup& g) {
  for (int offset = g.width / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(g.mask, v, offset, g.width);
  return v;
}

// This lane's slots n0 + i, i < count, of an (.., N) acc row; other slots read as 0.
template <typename acc_t>
__device__ __forceinline__ void load_states(const acc_t* row, int n0, int count, acc_t (&h)[kStatesPerLane]) {
#pragma unroll
  for (int i = 0; i < kStatesPerLane; ++i) h[i] = i < count ? row[n0 + i] : acc_t(0);
}

template <typename acc_t>
__device__ __forceinline__ void store_states(acc_t* row, int n0, int count, const acc_t (&h)[kStatesPerLane]) {
#pragma unroll
  for (int i = 0; i < kStatesPerLane; ++i) {
    if (i < count) row[n0 + i] = h[i];
  }
}

// The packed sequences of one batch row, in scan order: sequence j (0 <= j < count) covers
// the scan positions [start, end) and uses row `row` of initial_state / last_state. Without
// cu_seqlens there is one sequence, all of L, on row b. seek(s) moves to the sequence holding
// s (either direction, a few steps at a time as the walks advance); empty sequences are
// stepped over because their [start, end) holds no s.
struct Sequences {
  const int32_t* cu;
  int64_t count, length, b;
  bool reverse;
  int64_t j, start, end, row;

  __device__ __forceinline__ Sequences(const SelectiveScanParams& p, int64_t batch_row)
      : cu(p.cu_seqlens), count(p.cu_seqlens ? p.num_sequences : 1), length(p.length), b(batch_row),
        reverse(p.reverse) {
    set(0);
  }

  __device__ __forceinline__ void set(int64_t index) {
    j = index;
    if (cu == nullptr) {
      start = 0;
      end = length;
      row = b;
      return;
    }
    // Reverse scans visit position t at s = L - 1 - t, so the packed sequences come in reverse
    // order and sequence i covers s in [L - cu[i + 1], L - cu[i]).
    const int64_t i = reverse ? count - 1 - index : index;
    const int64_t lo = cu[i], hi = cu[i + 1];
    start = reverse ? length - hi : lo;
    end = reverse ? length - lo : hi;
    row = i;
  }

  __device__ __forceinline__ void seek(int64_t s) {
    while (j + 1 < count && end <= s) set(j + 1);
    while (j > 0 && start > s) set(j - 1);
  }
};

// A channel's per-dimension constants for this lane's states: A, A * log2(e) (gates are exp2
// of delta * A2, one multiply fewer than exp), fixed B / C (zeros when varying), D, bias.
template <typename acc_t>
struct ChannelConsts {
  acc_t A[kStatesPerLane], A2[kStatesPerLane], B[kStatesPerLane], C[kStatesPerLane];
  acc_t D, bias;

  __device__ __forceinline__ void load(const SelectiveScanParams& p, int64_t d, int n0, int count) {
    const int64_t N = p.dstate;
    load_states(static_cast<const acc_t*>(p.A) + d * N, n0, count, A);
#pragma unroll
    for (int i = 0; i < kStatesPerLane; ++i) A2[i] = A[i] * acc_t(kLog2e);
    if (p.groups == 0) {
      load_states(static_cast<const acc_t*>(p.B) + d * N, n0, count, B);
      load_states(static_cast<const acc_t*>(p.C) + d * N, n0, count, C);
    } else {
#pragma unroll
      for (int i = 0; i < kStatesPerLane; ++i) B[i] = C[i] = acc_t(0);
    }
    D = p.D ? static_cast<const acc_t*>(p.D)[d] : acc_t(0);
    bias = p.delta_bias ? static_cast<const acc_t*>(p.delta_bias)[d] : acc_t(0);
  }
};

// B_t / C_t of this lane's states: the fixed ones, or the varying ones at position t from
// `rows` (this lane's first row of the (N, L) block of its batch row and group).
template <typename T, typename acc_t>
__device__ __forceinline__ void bc_at(const T* rows, int64_t L, int64_t t, int count, const acc_t (&fixed)[kStatesPerLane],
                                      acc_t (&out)[kStatesPerLane]) {
  if (rows == nullptr) {
#pragma unroll
    for (int i = 0; i < kStatesPerLane; ++i) out[i] = fixed[i];
  } else {
#pragma unroll
    for (int i = 0; i < kStatesPerLane; ++i) out[i] = i < count ? to_acc(rows[i * L + t]) : acc_t(0);
  }
}

// The initial state of sequence row `row` for channel d (0 without initial_state).
template <typename acc_t>
__device__ __forceinline__ void initial_states(const SelectiveScanParams& p, int64_t row, int64_t d, int n0,
                                               int count, acc_t (&h)[kStatesPerLane]) {
  if (p.initial_state) {
    load_states(static_cast<const acc_t*>(p.initial_state) + (row * p.dim + d) * p.dstate, n0, count, h);
  } else {
#pragma unroll
    for (int i = 0; i < kStatesPerLane; ++i) h[i] = acc_t(0);
  }
}

// ---- forward ----------------------------------------------------------------------------------
// One lane group per (b, d) channel.
template <typename T>
__global__ void __launch_bounds__(kThreads) scan_forward_kernel(const SelectiveScanParams p, const int lanes) {
  using acc_t = typename Acc<T>::type;
  const int64_t unit = group_unit(lanes);
  if (unit >= p.batch * p.dim) return;
  const LaneGroup grp = lane_group(lanes);
  const int64_t b = unit / p.dim, d = unit % p.dim, N = p.dstate, L = p.length;
  const int n0 = grp.rank * kStatesPerLane;
  const int count = N - n0 >= kStatesPerLane ? kStatesPerLane : (N > n0 ? int(N - n0) : 0);

  ChannelConsts<acc_t> ch;
  ch.load(p, d, n0, count);
  const int64_t row = unit * L;  // (b, d) row of u, delta, z, out
  const T* u = static_cast<const T*>(p.u) + row;
  const T* delta = static_cast<const T*>(p.delta) + row;
  const T* z = p.z ? static_cast<const T*>(p.z) + row : nullptr;
  T* out = static_cast<T*>(p.out) + row;
  const T* Brows = nullptr;
  const T* Crows = nullptr;
  if (p.groups != 0) {
    const int64_t g = d / (p.dim / p.groups);
    const int64_t off = ((b * p.groups + g) * N + n0) * L;
    Brows = static_cast<const T*>(p.B) + off;
    Crows = static_cast<const T*>(p.C) + off;
  }
  acc_t* checkpoints = static_cast<acc_t*>(p.checkpoints) + unit * p.num_chunks * N;
  acc_t* last_state = static_cast<acc_t*>(p.last_state);

  // The carried state entering scan position 0 is 0: checkpoint 0 holds it, before the first
  // sequence's reset (the CPU kernel's convention).
  acc_t h[kStatesPerLane];
#pragma unroll
  for (int i = 0; i < kStatesPerLane; ++i) h[i] = acc_t(0);
  Sequences seq(p, b);
  for (int64_t c = 0; c < p.num_chunks; ++c) {
    store_states(checkpoints + c * N, n0, count, h);
    const int64_t s0 = c * kScanChunk;
    const int64_t s1 = s0 + kScanChunk < L ? s0 + kScanChunk : L;
    for (int64_t s = s0; s < s1; ++s) {
      seq.seek(s);
      if (s == seq.start) initial_states(p, seq.row, d, n0, count, h);
      const int64_t t = p.reverse ? L - 1 - s : s;
      const acc_t raw = to_acc(delta[t]) + ch.bias;
      const acc_t dt = p.delta_softplus ? softplus(raw) : raw;
      const acc_t ut = to_acc(u[t]);
      const acc_t dtu = dt * ut;
      acc_t Bt[kStatesPerLane], Ct[kStatesPerLane];
      bc_at(Brows, L, t, count, ch.B, Bt);
      bc_at(Crows, L, t, count, ch.C, Ct);
      acc_t y = 0;
#pragma unroll
      for (int i = 0; i < kStatesPerLane; ++i) {
        const acc_t a = exp2_acc(dt * ch.A2[i]);
        h[i] = a * h[i] + dtu * Bt[i];
        y += Ct[i] * h[i];
      }
      y = group_sum(y, grp) + ch.D * ut;
      if (z) {
        const acc_t zt = to_acc(z[t]);
        y *= zt * sigmoid(zt);
      }
      if (grp.rank == 0) out[t] = from_acc<T>(y);
      if (s == seq.end - 1) store_states(last_state + (seq.row * p.dim + d) * N, n0, count, h);
    }
  }
  // A sequence without positions ends where it started.
  for (int64_t j = 0; j < seq.count; ++j) {
    seq.set(j);
    if (seq.start == seq.end) {
      acc_t h0[kStatesPerLane];
      initial_states(p, seq.row, d, n0, count, h0);
      store_states(last_state + (seq.row * p.dim + d) * N, n0, count, h0);
    }
  }
}

// ---- backward ---------------------------------------------------------------------------------
// Varying B / C: the sum over the warp's channel slots (lanes rank, rank + K, ...) of one
// state's value, a butterfly over the whole warp, so every slot gets the same bits.
template <typename V> __device__ __forceinline__ V slot_sum(V v, int lanes) {
  for (int offset = lanes; offset < kWarp; offset *= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The backward of one (b, d) channel, by the calling lane group.
// bc: fixed B / C, nullptr. Varying, this warp's (2, N, L) slice of bc_partial, which it owns:
// the whole warp runs here in lockstep, one channel per slot of K lanes, and at every position
// the slots' dB / dC contributions are summed across the warp (slot_sum) and added to the slice
// by slot 0 with plain read-modify-writes, always by the lane owning the state. A slot with
// active == false (the partition's channels do not fill the last round) walks a valid channel
// to keep the warp in step, but contributes zeros and writes nothing.
template <typename T>
__device__ __forceinline__ void backward_channel(const SelectiveScanBackwardParams& q, const LaneGroup& grp,
                                                 int64_t b, int64_t d, typename Acc<T>::type* bc,
                                                 bool active) {
  using acc_t = typename Acc<T>::type;
  const SelectiveScanParams& p = q.fwd;
  const int64_t N = p.dstate, L = p.length, unit = b * p.dim + d;
  const int n0 = grp.rank * kStatesPerLane;
  const int count = N - n0 >= kStatesPerLane ? kStatesPerLane : (N > n0 ? int(N - n0) : 0);

  ChannelConsts<acc_t> ch;
  ch.load(p, d, n0, count);
  const int64_t row = unit * L;
  const T* u = static_cast<const T*>(p.u) + row;
  const T* delta = static_cast<const T*>(p.delta) + row;
  const T* z = p.z ? static_cast<const T*>(p.z) + row : nullptr;
  const T* grad_out = static_cast<const T*>(q.grad_out) + row;
  T* du = static_cast<T*>(q.du) + row;
  T* ddelta = static_cast<T*>(q.ddelta) + row;
  T* dz = q.dz ? static_cast<T*>(q.dz) + row : nullptr;
  const T* Brows = nullptr;
  const T* Crows = nullptr;
  acc_t* dBrows = nullptr;
  acc_t* dCrows = nullptr;
  if (p.groups != 0) {
    const int64_t g = d / (p.dim / p.groups);
    const int64_t off = ((b * p.groups + g) * N + n0) * L;
    Brows = static_cast<const T*>(p.B) + off;
    Crows = static_cast<const T*>(p.C) + off;
    dBrows = bc + n0 * L;
    dCrows = bc + (N + n0) * L;
  }
  const acc_t* checkpoints = static_cast<const acc_t*>(p.checkpoints) + unit * p.num_chunks * N;
  const acc_t* grad_last = static_cast<const acc_t*>(q.grad_last_state);
  acc_t* dinitial = static_cast<acc_t*>(q.dinitial_state);

  acc_t lam[kStatesPerLane], dA[kStatesPerLane], dB[kStatesPerLane], dC[kStatesPerLane];
#pragma unroll
  for (int i = 0; i < kStatesPerLane; ++i) lam[i] = dA[i] = dB[i] = dC[i] = acc_t(0);
  acc_t dD = 0, dbias = 0;
  // The states entering each position of the current chunk (8 * kScanChunk acc per lane:
  // local memory, cached in L1).
  acc_t hs[kScanChunk][kStatesPerLane];
  Sequences fw(p, b), bw(p, b);
  bw.set(bw.count - 1);
  for (int64_t c = p.num_chunks - 1; c >= 0; --c) {
    const int64_t s0 = c * kScanChunk;
    const int len = int(s0 + kScanChunk < L ? kScanChunk : L - s0);
    // Recompute the chunk's states from its checkpoint, as the forward did.
    acc_t h[kStatesPerLane];
    load_states(checkpoints + c * N, n0, count, h);
    for (int k = 0; k < len; ++k) {
      const int64_t s = s0 + k, t = p.reverse ? L - 1 - s : s;
      fw.seek(s);
      if (s == fw.start) initial_states(p, fw.row, d, n0, count, h);
      const acc_t raw = to_acc(delta[t]) + ch.bias;
      const acc_t dt = p.delta_softplus ? softplus(raw) : raw;
      const acc_t dtu = dt * to_acc(u[t]);
      acc_t Bt[kStatesPerLane];
      bc_at(Brows, L, t, count, ch.B, Bt);
#pragma unroll
      for (int i = 0; i < kStatesPerLane; ++i) {
        hs[k][i] = h[i];
        h[i] = exp2_acc(dt * ch.A2[i]) * h[i] + dtu * Bt[i];
      }
    }
    // The adjoint, backwards through the chunk. lam holds a_{s+1} lambda_{s+1} on entry to s.
    for (int k = len - 1; k >= 0; --k) {
      const int64_t s = s0 + k, t = p.reverse ? L - 1 - s : s;
      bw.seek(s);
      if (s == bw.end - 1) {  // the adjoint restarts at each sequence's end: no flow across
        if (grad_last) {
          load_states(grad_last + (bw.row * p.dim + d) * N, n0, count, lam);
        } else {
#pragma unroll
          for (int i = 0; i < kStatesPerLane; ++i) lam[i] = acc_t(0);
        }
      }
      const acc_t raw = to_acc(delta[t]) + ch.bias;
      const acc_t dt = p.delta_softplus ? softplus(raw) : raw;
      const acc_t ut = to_acc(u[t]);
      const acc_t dtu = dt * ut;
      const acc_t g = to_acc(grad_out[t]);
      acc_t Bt[kStatesPerLane], Ct[kStatesPerLane], a[kStatesPerLane], ha[kStatesPerLane];
      bc_at(Brows, L, t, count, ch.B, Bt);
      bc_at(Crows, L, t, count, ch.C, Ct);
#pragma unroll
      for (int i = 0; i < kStatesPerLane; ++i) {
        a[i] = exp2_acc(dt * ch.A2[i]);
        ha[i] = a[i] * hs[k][i] + dtu * Bt[i];
      }
      acc_t dy = g;
      if (z) {
        acc_t y = 0;
#pragma unroll
        for (int i = 0; i < kStatesPerLane; ++i) y += Ct[i] * ha[i];
        y = group_sum(y, grp) + ch.D * ut;
        const acc_t zt = to_acc(z[t]), sz = sigmoid(zt);
        dy = g * zt * sz;
        if (active && grp.rank == 0) dz[t] = from_acc<T>(g * y * sz * (acc_t(1) + zt * (acc_t(1) - sz)));
      }
      acc_t du_part = 0, dd_part = 0;
#pragma unroll
      for (int i = 0; i < kStatesPerLane; ++i) {
        const acc_t l = lam[i] + Ct[i] * dy;
        const acc_t lha = l * hs[k][i] * a[i];
        du_part += l * Bt[i];
        dd_part += lha * ch.A[i] + l * Bt[i] * ut;
        dA[i] += lha * dt;
        if (dBrows) {
          const acc_t vb = slot_sum(active ? l * dtu : acc_t(0), grp.width);
          const acc_t vc = slot_sum(active ? dy * ha[i] : acc_t(0), grp.width);
          if (i < count && threadIdx.x % kWarp < unsigned(grp.width)) {  // slot 0 writes
            dBrows[i * L + t] += vb;
            dCrows[i * L + t] += vc;
          }
        } else {
          dB[i] += l * dtu;
          dC[i] += dy * ha[i];
        }
        lam[i] = a[i] * l;
      }
      const acc_t du_sum = group_sum(du_part, grp);
      const acc_t ddt = group_sum(dd_part, grp);
      const acc_t draw = p.delta_softplus ? ddt * softplus_grad(raw) : ddt;
      if (active && grp.rank == 0) {
        du[t] = from_acc<T>(dt * du_sum + ch.D * dy);
        ddelta[t] = from_acc<T>(draw);
      }
      dD += ut * dy;
      dbias += draw;
      // d initial_state = a_first lambda_first: what lam now carries.
      if (s == bw.start && dinitial && active) store_states(dinitial + (bw.row * p.dim + d) * N, n0, count, lam);
    }
  }
  if (!active) return;
  // A sequence without positions: its last state is its initial state.
  if (dinitial) {
    for (int64_t j = 0; j < bw.count; ++j) {
      bw.set(j);
      if (bw.start == bw.end) {
        acc_t gl[kStatesPerLane];
        if (grad_last) {
          load_states(grad_last + (bw.row * p.dim + d) * N, n0, count, gl);
        } else {
#pragma unroll
          for (int i = 0; i < kStatesPerLane; ++i) gl[i] = acc_t(0);
        }
        store_states(dinitial + (bw.row * p.dim + d) * N, n0, count, gl);
      }
    }
  }
  // This (b, d)'s partials; dB / dC slots stay 0 when B / C vary (the glue zeroes the buffer).
  acc_t* partial = static_cast<acc_t*>(q.param_partial) + unit * (3 * N + 2);
  store_states(partial, n0, count, dA);
  store_states(partial + N, n0, count, dB);
  store_states(partial + 2 * N, n0, count, dC);
  if (grp.rank == 0) {
    partial[3 * N] = dD;
    partial[3 * N + 1] = dbias;
  }
}

// Fixed B / C: one lane group per (b, d). Varying: one warp per (b, group, partition), walking
// the partition's channels in rounds of 32 / K in increasing order; the fixed order of the sums
// into its dB / dC partial (within a round the cross-slot butterfly, then round after round)
// depends on the shape alone.
template <typename T>
__global__ void __launch_bounds__(kThreads) scan_backward_kernel(const SelectiveScanBackwardParams q,
                                                                 const int lanes, const int64_t parts) {
  using acc_t = typename Acc<T>::type;
  const SelectiveScanParams& p = q.fwd;
  const LaneGroup grp = lane_group(lanes);
  if (p.groups == 0) {
    const int64_t unit = group_unit(lanes);
    if (unit >= p.batch * p.dim) return;
    backward_channel<T>(q, grp, unit / p.dim, unit % p.dim, nullptr, true);
    return;
  }
  const int64_t unit = group_unit(kWarp);  // the whole warp leaves together: full-mask shuffles
  if (unit >= p.batch * p.groups * parts) return;
  const int64_t part = unit % parts, g = (unit / parts) % p.groups, b = unit / (parts * p.groups);
  const int64_t per_group = p.dim / p.groups;
  // The same slicing as the CPU kernel: contiguous near-equal parts of the group's channels.
  const int64_t d0 = g * per_group + part * per_group / parts;
  const int64_t d1 = g * per_group + (part + 1) * per_group / parts;
  acc_t* bc = static_cast<acc_t*>(q.bc_partial) + ((part * p.batch + b) * p.groups + g) * 2 * p.dstate * p.length;
  const int slots = kWarp / lanes, slot = int(threadIdx.x % kWarp) / lanes;
  for (int64_t first = d0; first < d1; first += slots) {
    const int64_t d = first + slot;
    backward_channel<T>(q, grp, b, d < d1 ? d : d0, bc, d < d1);
  }
}

// dA, fixed dB / dC, dD, ddelta_bias: the per-(b, d) partials summed over b in order.
// Templated on T although it only touches acc: each dtype's file then owns its instantiation
// (no kernel shared between the fp32, fp16 and bf16 modules).
template <typename T>
__global__ void __launch_bounds__(256) scan_param_reduce_kernel(const SelectiveScanBackwardParams q) {
  using acc_t = typename Acc<T>::type;
  const SelectiveScanParams& p = q.fwd;
  const int64_t N = p.dstate, width = 3 * N + 2, total = p.dim * width;
  const acc_t* partial = static_cast<const acc_t*>(q.param_partial);
  const bool varying = p.groups != 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = i / width, k = i % width;
    acc_t sum = 0;
    for (int64_t b = 0; b < p.batch; ++b) sum += partial[(b * p.dim + d) * width + k];
    if (k < N) {
      static_cast<acc_t*>(q.dA)[d * N + k] = sum;
    } else if (k < 3 * N) {
      if (!varying) static_cast<acc_t*>(k < 2 * N ? q.dB : q.dC)[d * N + k % N] = sum;
    } else if (k == 3 * N) {
      if (q.dD) static_cast<acc_t*>(q.dD)[d] = sum;
    } else if (q.ddelta_bias) {
      static_cast<acc_t*>(q.ddelta_bias)[d] = sum;
    }
  }
}

// Varying dB / dC: the partitions' partials summed in partition order, cast to T.
template <typename T>
__global__ void __launch_bounds__(256) scan_bc_reduce_kernel(const SelectiveScanBackwardParams q,
                                                             const int64_t parts) {
  using acc_t = typename Acc<T>::type;
  const SelectiveScanParams& p = q.fwd;
  const int64_t per_bg = p.dstate * p.length, slice = p.batch * p.groups * 2 * per_bg;
  const acc_t* partial = static_cast<const acc_t*>(q.bc_partial);
  T* dB = static_cast<T*>(q.dB);
  T* dC = static_cast<T*>(q.dC);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < slice; i += int64_t(gridDim.x) * blockDim.x) {
    acc_t sum = 0;
    for (int64_t k = 0; k < parts; ++k) sum += partial[k * slice + i];
    // i indexes (b, g, which, n, t); which 0 is dB, 1 is dC
    const int64_t bg = i / (2 * per_bg), which = (i / per_bg) % 2, rest = i % per_bg;
    (which == 0 ? dB : dC)[bg * per_bg + rest] = from_acc<T>(sum);
  }
}

// ---- one decode step --------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kThreads) state_update_kernel(const SelectiveStateUpdateParams q,
                                                                const int lanes) {
  using acc_t = typename Acc<T>::type;
  const int64_t unit = group_unit(lanes);
  if (unit >= q.batch * q.dim) return;
  const LaneGroup grp = lane_group(lanes);
  const int64_t b = unit / q.dim, d = unit % q.dim, N = q.dstate;
  const int64_t g = d / (q.dim / q.groups);
  const int n0 = grp.rank * kStatesPerLane;
  const int count = N - n0 >= kStatesPerLane ? kStatesPerLane : (N > n0 ? int(N - n0) : 0);
  const acc_t raw = to_acc(static_cast<const T*>(q.dt)[unit]) +
                    (q.dt_bias ? static_cast<const acc_t*>(q.dt_bias)[d] : acc_t(0));
  const acc_t dt = q.dt_softplus ? softplus(raw) : raw;
  const acc_t x = to_acc(static_cast<const T*>(q.x)[unit]);
  const acc_t* A = static_cast<const acc_t*>(q.A) + d * N + n0;
  const T* B = static_cast<const T*>(q.B) + (b * q.groups + g) * N + n0;
  const T* C = static_cast<const T*>(q.C) + (b * q.groups + g) * N + n0;
  acc_t* h = static_cast<acc_t*>(q.state) + unit * N + n0;
  // The scan's step, term for term (gate exp2(dt * (A * log2(e))), dt * x times B, the same
  // lane layout and butterfly), so that decoding token by token follows the scan closely.
  const acc_t dtx = dt * x;
  acc_t y = 0;
#pragma unroll
  for (int i = 0; i < kStatesPerLane; ++i) {
    if (i < count) {
      const acc_t hn = exp2_acc(dt * (A[i] * acc_t(kLog2e))) * h[i] + dtx * to_acc(B[i]);
      h[i] = hn;
      y += to_acc(C[i]) * hn;
    }
  }
  y = group_sum(y, grp) + (q.D ? static_cast<const acc_t*>(q.D)[d] : acc_t(0)) * x;
  if (q.z) {
    const acc_t zt = to_acc(static_cast<const T*>(q.z)[unit]);
    y *= zt * sigmoid(zt);
  }
  if (grp.rank == 0) static_cast<T*>(q.out)[unit] = from_acc<T>(y);
}

// ---- launchers --------------------------------------------------------------------------------
inline unsigned scan_blocks(int64_t threads, int64_t per_block) {
  return unsigned((threads + per_block - 1) / per_block);
}

// Grid-stride kernels: enough blocks to fill the device, capped so the grid never overflows.
inline unsigned stride_blocks(int64_t items) {
  const int64_t blocks = (items + 255) / 256;
  return unsigned(blocks < 65536 ? blocks : 65536);
}

template <typename T>
void launch_selective_scan(const SelectiveScanParams& p, cudaStream_t stream) {
  const int64_t units = p.batch * p.dim;
  if (units == 0) return;
  const int lanes = scan_lanes(p.dstate);
  launch_kernel<scan_forward_kernel<T>>(scan_blocks(units * lanes, kThreads), kThreads, 0, stream, p, lanes);
}

template <typename T>
void launch_selective_scan_backward(const SelectiveScanBackwardParams& q, cudaStream_t stream) {
  const SelectiveScanParams& p = q.fwd;
  const bool varying = p.groups != 0;
  const int64_t parts = varying ? scan_partitions(p.dim / p.groups) : 1;
  const int64_t units = varying ? p.batch * p.groups * parts : p.batch * p.dim;
  const int lanes = scan_lanes(p.dstate);
  if (units > 0) {
    const int64_t threads = units * (varying ? kWarp : lanes);
    launch_kernel<scan_backward_kernel<T>>(scan_blocks(threads, kThreads), kThreads, 0, stream, q, lanes, parts);
  }
  // Runs even for batch 0: the parameter gradients are then sums over nothing, zeros.
  const int64_t params = p.dim * (3 * p.dstate + 2);
  if (params > 0) launch_kernel<scan_param_reduce_kernel<T>>(stride_blocks(params), 256, 0, stream, q);
  if (varying) {
    const int64_t slice = p.batch * p.groups * 2 * p.dstate * p.length;
    if (slice > 0) launch_kernel<scan_bc_reduce_kernel<T>>(stride_blocks(slice), 256, 0, stream, q, parts);
  }
}

template <typename T>
void launch_selective_state_update(const SelectiveStateUpdateParams& q, cudaStream_t stream) {
  const int64_t units = q.batch * q.dim;
  if (units == 0) return;
  const int lanes = scan_lanes(q.dstate);
  launch_kernel<state_update_kernel<T>>(scan_blocks(units * lanes, kThreads), kThreads, 0, stream, q, lanes);
}

}  // namespace scan_cuda
}  // namespace scangraph

// One instantiation file per dtype (selective_scan_<dtype>.cu) defines the entry points declared
// in selective_scan.h for its element type, so the dtypes compile in parallel.
#define SCANGRAPH_INSTANTIATE_SCAN(SCALAR, NAME)                                                        \
  namespace scangraph {                                                                                \
  void selective_scan_cuda_##NAME(const SelectiveScanParams& p, cudaStream_t stream) {                  \
    scan_cuda::launch_selective_scan<SCALAR>(p, stream);                                               \
  }                                                                                                    \
  void selective_scan_backward_cuda_##NAME(const SelectiveScanBackwardParams& p, cudaStream_t stream) { \
    scan_cuda::launch_selective_scan_backward<SCALAR>(p, stream);                                      \
  }                                                                                                    \
  void selective_state_update_cuda_##NAME(const SelectiveStateUpdateParams& p, cudaStream_t stream) {   \
    scan_cuda::launch_selective_state_update<SCALAR>(p, stream);                                       \
  }                                                                                                    \
  }
