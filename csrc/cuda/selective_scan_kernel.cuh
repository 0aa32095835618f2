// CUDA kernels of the selective scan (Mamba's S6 recurrence, docs/selective_scan.md): forward,
// backward and the one-step state update. Torch-free: they read the structs of
// scangraph/selective_scan_params.h.
//
// Layout of the work, parallel along the sequence. A warp owns one (batch, channel), one segment
// of the scan order and all N states. It walks the segment in tiles of kScanTile = 128 positions,
// lane l holding the kItems = 4 consecutive positions tile + 4 l. For each state n in turn, every
// lane folds its positions' affine maps h -> a h + b (a = exp(dt A_n), b = dt B_n u) into one,
// a warp-wide scan of the maps (5 shuffle steps) gives each lane the map of all positions before
// it, and the state carried in from the previous tile enters through it: the states of 128
// positions in about kItems + 5 + kItems dependent steps, where a sequential walk takes 128.
// The carried states live lane-distributed (state n on lane n % 32, slot n / 32).
//
// When the channels alone leave the GPU short of warps (scan_cuda_shape), the scan order is cut
// into segments: a summary pass gives each segment's map h_end = P h_start + Q (from a zero
// start), a short kernel composes the maps in order, and the full pass starts every segment
// from its true state. The backward does the same for the adjoint flow, right to left, and
// takes the forward states from the checkpoints (every kScanChunk positions; a tile starts on
// one). Packed sequences restart the state: a position that starts a sequence maps h to
// a h0 + b (h0 its initial state), whatever came before.
//
// Reductions are deterministic without atomics: per-(b, d, segment) parameter partials summed in
// order by a second kernel; varying dB / dC summed over the warps (channels) of a block in warp
// order into the block's own partial slab, the slabs summed in order by a third kernel.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "launch.cuh"
#include "numeric.cuh"
#include "scangraph/selective_scan_params.h"

namespace scangraph {
// A namespace of its own: sparse_kernel.cuh defines helpers of the same names in
// scangraph::cuda, and an inline function defined twice differently would break the ODR.
namespace scan_cuda {

constexpr int kWarp = 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kItems = 4;                                       // positions per lane
constexpr int kTile = kWarp * kItems;                           // positions per warp step
constexpr int kMaxSlots = int((kMaxDstate + kWarp - 1) / kWarp);   // per-lane slots of per-state values
constexpr int kForwardWarps = 4;                                // channels per forward block
constexpr int kBackwardWarps = int(kScanBlockChannels);         // channels per backward block
constexpr double kLog2e = 1.4426950408889634;
static_assert(kTile == kScanTile, "the tile of the kernels is the tile of the launch rule");
static_assert(kTile % kScanChunk == 0, "a tile starts on a checkpoint");

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

// ---- affine maps and their warp scans ------------------------------------------------------------
// x -> a x + b. then(first, second): apply `first`, then `second`.
template <typename acc_t> struct Map {
  acc_t a, b;
};
template <typename acc_t> __device__ __forceinline__ Map<acc_t> then(Map<acc_t> first, Map<acc_t> second) {
  return {second.a * first.a, second.a * first.b + second.b};
}
template <typename acc_t> __device__ __forceinline__ Map<acc_t> identity() { return {acc_t(1), acc_t(0)}; }

// Inclusive scan in lane order: lane l gets the maps of lanes 0..l applied in order.
template <typename acc_t> __device__ __forceinline__ Map<acc_t> scan_left(Map<acc_t> m, int lane) {
#pragma unroll
  for (int offset = 1; offset < kWarp; offset *= 2) {
    const Map<acc_t> before{__shfl_up_sync(kFull, m.a, offset), __shfl_up_sync(kFull, m.b, offset)};
    if (lane >= offset) m = then(before, m);
  }
  return m;
}
// Inclusive scan right to left: lane l gets the maps of lanes 31..l applied in that order.
template <typename acc_t> __device__ __forceinline__ Map<acc_t> scan_right(Map<acc_t> m, int lane) {
#pragma unroll
  for (int offset = 1; offset < kWarp; offset *= 2) {
    const Map<acc_t> after{__shfl_down_sync(kFull, m.a, offset), __shfl_down_sync(kFull, m.b, offset)};
    if (lane + offset < kWarp) m = then(after, m);
  }
  return m;
}
// The same bits in every lane: a fixed butterfly.
template <typename V> __device__ __forceinline__ V warp_sum(V v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFull, v, offset);
  return v;
}

// Per-state values spread over the lanes: state n = 32 j + l is slot j of lane l. The kernels are
// instantiated for S = 1, 2, 4, 8 slots (N <= 32, 64, 128, 256): registers for the states in use.
template <typename acc_t, int S> struct LaneStates {
  acc_t v[S];
  __device__ __forceinline__ void fill(acc_t x) {
#pragma unroll
    for (int j = 0; j < S; ++j) v[j] = x;
  }
  // row[n] for this lane's states (0 beyond N, or for a null row).
  __device__ __forceinline__ void load(const acc_t* row, int64_t N, int lane, acc_t scale = acc_t(1)) {
#pragma unroll
    for (int j = 0; j < S; ++j) {
      const int64_t n = int64_t(j) * kWarp + lane;
      v[j] = row != nullptr && n < N ? row[n] * scale : acc_t(0);
    }
  }
  __device__ __forceinline__ void store(acc_t* row, int64_t N, int lane) const {
#pragma unroll
    for (int j = 0; j < S; ++j) {
      const int64_t n = int64_t(j) * kWarp + lane;
      if (n < N) row[n] = v[j];
    }
  }
};

// ---- positions and packed sequences ------------------------------------------------------------
// The packed sequence holding scan position s of batch row b: its span [start, end) in scan
// order and its row of initial_state / last_state. Without cu_seqlens: all of L, row b. Reverse
// scans visit position t at s = L - 1 - t, so sequence i covers s in [L - cu[i + 1], L - cu[i]).
struct Span {
  int64_t start, end, row;
};

__device__ __forceinline__ Span span_of_row(const SelectiveScanParams& p, int64_t i) {
  const int64_t lo = p.cu_seqlens[i], hi = p.cu_seqlens[i + 1];
  return p.reverse ? Span{p.length - hi, p.length - lo, i} : Span{lo, hi, i};
}

__device__ __forceinline__ Span span_at(const SelectiveScanParams& p, int64_t b, int64_t s) {
  if (p.cu_seqlens == nullptr) return Span{0, p.length, b};
  const int64_t t = p.reverse ? p.length - 1 - s : s;
  int64_t lo = 0, hi = p.num_sequences - 1;  // the last i with cu[i] <= t: its sequence holds t
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (p.cu_seqlens[mid] <= t) lo = mid;
    else hi = mid - 1;
  }
  return span_of_row(p, lo);
}

// What a lane knows of its kItems positions in one tile.
template <typename acc_t> struct Positions {
  int64_t t[kItems];      // data index (reverse maps the scan order)
  int64_t row[kItems];    // sequence row (initial / last state)
  bool valid[kItems], starts[kItems], ends[kItems];
  acc_t raw[kItems], dt[kItems], u[kItems], dtu[kItems];
};

template <typename T, typename acc_t>
__device__ __forceinline__ void load_positions(const SelectiveScanParams& p, int64_t b, int64_t row_offset,
                                               int64_t first, int64_t stop, acc_t bias, Positions<acc_t>& x) {
  const T* u = static_cast<const T*>(p.u) + row_offset;
  const T* delta = static_cast<const T*>(p.delta) + row_offset;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int64_t s = first + i;
    x.valid[i] = s < stop;
    x.t[i] = p.reverse ? p.length - 1 - s : s;
    x.starts[i] = x.ends[i] = false;
    x.row[i] = b;
    x.raw[i] = x.dt[i] = x.u[i] = x.dtu[i] = acc_t(0);
    if (!x.valid[i]) continue;
    const Span span = span_at(p, b, s);
    x.starts[i] = s == span.start;
    x.ends[i] = s == span.end - 1;
    x.row[i] = span.row;
    x.raw[i] = to_acc(delta[x.t[i]]) + bias;
    x.dt[i] = p.delta_softplus ? softplus(x.raw[i]) : x.raw[i];
    x.u[i] = to_acc(u[x.t[i]]);
    x.dtu[i] = x.dt[i] * x.u[i];
  }
}

// The channel's constants of state n: A, A log2(e), fixed B / C (zero when varying).
template <typename acc_t> struct StateConsts {
  acc_t A, A2, B, C;
};

template <typename acc_t, int S> struct ChannelStates {
  LaneStates<acc_t, S> A, B, C;
  __device__ __forceinline__ void load(const SelectiveScanParams& p, int64_t d, int lane) {
    const int64_t N = p.dstate;
    A.load(static_cast<const acc_t*>(p.A) + d * N, N, lane);
    B.load(p.groups == 0 ? static_cast<const acc_t*>(p.B) + d * N : nullptr, N, lane);
    C.load(p.groups == 0 ? static_cast<const acc_t*>(p.C) + d * N : nullptr, N, lane);
  }
  __device__ __forceinline__ StateConsts<acc_t> at(int j, int l) const {
    StateConsts<acc_t> c;
    c.A = __shfl_sync(kFull, A.v[j], l);
    c.A2 = c.A * acc_t(kLog2e);
    c.B = __shfl_sync(kFull, B.v[j], l);
    c.C = __shfl_sync(kFull, C.v[j], l);
    return c;
  }
};

// Varying B / C: the (N, L) rows of channel d's group in batch row b.
template <typename T> struct VaryingRows {
  const T* B = nullptr;
  const T* C = nullptr;
  __device__ __forceinline__ VaryingRows(const SelectiveScanParams& p, int64_t b, int64_t d) {
    if (p.groups == 0) return;
    const int64_t g = d / (p.dim / p.groups), off = (b * p.groups + g) * p.dstate * p.length;
    B = static_cast<const T*>(p.B) + off;
    C = static_cast<const T*>(p.C) + off;
  }
};

// The maps of one state at this lane's positions: a_i (the decay), and the reset-aware map
// (a_i, b_i), which at a sequence's first position is (0, a_i h0 + b_i).
template <typename T, typename acc_t>
__device__ __forceinline__ void position_maps(const SelectiveScanParams& p, const Positions<acc_t>& x,
                                              const StateConsts<acc_t>& c, const VaryingRows<T>& rows, int64_t d,
                                              int64_t n, acc_t (&decay)[kItems], acc_t (&h0)[kItems],
                                              Map<acc_t> (&maps)[kItems]) {
  // Branch-free, so that the two states the forward takes at a time can interleave: a position
  // past the segment has dt = 0, so its map is the identity (a = 1, b = 0) without a test.
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    decay[i] = exp2_acc(x.dt[i] * c.A2);
    const acc_t Bt = rows.B != nullptr ? (x.valid[i] ? to_acc(rows.B[n * p.length + x.t[i]]) : acc_t(0)) : c.B;
    maps[i] = {decay[i], x.dtu[i] * Bt};
    h0[i] = acc_t(0);
    if (x.starts[i]) {
      if (p.initial_state) h0[i] = static_cast<const acc_t*>(p.initial_state)[(x.row[i] * p.dim + d) * p.dstate + n];
      maps[i] = {acc_t(0), decay[i] * h0[i] + maps[i].b};
    }
  }
}

template <typename acc_t>
__device__ __forceinline__ Map<acc_t> fold(const Map<acc_t> (&maps)[kItems]) {
  Map<acc_t> m = identity<acc_t>();
#pragma unroll
  for (int i = 0; i < kItems; ++i) m = then(m, maps[i]);
  return m;
}

// The state entering this lane's first position, from the state `carry` entering the tile;
// `total` gets the whole tile's map.
template <typename acc_t>
__device__ __forceinline__ acc_t state_entering_lane(Map<acc_t> lane_map, acc_t carry, int lane, Map<acc_t>& total) {
  const Map<acc_t> inclusive = scan_left(lane_map, lane);
  Map<acc_t> before{__shfl_up_sync(kFull, inclusive.a, 1), __shfl_up_sync(kFull, inclusive.b, 1)};
  if (lane == 0) before = identity<acc_t>();
  total = {__shfl_sync(kFull, inclusive.a, kWarp - 1), __shfl_sync(kFull, inclusive.b, kWarp - 1)};
  return before.a * carry + before.b;
}

// Segment seg covers scan positions [first, stop).
__device__ __forceinline__ int64_t segment_stop(int64_t length, int64_t segment_tiles, int64_t seg, int64_t& first) {
  first = seg * segment_tiles * kTile;
  const int64_t stop = first + segment_tiles * kTile;
  return stop < length ? stop : length;
}

// ---- forward -----------------------------------------------------------------------------------
// kSummary: each segment's map (P, Q) from a zero start, into segment_state. Otherwise the full
// pass: out, last_state, checkpoints, each segment starting from its state in segment_state
// (segments > 1) or from 0.
template <typename T, int S, bool kSummary>
__global__ void __launch_bounds__(kForwardWarps * kWarp) scan_forward_kernel(const SelectiveScanParams p) {
  using acc_t = typename Acc<T>::type;
  const int lane = int(threadIdx.x) % kWarp;
  const int64_t units = p.batch * p.dim;
  const int64_t unit = int64_t(blockIdx.x) * kForwardWarps + int64_t(threadIdx.x) / kWarp;
  if (unit >= units) return;  // the whole warp: its shuffles name only itself
  const int64_t seg = blockIdx.y, b = unit / p.dim, d = unit % p.dim, N = p.dstate, L = p.length;
  const int64_t row_offset = unit * L;
  int64_t first = 0;
  const int64_t stop = segment_stop(L, p.segment_tiles, seg, first);
  const acc_t bias = p.delta_bias ? static_cast<const acc_t*>(p.delta_bias)[d] : acc_t(0);
  const acc_t Dd = p.D ? static_cast<const acc_t*>(p.D)[d] : acc_t(0);
  acc_t* state_scratch = static_cast<acc_t*>(p.segment_state);
  const int64_t scratch_stride = units * p.segments * N;  // between P, Q and start
  const int64_t scratch_row = (unit * p.segments + seg) * N;

  ChannelStates<acc_t, S> ch;
  ch.load(p, d, lane);
  const VaryingRows<T> rows(p, b, d);
  LaneStates<acc_t, S> carry, product;
  carry.fill(acc_t(0));
  product.fill(acc_t(1));
  if (!kSummary && p.segments > 1) carry.load(state_scratch + 2 * scratch_stride + scratch_row, N, lane);
  acc_t* checkpoints = static_cast<acc_t*>(p.checkpoints) + unit * p.num_chunks * N;
  acc_t* last_state = static_cast<acc_t*>(p.last_state);
  const T* z = p.z ? static_cast<const T*>(p.z) + row_offset : nullptr;
  T* out = static_cast<T*>(p.out) + row_offset;

  for (int64_t tile = first; tile < stop; tile += kTile) {
    Positions<acc_t> x;
    load_positions<T>(p, b, row_offset, tile + int64_t(lane) * kItems, stop, bias, x);
    acc_t y[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) y[i] = acc_t(0);
#pragma unroll
    for (int j = 0; j < S; ++j) {
      if (int64_t(j) * kWarp >= N) break;
      for (int l = 0; l < kWarp; ++l) {
        const int64_t n = int64_t(j) * kWarp + l;
        if (n >= N) break;
        const StateConsts<acc_t> c = ch.at(j, l);
        acc_t decay[kItems], h0[kItems];
        Map<acc_t> maps[kItems];
        position_maps<T>(p, x, c, rows, d, n, decay, h0, maps);
        const acc_t entering = __shfl_sync(kFull, carry.v[j], l);
        Map<acc_t> total;
        acc_t h = state_entering_lane(fold(maps), entering, lane, total);
        if (!kSummary) {
#pragma unroll
          for (int i = 0; i < kItems; ++i) {  // past the segment: identity maps, nothing stored
            const int64_t s = tile + int64_t(lane) * kItems + i;
            // The carried state entering every chunk, before a reset there (the CPU's convention).
            if (x.valid[i] && s % kScanChunk == 0) checkpoints[(s / kScanChunk) * N + n] = h;
            h = maps[i].a * h + maps[i].b;
            const acc_t Ct = rows.C != nullptr ? (x.valid[i] ? to_acc(rows.C[n * L + x.t[i]]) : acc_t(0)) : c.C;
            y[i] += Ct * h;
            if (x.ends[i]) last_state[(x.row[i] * p.dim + d) * N + n] = h;
          }
        }
        if (lane == l) {
          carry.v[j] = total.a * entering + total.b;
          product.v[j] *= total.a;
        }
      }
    }
    if (!kSummary) {
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        if (!x.valid[i]) continue;
        acc_t v = y[i] + Dd * x.u[i];
        if (z) {
          const acc_t zt = to_acc(z[x.t[i]]);
          v *= zt * sigmoid(zt);
        }
        out[x.t[i]] = from_acc<T>(v);
      }
    }
  }
  if (kSummary) {
    product.store(state_scratch + scratch_row, N, lane);
    carry.store(state_scratch + scratch_stride + scratch_row, N, lane);
    return;
  }
  // A sequence without positions ends where it started.
  if (seg == 0) {
    for (int64_t i = 0; i < (p.cu_seqlens ? p.num_sequences : 1); ++i) {
      const Span span = p.cu_seqlens ? span_of_row(p, i) : Span{0, L, b};
      if (span.start != span.end) continue;
      LaneStates<acc_t, S> h0;
      h0.load(p.initial_state ? static_cast<const acc_t*>(p.initial_state) + (span.row * p.dim + d) * N : nullptr,
              N, lane);
      h0.store(last_state + (span.row * p.dim + d) * N, N, lane);
    }
  }
}

// The segments' maps composed in order: the state each segment starts from (0 for the first).
template <typename T>
__global__ void __launch_bounds__(256) scan_segments_kernel(const SelectiveScanParams p) {
  using acc_t = typename Acc<T>::type;
  const int64_t N = p.dstate, units = p.batch * p.dim, stride = units * p.segments * N;
  acc_t* scratch = static_cast<acc_t*>(p.segment_state);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < units * N;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t unit = i / N, n = i % N;
    acc_t h = 0;
    for (int64_t seg = 0; seg < p.segments; ++seg) {
      const int64_t k = (unit * p.segments + seg) * N + n;
      scratch[2 * stride + k] = h;
      h = scratch[k] * h + scratch[stride + k];
    }
  }
}

// ---- backward ------------------------------------------------------------------------------------
// The adjoint lambda_s = dL/dh_s runs right to left: lambda_s = mu_s + beta_s with beta_s =
// C_s dy_s (+ the last state's gradient where a sequence ends) and mu_s = a_{s+1} lambda_{s+1}
// the flow from the right, where a is the reset-aware decay (0 at a sequence's first position:
// nothing flows across). Per position the flow maps mu_s -> mu_{s-1} = a_s mu_s + a_s beta_s.

template <typename acc_t> struct Adjoint {
  acc_t beta[kItems];
};

// dy (the gradient of y, before z's gate) and dz, per position; y only when z gates.
template <typename T, typename acc_t>
__device__ __forceinline__ void output_gradients(const SelectiveScanBackwardParams& q, int64_t row_offset,
                                                 const Positions<acc_t>& x, const acc_t (&y)[kItems], acc_t Dd,
                                                 acc_t (&dy)[kItems], acc_t (&dz)[kItems]) {
  const SelectiveScanParams& p = q.fwd;
  const T* grad = static_cast<const T*>(q.grad_out) + row_offset;
  const T* z = p.z ? static_cast<const T*>(p.z) + row_offset : nullptr;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    dy[i] = dz[i] = acc_t(0);
    if (!x.valid[i]) continue;
    const acc_t g = to_acc(grad[x.t[i]]);
    dy[i] = g;
    if (z) {
      const acc_t zt = to_acc(z[x.t[i]]), sz = sigmoid(zt);
      dy[i] = g * zt * sz;
      const acc_t yt = y[i] + Dd * x.u[i];
      dz[i] = g * yt * sz * (acc_t(1) + zt * (acc_t(1) - sz));
    }
  }
}

template <typename T, typename acc_t>
__device__ __forceinline__ void adjoint_inputs(const SelectiveScanBackwardParams& q, const Positions<acc_t>& x,
                                               const StateConsts<acc_t>& c, const VaryingRows<T>& rows, int64_t d,
                                               int64_t n, const acc_t (&dy)[kItems], acc_t (&beta)[kItems]) {
  const SelectiveScanParams& p = q.fwd;
  const acc_t* grad_last = static_cast<const acc_t*>(q.grad_last_state);
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    beta[i] = acc_t(0);
    if (!x.valid[i]) continue;
    const acc_t Ct = rows.C != nullptr ? to_acc(rows.C[n * p.length + x.t[i]]) : c.C;
    beta[i] = Ct * dy[i];
    if (x.ends[i] && grad_last) beta[i] += grad_last[(x.row[i] * p.dim + d) * p.dstate + n];
  }
}

// The flow entering this lane's last position from the right, from `carry` entering the tile
// from the right; `total` gets the tile's map of the flow.
template <typename acc_t>
__device__ __forceinline__ acc_t flow_entering_lane(const Map<acc_t> (&maps)[kItems], acc_t carry, int lane,
                                                    Map<acc_t>& total) {
  Map<acc_t> m = identity<acc_t>();
#pragma unroll
  for (int i = kItems - 1; i >= 0; --i) m = then(m, maps[i]);
  const Map<acc_t> inclusive = scan_right(m, lane);
  Map<acc_t> after{__shfl_down_sync(kFull, inclusive.a, 1), __shfl_down_sync(kFull, inclusive.b, 1)};
  if (lane == kWarp - 1) after = identity<acc_t>();
  total = {__shfl_sync(kFull, inclusive.a, 0), __shfl_sync(kFull, inclusive.b, 0)};
  return after.a * carry + after.b;
}

// Summary pass of the backward: each segment's map of the flow, (P, Q) with mu_out = P mu_in + Q,
// into segment_flow. One warp per (b, d, segment), kBackwardWarps channels per block.
template <typename T, int S>
__global__ void __launch_bounds__(kBackwardWarps * kWarp) scan_flow_kernel(const SelectiveScanBackwardParams q) {
  using acc_t = typename Acc<T>::type;
  const SelectiveScanParams& p = q.fwd;
  const int lane = int(threadIdx.x) % kWarp;
  const int64_t units = p.batch * p.dim, segments = q.shape.segments;
  const int64_t unit = int64_t(blockIdx.x) * kBackwardWarps + int64_t(threadIdx.x) / kWarp;
  if (unit >= units) return;
  const int64_t seg = blockIdx.y, b = unit / p.dim, d = unit % p.dim, N = p.dstate;
  int64_t first = 0;
  const int64_t stop = segment_stop(p.length, q.shape.segment_tiles, seg, first);
  const acc_t bias = p.delta_bias ? static_cast<const acc_t*>(p.delta_bias)[d] : acc_t(0);
  const acc_t Dd = p.D ? static_cast<const acc_t*>(p.D)[d] : acc_t(0);
  ChannelStates<acc_t, S> ch;
  ch.load(p, d, lane);
  const VaryingRows<T> rows(p, b, d);
  LaneStates<acc_t, S> flow, product;
  flow.fill(acc_t(0));
  product.fill(acc_t(1));
  const int64_t last_tile = stop > first ? first + ((stop - first - 1) / kTile) * kTile : first - kTile;
  for (int64_t tile = last_tile; tile >= first; tile -= kTile) {
    Positions<acc_t> x;
    load_positions<T>(p, b, unit * p.length, tile + int64_t(lane) * kItems, stop, bias, x);
    acc_t y[kItems] = {}, dy[kItems], dz[kItems];
    output_gradients<T>(q, unit * p.length, x, y, Dd, dy, dz);  // dy needs no y
#pragma unroll
    for (int j = 0; j < S; ++j) {
      if (int64_t(j) * kWarp >= N) break;
      for (int l = 0; l < kWarp; ++l) {
        const int64_t n = int64_t(j) * kWarp + l;
        if (n >= N) break;
        const StateConsts<acc_t> c = ch.at(j, l);
        acc_t decay[kItems], h0[kItems], beta[kItems];
        Map<acc_t> maps[kItems], flows[kItems];
        position_maps<T>(p, x, c, rows, d, n, decay, h0, maps);
        adjoint_inputs<T>(q, x, c, rows, d, n, dy, beta);
#pragma unroll
        for (int i = 0; i < kItems; ++i) flows[i] = {maps[i].a, maps[i].a * beta[i]};
        const acc_t entering = __shfl_sync(kFull, flow.v[j], l);
        Map<acc_t> total;
        flow_entering_lane(flows, entering, lane, total);
        if (lane == l) {
          flow.v[j] = total.a * entering + total.b;
          product.v[j] *= total.a;
        }
      }
    }
  }
  acc_t* scratch = static_cast<acc_t*>(q.segment_flow);
  const int64_t stride = units * segments * N, row = (unit * segments + seg) * N;
  product.store(scratch + row, N, lane);
  flow.store(scratch + stride + row, N, lane);
}

// The flow entering each segment from the right: the later segments' maps composed right to left.
template <typename T>
__global__ void __launch_bounds__(256) scan_flow_segments_kernel(const SelectiveScanBackwardParams q) {
  using acc_t = typename Acc<T>::type;
  const SelectiveScanParams& p = q.fwd;
  const int64_t N = p.dstate, units = p.batch * p.dim, segments = q.shape.segments;
  const int64_t stride = units * segments * N;
  acc_t* scratch = static_cast<acc_t*>(q.segment_flow);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < units * N;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t unit = i / N, n = i % N;
    acc_t mu = 0;
    for (int64_t seg = segments - 1; seg >= 0; --seg) {
      const int64_t k = (unit * segments + seg) * N + n;
      scratch[2 * stride + k] = mu;
      mu = scratch[k] * mu + scratch[stride + k];
    }
  }
}

// The full backward. Fixed B / C: one warp per (b, d, segment), kBackwardWarps channels per
// block. Varying: block (b, g, slab) x segment; in round r its warp w takes channel
// (r * slabs + slab) * kBackwardWarps + w of group g, and the block adds its warps' dB / dC, in
// warp order, into its own slab of bc_partial. A warp past the group's channels walks a valid
// channel to keep the block's barriers, adds zeros and writes nothing.
template <typename T, int S>
__device__ __forceinline__ void backward_channel(const SelectiveScanBackwardParams& q, int64_t b, int64_t d,
                                                 int64_t seg, bool active, typename Acc<T>::type* bc_slab,
                                                 typename Acc<T>::type* shared) {
  using acc_t = typename Acc<T>::type;
  const SelectiveScanParams& p = q.fwd;
  const int lane = int(threadIdx.x) % kWarp, warp = int(threadIdx.x) / kWarp;
  const int64_t N = p.dstate, L = p.length, unit = b * p.dim + d, row_offset = unit * L;
  const int64_t segments = q.shape.segments;
  int64_t first = 0;
  const int64_t stop = segment_stop(L, q.shape.segment_tiles, seg, first);
  const bool varying = p.groups != 0;
  const acc_t bias = p.delta_bias ? static_cast<const acc_t*>(p.delta_bias)[d] : acc_t(0);
  const acc_t Dd = p.D ? static_cast<const acc_t*>(p.D)[d] : acc_t(0);
  ChannelStates<acc_t, S> ch;
  ch.load(p, d, lane);
  const VaryingRows<T> rows(p, b, d);
  const acc_t* checkpoints = static_cast<const acc_t*>(p.checkpoints) + unit * p.num_chunks * N;
  acc_t* dinitial = static_cast<acc_t*>(q.dinitial_state);
  LaneStates<acc_t, S> flow, dA, dB, dC;
  flow.fill(acc_t(0));
  if (segments > 1) {
    const int64_t stride = p.batch * p.dim * segments * N;
    flow.load(static_cast<const acc_t*>(q.segment_flow) + 2 * stride + (unit * segments + seg) * N, N, lane);
  }
  dA.fill(acc_t(0));
  dB.fill(acc_t(0));
  dC.fill(acc_t(0));
  acc_t dD = 0, dbias = 0;  // this lane's positions
  T* du_out = static_cast<T*>(q.du) + row_offset;
  T* ddelta_out = static_cast<T*>(q.ddelta) + row_offset;
  T* dz_out = q.dz ? static_cast<T*>(q.dz) + row_offset : nullptr;

  const int64_t last_tile = stop > first ? first + ((stop - first - 1) / kTile) * kTile : first - kTile;
  for (int64_t tile = last_tile; tile >= first; tile -= kTile) {
    Positions<acc_t> x;
    load_positions<T>(p, b, row_offset, tile + int64_t(lane) * kItems, stop, bias, x);
    const acc_t* entering_tile = checkpoints + (tile / kScanChunk) * N;  // the state entering the tile
    acc_t y[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) y[i] = acc_t(0);
    if (p.z) {  // z's gradient needs y: one forward pass over the states first
#pragma unroll
      for (int j = 0; j < S; ++j) {
        if (int64_t(j) * kWarp >= N) break;
        for (int l = 0; l < kWarp; ++l) {
          const int64_t n = int64_t(j) * kWarp + l;
          if (n >= N) break;
          const StateConsts<acc_t> c = ch.at(j, l);
          acc_t decay[kItems], h0[kItems];
          Map<acc_t> maps[kItems], total;
          position_maps<T>(p, x, c, rows, d, n, decay, h0, maps);
          acc_t h = state_entering_lane(fold(maps), entering_tile[n], lane, total);
#pragma unroll
          for (int i = 0; i < kItems; ++i) {
            h = maps[i].a * h + maps[i].b;
            y[i] += (rows.C != nullptr && x.valid[i] ? to_acc(rows.C[n * L + x.t[i]]) : c.C) * h;
          }
        }
      }
    }
    acc_t dy[kItems], dz[kItems], du[kItems], ddt[kItems];
    output_gradients<T>(q, row_offset, x, y, Dd, dy, dz);
#pragma unroll
    for (int i = 0; i < kItems; ++i) du[i] = ddt[i] = acc_t(0);
#pragma unroll
    for (int j = 0; j < S; ++j) {
      if (int64_t(j) * kWarp >= N) break;
      for (int l = 0; l < kWarp; ++l) {
        const int64_t n = int64_t(j) * kWarp + l;
        if (n >= N) break;
        const StateConsts<acc_t> c = ch.at(j, l);
        acc_t decay[kItems], h0[kItems], beta[kItems], before[kItems], after[kItems];
        Map<acc_t> maps[kItems], flows[kItems], total;
        position_maps<T>(p, x, c, rows, d, n, decay, h0, maps);
        // The states before (h0 at a sequence's first position) and after each position.
        acc_t h = state_entering_lane(fold(maps), entering_tile[n], lane, total);
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          before[i] = x.starts[i] ? h0[i] : h;
          h = maps[i].a * h + maps[i].b;
          after[i] = h;
        }
        adjoint_inputs<T>(q, x, c, rows, d, n, dy, beta);
#pragma unroll
        for (int i = 0; i < kItems; ++i) flows[i] = {maps[i].a, maps[i].a * beta[i]};
        const acc_t entering = __shfl_sync(kFull, flow.v[j], l);
        acc_t mu = flow_entering_lane(flows, entering, lane, total);
        acc_t part_A = 0, part_B = 0, part_C = 0;
#pragma unroll
        for (int i = kItems - 1; i >= 0; --i) {
          const acc_t lambda = mu + beta[i];
          mu = maps[i].a * lambda;
          const acc_t Bt = rows.B != nullptr && x.valid[i] ? to_acc(rows.B[n * L + x.t[i]]) : c.B;
          const acc_t gate = lambda * decay[i] * before[i];  // d/d(decay) times the decay
          ddt[i] += gate * c.A + lambda * Bt * x.u[i];
          du[i] += lambda * x.dt[i] * Bt;
          part_A += gate * x.dt[i];
          const acc_t vb = lambda * x.dtu[i], vc = dy[i] * after[i];
          if (varying) {
            shared[(warp * 2 + 0) * kTile + lane * kItems + i] = active ? vb : acc_t(0);
            shared[(warp * 2 + 1) * kTile + lane * kItems + i] = active ? vc : acc_t(0);
          } else {
            part_B += vb;
            part_C += vc;
          }
          if (x.starts[i] && dinitial && active) dinitial[(x.row[i] * p.dim + d) * N + n] = lambda * decay[i];
        }
        if (lane == l) flow.v[j] = total.a * entering + total.b;
        part_A = warp_sum(part_A);
        if (!varying) {
          part_B = warp_sum(part_B);
          part_C = warp_sum(part_C);
        }
        if (lane == l) {
          dA.v[j] += part_A;
          dB.v[j] += part_B;
          dC.v[j] += part_C;
        }
        if (varying) {
          // The block's channels summed in warp order into its slab: (2, N, L) of this (b, g).
          __syncthreads();
          for (int k = int(threadIdx.x); k < 2 * kTile; k += int(blockDim.x)) {
            const int which = k / kTile, pos = k % kTile;
            const int64_t s = tile + pos;
            acc_t sum = 0;
            for (int w = 0; w < kBackwardWarps; ++w) sum += shared[(w * 2 + which) * kTile + pos];
            if (s < stop) bc_slab[(which * N + n) * L + (p.reverse ? L - 1 - s : s)] += sum;
          }
          __syncthreads();
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (!x.valid[i] || !active) continue;
      const acc_t draw = p.delta_softplus ? ddt[i] * softplus_grad(x.raw[i]) : ddt[i];
      du_out[x.t[i]] = from_acc<T>(du[i] + Dd * dy[i]);
      ddelta_out[x.t[i]] = from_acc<T>(draw);
      if (dz_out) dz_out[x.t[i]] = from_acc<T>(dz[i]);
      dD += x.u[i] * dy[i];
      dbias += draw;
    }
  }
  dD = warp_sum(dD);
  dbias = warp_sum(dbias);
  if (!active) return;
  // This (b, d, segment)'s partials; fixed dB / dC stay 0 when B / C vary.
  acc_t* partial = static_cast<acc_t*>(q.param_partial) + (unit * segments + seg) * (3 * N + 2);
  dA.store(partial, N, lane);
  dB.store(partial + N, N, lane);
  dC.store(partial + 2 * N, N, lane);
  if (lane == 0) {
    partial[3 * N] = dD;
    partial[3 * N + 1] = dbias;
  }
  // A sequence without positions: its initial state's gradient is its last state's.
  if (seg == 0 && dinitial) {
    for (int64_t i = 0; i < (p.cu_seqlens ? p.num_sequences : 1); ++i) {
      const Span span = p.cu_seqlens ? span_of_row(p, i) : Span{0, L, b};
      if (span.start != span.end) continue;
      LaneStates<acc_t, S> g;
      g.load(q.grad_last_state ? static_cast<const acc_t*>(q.grad_last_state) + (span.row * p.dim + d) * N : nullptr,
             N, lane);
      g.store(dinitial + (span.row * p.dim + d) * N, N, lane);
    }
  }
}

template <typename T, int S>
__global__ void __launch_bounds__(kBackwardWarps * kWarp) scan_backward_kernel(const SelectiveScanBackwardParams q) {
  using acc_t = typename Acc<T>::type;
  const SelectiveScanParams& p = q.fwd;
  const int64_t seg = blockIdx.y;
  const int warp = int(threadIdx.x) / kWarp;
  if (p.groups == 0) {
    const int64_t unit = int64_t(blockIdx.x) * kBackwardWarps + warp;
    if (unit >= p.batch * p.dim) return;  // no barriers on this path
    backward_channel<T, S>(q, unit / p.dim, unit % p.dim, seg, true, nullptr, nullptr);
    return;
  }
  __shared__ acc_t shared[kBackwardWarps * 2 * kTile];
  const int64_t slabs = q.shape.slabs, per_group = p.dim / p.groups;
  const int64_t slab = blockIdx.x % slabs, g = (blockIdx.x / slabs) % p.groups, b = blockIdx.x / (slabs * p.groups);
  acc_t* bc_slab = static_cast<acc_t*>(q.bc_partial) +
                   ((slab * p.batch + b) * p.groups + g) * 2 * p.dstate * p.length;
  for (int64_t r = 0; r < q.shape.rounds; ++r) {
    const int64_t c = (r * slabs + slab) * kBackwardWarps + warp;
    const bool active = c < per_group;
    backward_channel<T, S>(q, b, g * per_group + (active ? c : 0), seg, active, bc_slab, shared);
  }
}

// dA, fixed dB / dC, dD, ddelta_bias: the per-(b, d, segment) partials summed over b, then
// segments, in order. Templated on T although it only touches acc: each dtype's file then owns
// its instantiation (no kernel shared between the fp32, fp16 and bf16 modules).
template <typename T>
__global__ void __launch_bounds__(256) scan_param_reduce_kernel(const SelectiveScanBackwardParams q) {
  using acc_t = typename Acc<T>::type;
  const SelectiveScanParams& p = q.fwd;
  const int64_t N = p.dstate, width = 3 * N + 2, total = p.dim * width, segments = q.shape.segments;
  const acc_t* partial = static_cast<const acc_t*>(q.param_partial);
  const bool varying = p.groups != 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = i / width, k = i % width;
    acc_t sum = 0;
    for (int64_t b = 0; b < p.batch; ++b)
      for (int64_t seg = 0; seg < segments; ++seg) sum += partial[((b * p.dim + d) * segments + seg) * width + k];
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

// Varying dB / dC: the slabs' partials summed in slab order, cast to T.
template <typename T>
__global__ void __launch_bounds__(256) scan_bc_reduce_kernel(const SelectiveScanBackwardParams q) {
  using acc_t = typename Acc<T>::type;
  const SelectiveScanParams& p = q.fwd;
  const int64_t per_bg = p.dstate * p.length, slice = p.batch * p.groups * 2 * per_bg;
  const acc_t* partial = static_cast<const acc_t*>(q.bc_partial);
  T* dB = static_cast<T*>(q.dB);
  T* dC = static_cast<T*>(q.dC);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < slice; i += int64_t(gridDim.x) * blockDim.x) {
    acc_t sum = 0;
    for (int64_t k = 0; k < q.shape.slabs; ++k) sum += partial[k * slice + i];
    // i indexes (b, g, which, n, t); which 0 is dB, 1 is dC
    const int64_t bg = i / (2 * per_bg), which = (i / per_bg) % 2, rest = i % per_bg;
    (which == 0 ? dB : dC)[bg * per_bg + rest] = from_acc<T>(sum);
  }
}

// ---- one decode step -----------------------------------------------------------------------------
// The N states of one (batch, channel) spread over K = next_pow2(ceil(N / 8)) lanes of a warp,
// 8 states each; a warp holds 32 / K channels (a decode step has no sequence to spread).
constexpr int kStatesPerLane = 8;
constexpr int kStepThreads = 128;

inline int step_lanes(int64_t dstate) {
  const int64_t needed = (dstate + kStatesPerLane - 1) / kStatesPerLane;
  int lanes = 1;
  while (lanes < needed) lanes *= 2;
  return lanes;
}

template <typename T>
__global__ void __launch_bounds__(kStepThreads) state_update_kernel(const SelectiveStateUpdateParams q,
                                                                    const int lanes) {
  using acc_t = typename Acc<T>::type;
  const int64_t unit = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / lanes;
  if (unit >= q.batch * q.dim) return;
  const int lane = int(threadIdx.x) % kWarp, first_lane = lane & ~(lanes - 1), rank = lane - first_lane;
  // The group's lanes alone: a group whose channel is out of range returns while others shuffle.
  const unsigned mask = lanes == kWarp ? kFull : ((1u << lanes) - 1u) << first_lane;
  const int64_t b = unit / q.dim, d = unit % q.dim, N = q.dstate;
  const int64_t g = d / (q.dim / q.groups);
  const int n0 = rank * kStatesPerLane;
  const int count = N - n0 >= kStatesPerLane ? kStatesPerLane : (N > n0 ? int(N - n0) : 0);
  const acc_t raw = to_acc(static_cast<const T*>(q.dt)[unit]) +
                    (q.dt_bias ? static_cast<const acc_t*>(q.dt_bias)[d] : acc_t(0));
  const acc_t dt = q.dt_softplus ? softplus(raw) : raw;
  const acc_t x = to_acc(static_cast<const T*>(q.x)[unit]);
  const acc_t* A = static_cast<const acc_t*>(q.A) + d * N + n0;
  const T* B = static_cast<const T*>(q.B) + (b * q.groups + g) * N + n0;
  const T* C = static_cast<const T*>(q.C) + (b * q.groups + g) * N + n0;
  acc_t* h = static_cast<acc_t*>(q.state) + unit * N + n0;
  // The scan's step, term for term (gate exp2(dt * (A * log2(e))), dt * x times B), so that
  // decoding token by token follows the scan closely.
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
  for (int offset = lanes / 2; offset > 0; offset /= 2) y += __shfl_xor_sync(mask, y, offset, lanes);
  y += (q.D ? static_cast<const acc_t*>(q.D)[d] : acc_t(0)) * x;
  if (q.z) {
    const acc_t zt = to_acc(static_cast<const T*>(q.z)[unit]);
    y *= zt * sigmoid(zt);
  }
  if (rank == 0) static_cast<T*>(q.out)[unit] = from_acc<T>(y);
}

// ---- launchers -----------------------------------------------------------------------------------
inline unsigned blocks_for(int64_t items, int64_t per_block) { return unsigned((items + per_block - 1) / per_block); }

// Grid-stride kernels: enough blocks to fill the device, capped so the grid never overflows.
inline unsigned stride_blocks(int64_t items) {
  const int64_t blocks = (items + 255) / 256;
  return unsigned(blocks < 65536 ? blocks : 65536);
}

// The kernels' slots for N states (see LaneStates).
inline int slots_for(int64_t dstate) {
  return dstate <= 32 ? 1 : dstate <= 64 ? 2 : dstate <= 128 ? 4 : kMaxSlots;
}

template <typename T, int S>
void launch_forward(const SelectiveScanParams& p, cudaStream_t stream) {
  const int64_t units = p.batch * p.dim;
  const dim3 grid(blocks_for(units, kForwardWarps), unsigned(p.segments)), block(kForwardWarps * kWarp);
  if (p.segments > 1) {
    launch_kernel<scan_forward_kernel<T, S, true>>(grid, block, 0, stream, p);
    launch_kernel<scan_segments_kernel<T>>(stride_blocks(units * p.dstate), 256, 0, stream, p);
  }
  launch_kernel<scan_forward_kernel<T, S, false>>(grid, block, 0, stream, p);
}

template <typename T>
void launch_selective_scan(const SelectiveScanParams& p, cudaStream_t stream) {
  if (p.batch * p.dim == 0) return;
  switch (slots_for(p.dstate)) {
    case 1: launch_forward<T, 1>(p, stream); break;
    case 2: launch_forward<T, 2>(p, stream); break;
    case 4: launch_forward<T, 4>(p, stream); break;
    default: launch_forward<T, kMaxSlots>(p, stream); break;
  }
}

template <typename T, int S>
void launch_backward(const SelectiveScanBackwardParams& q, cudaStream_t stream) {
  const SelectiveScanParams& p = q.fwd;
  const int64_t units = p.batch * p.dim, segments = q.shape.segments;
  const dim3 block(kBackwardWarps * kWarp);
  const dim3 channel_grid(blocks_for(units, kBackwardWarps), unsigned(segments));
  const dim3 grid = p.groups == 0 ? channel_grid
                                  : dim3(unsigned(p.batch * p.groups * q.shape.slabs), unsigned(segments));
  if (segments > 1) {
    launch_kernel<scan_flow_kernel<T, S>>(channel_grid, block, 0, stream, q);
    launch_kernel<scan_flow_segments_kernel<T>>(stride_blocks(units * p.dstate), 256, 0, stream, q);
  }
  launch_kernel<scan_backward_kernel<T, S>>(grid, block, 0, stream, q);
}

template <typename T>
void launch_selective_scan_backward(const SelectiveScanBackwardParams& q, cudaStream_t stream) {
  const SelectiveScanParams& p = q.fwd;
  if (p.batch * p.dim > 0) {
    switch (slots_for(p.dstate)) {
      case 1: launch_backward<T, 1>(q, stream); break;
      case 2: launch_backward<T, 2>(q, stream); break;
      case 4: launch_backward<T, 4>(q, stream); break;
      default: launch_backward<T, kMaxSlots>(q, stream); break;
    }
  }
  // Runs even for batch 0: the parameter gradients are then sums over nothing, zeros.
  const int64_t params = p.dim * (3 * p.dstate + 2);
  if (params > 0) launch_kernel<scan_param_reduce_kernel<T>>(stride_blocks(params), 256, 0, stream, q);
  if (p.groups != 0) {
    const int64_t slice = p.batch * p.groups * 2 * p.dstate * p.length;
    if (slice > 0) launch_kernel<scan_bc_reduce_kernel<T>>(stride_blocks(slice), 256, 0, stream, q);
  }
}

template <typename T>
void launch_selective_state_update(const SelectiveStateUpdateParams& q, cudaStream_t stream) {
  const int64_t units = q.batch * q.dim;
  if (units == 0) return;
  const int lanes = step_lanes(q.dstate);
  launch_kernel<state_update_kernel<T>>(blocks_for(units * lanes, kStepThreads), kStepThreads, 0, stream, q, lanes);
}

}  // namespace scan_cuda
}  // namespace scangraph

namespace scangraph {
template <typename T>
void selective_scan_cuda(const SelectiveScanParams& p, cudaStream_t stream) {
  scan_cuda::launch_selective_scan<T>(p, stream);
}
template <typename T>
void selective_scan_backward_cuda(const SelectiveScanBackwardParams& p, cudaStream_t stream) {
  scan_cuda::launch_selective_scan_backward<T>(p, stream);
}
template <typename T>
void selective_state_update_cuda(const SelectiveStateUpdateParams& p, cudaStream_t stream) {
  scan_cuda::launch_selective_state_update<T>(p, stream);
}
}  // namespace scangraph

// One instantiation file per dtype (selective_scan_<dtype>.cu) instantiates the entry points of
// selective_scan.h for its element type, so the dtypes compile in parallel.
#define SCANGRAPH_INSTANTIATE_SCAN(T)                                                                   \
  template void scangraph::selective_scan_cuda<T>(const scangraph::SelectiveScanParams&, cudaStream_t); \
  template void scangraph::selective_scan_backward_cuda<T>(const scangraph::SelectiveScanBackwardParams&, \
                                                           cudaStream_t);                                \
  template void scangraph::selective_state_update_cuda<T>(const scangraph::SelectiveStateUpdateParams&, \
                                                          cudaStream_t);
