// CUDA kernels of prefix-scan attention (Aaren), torch-free (raw pointers + strides). The math
// is in scangraph/prefix_attention_params.h.
//
// One warp owns one (sequence, head) and one segment of its positions, and walks the segment in
// order: lane l holds elements l, l + 32, ... of q, of the numerator w (forward) and of the
// reverse-scan vector K and the dq sum (backward), in registers. Each position's row of k / v / o
// is read and written with one coalesced access per 32 elements; dot products are reduced with a
// fixed xor butterfly, which leaves the bitwise same sum in every lane, so the branch on a new
// maximum is warp-uniform. Every output element has one owner lane: no atomics, deterministic.
//
// Parallelism along L: when batch x heads (x sequences) warps leave the GPU short, the positions
// are cut into segments (prefix_attention_segment_length). The forward's summary pass gives each
// segment's state from the empty one; a combine pass composes them in order, (m, c, w) then
// (m', c', w') being (M, c e^{m - M} + c' e^{m' - M}, w e^{m - M} + w' e^{m' - M}) with
// M = max(m, m'); the full pass runs every segment from its true state. The backward's two
// reverse scans are linear in (K, K'), so a segment's effect is a map (gate product, K, K') from
// a zero start, composed right to left the same way. dq's per-segment partials are summed in
// order.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include <cstdint>

#include "numeric.cuh"
#include "scangraph/prefix_attention_params.h"
#include "launch.cuh"

namespace scangraph {
namespace cuda {
namespace prefix {

constexpr int kWarp = 32;
// 4 warps per block: blocks stay small so that batch x heads tasks spread over all SMs.
constexpr int kWarpsPerBlock = 4;
// Elements of q / w / K / dq per lane held in registers: d and dv up to 32 * 8 = 256.
constexpr int kMaxPerLane = 8;
constexpr int64_t kMaxDim = int64_t(kWarp) * kMaxPerLane;

using numeric::Acc;
using numeric::exp_acc;
using numeric::from_acc;
using numeric::to_acc;

template <typename acc_t> __device__ __forceinline__ acc_t neg_inf() { return -CUDART_INF_F; }
template <> __device__ __forceinline__ double neg_inf<double>() { return -CUDART_INF; }

// e^{from - to} for from <= to; 1 when both are equal, which covers two empty (-inf) maxima.
template <typename acc_t>
__device__ __forceinline__ acc_t gate(acc_t from, acc_t to) {
  return from == to ? acc_t(1) : exp_acc(from - to);
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Lane l's elements l, l + 32, ... of a row of n values (0 past n, or for the whole row when
// !valid). Rows are loaded one position ahead of the scan: the loads do not depend on the scan
// state, so their latency overlaps the dependent chain (dot, exp, update) of the current position.
template <typename acc_t, typename scalar_t, int kPerLane>
__device__ __forceinline__ void load_row(const scalar_t* row, int64_t n, bool valid, int lane,
                                         acc_t (&out)[kPerLane]) {
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + int64_t(i) * kWarp;
    out[i] = (valid && d < n) ? to_acc(*(row + d)) : acc_t(0);
  }
}

template <typename acc_t, int kPerLane>
__device__ __forceinline__ void copy_row(const acc_t (&from)[kPerLane], acc_t (&to)[kPerLane]) {
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) to[i] = from[i];
}

struct Span {
  int64_t batch, begin, end;
};

template <typename Params>
__device__ __forceinline__ Span sequence_span(const Params& p, int64_t seq) {
  if (p.cu_seqlens != nullptr) return {0, p.cu_seqlens[seq], p.cu_seqlens[seq + 1]};
  return {seq, 0, p.seqlen};
}

__device__ __forceinline__ int64_t task_index() {
  return int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
}

// One warp's task: (sequence, head) pair and segment [begin, end) of the sequence's positions;
// `last` says whether it is the sequence's last segment (the only one of an empty sequence).
struct Segment {
  int64_t seq, head, state, seg, begin, end;
  Span span;
  bool last;
};

template <typename Params>
__device__ __forceinline__ bool segment_of_task(const Params& p, int64_t task, Segment& s) {
  if (task >= p.num_seqs * p.heads * p.segments) return false;
  s.seg = task % p.segments;
  s.state = task / p.segments;
  s.seq = s.state / p.heads;
  s.head = s.state % p.heads;
  s.span = sequence_span(p, s.seq);
  const int64_t length = s.span.end - s.span.begin;
  const int64_t count = length > 0 ? (length + p.segment_length - 1) / p.segment_length : 1;
  if (s.seg >= count) return false;
  s.begin = s.span.begin + s.seg * p.segment_length;
  s.end = s.begin + p.segment_length < s.span.end ? s.begin + p.segment_length : s.span.end;
  s.last = s.seg == count - 1;
  return true;
}

// Scratch row of (pair, segment): [0] m (or the gate product), [1] c (or K'), [2 ..] w (or K).
template <typename acc_t, typename Params>
__device__ __forceinline__ acc_t* scratch_row(const Params& p, int which, int64_t state, int64_t seg) {
  const int64_t width = 2 + p.dim_v;
  return static_cast<acc_t*>(p.segment_state) + ((which * p.num_seqs * p.heads + state) * p.segments + seg) * width;
}

template <typename acc_t, int kPerLane>
__device__ __forceinline__ void load_vector(const acc_t* row, int64_t n, int lane, acc_t (&out)[kPerLane]) {
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + int64_t(i) * kWarp;
    out[i] = row != nullptr && d < n ? row[d] : acc_t(0);
  }
}

template <typename acc_t, int kPerLane>
__device__ __forceinline__ void store_vector(acc_t* row, int64_t n, int lane, const acc_t (&in)[kPerLane]) {
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + int64_t(i) * kWarp;
    if (d < n) row[d] = in[i];
  }
}

// kSummary: the segment's state from the empty one, into segment_state. Otherwise the full pass
// from the segment's true state: o, the statistics, and (last segment) the final state.
template <typename scalar_t, int kPerLane, bool kSummary>
__global__ void __launch_bounds__(kWarp * kWarpsPerBlock) prefix_attention_fwd_kernel(PrefixAttentionParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = threadIdx.x % kWarp;
  Segment sg;
  if (!segment_of_task(p, task_index(), sg)) return;  // whole warps exit together
  const int64_t H = p.heads, D = p.dim, DV = p.dim_v, h = sg.head, state = sg.state;
  const Span span = sg.span;
  const scalar_t* q = static_cast<const scalar_t*>(p.q) + span.batch * p.q_batch_stride + h * p.q_head_stride;
  acc_t qs[kPerLane], w[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + int64_t(i) * kWarp;
    qs[i] = d < D ? acc_t(p.scale) * to_acc(*(q + d)) : acc_t(0);
  }
  acc_t m = neg_inf<acc_t>(), c = 0;
  if (kSummary) {
    load_vector<acc_t>(nullptr, DV, lane, w);
  } else if (p.segments > 1) {  // the state entering this segment, from the combine pass
    const acc_t* entering = scratch_row<acc_t>(p, 1, state, sg.seg);
    m = entering[0];
    c = entering[1];
    load_vector(entering + 2, DV, lane, w);
  } else {
    if (p.m0 != nullptr) {
      m = static_cast<const acc_t*>(p.m0)[state];
      c = static_cast<const acc_t*>(p.c0)[state];
    }
    load_vector(p.w0 != nullptr ? static_cast<const acc_t*>(p.w0) + state * DV : nullptr, DV, lane, w);
  }
  const scalar_t* k = static_cast<const scalar_t*>(p.k) + span.batch * p.k_batch_stride + h * p.k_head_stride;
  const scalar_t* v = static_cast<const scalar_t*>(p.v) + span.batch * p.v_batch_stride + h * p.v_head_stride;
  scalar_t* o = static_cast<scalar_t*>(p.o);
  acc_t krow[kPerLane], vrow[kPerLane];
  const bool any = sg.end > sg.begin;
  load_row(k + sg.begin * p.k_pos_stride, D, any, lane, krow);
  load_row(v + sg.begin * p.v_pos_stride, DV, any, lane, vrow);
  for (int64_t t = sg.begin; t < sg.end; ++t) {
    acc_t knext[kPerLane], vnext[kPerLane];
    const bool more = t + 1 < sg.end;
    const int64_t t_next = more ? t + 1 : t;
    load_row(k + t_next * p.k_pos_stride, D, more, lane, knext);
    load_row(v + t_next * p.v_pos_stride, DV, more, lane, vnext);
    acc_t partial = 0;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) partial += qs[i] * krow[i];  // 0 past d on both sides
    const acc_t s = warp_sum(partial);  // identical in every lane
    acc_t alpha, weight;
    if (s > m) {  // a new maximum: the old sums shrink by e^{m - s} <= 1, the new term weighs 1
      alpha = gate(m, s);
      weight = 1;
      m = s;
    } else {
      alpha = 1;
      weight = exp_acc(s - m);
    }
    c = c * alpha + weight;
    const acc_t inv = c > acc_t(0) ? acc_t(1) / c : acc_t(0);
    const int64_t row = (span.batch * p.seqlen + t) * H + h;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t d = lane + int64_t(i) * kWarp;
      w[i] = w[i] * alpha + weight * vrow[i];
      if (!kSummary && d < DV) o[row * DV + d] = from_acc<scalar_t>(w[i] * inv);
    }
    if (!kSummary && p.m_stats != nullptr && lane == 0) {
      static_cast<acc_t*>(p.m_stats)[row] = m;
      static_cast<acc_t*>(p.c_stats)[row] = c;
    }
    copy_row(knext, krow);
    copy_row(vnext, vrow);
  }
  if (kSummary) {
    acc_t* summary = scratch_row<acc_t>(p, 0, state, sg.seg);
    if (lane == 0) {
      summary[0] = m;
      summary[1] = c;
    }
    store_vector(summary + 2, DV, lane, w);
    return;
  }
  if (!sg.last) return;
  // The final state may alias the initial one (the step op): every lane has read it above.
  __syncwarp();
  if (lane == 0) {
    static_cast<acc_t*>(p.m_last)[state] = m;
    static_cast<acc_t*>(p.c_last)[state] = c;
  }
  store_vector(static_cast<acc_t*>(p.w_last) + state * DV, DV, lane, w);
}

// The state entering each segment: the initial state, then the segments' summaries combined in
// order. One warp per (sequence, head).
template <typename scalar_t, int kPerLane>
__global__ void __launch_bounds__(kWarp * kWarpsPerBlock) prefix_attention_combine_kernel(PrefixAttentionParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = threadIdx.x % kWarp;
  const int64_t state = task_index();
  if (state >= p.num_seqs * p.heads) return;
  const int64_t DV = p.dim_v;
  const Span span = sequence_span(p, state / p.heads);
  const int64_t length = span.end - span.begin;
  const int64_t count = length > 0 ? (length + p.segment_length - 1) / p.segment_length : 1;
  acc_t m = neg_inf<acc_t>(), c = 0, w[kPerLane], ws[kPerLane];
  if (p.m0 != nullptr) {
    m = static_cast<const acc_t*>(p.m0)[state];
    c = static_cast<const acc_t*>(p.c0)[state];
  }
  load_vector(p.w0 != nullptr ? static_cast<const acc_t*>(p.w0) + state * DV : nullptr, DV, lane, w);
  for (int64_t seg = 0; seg < count; ++seg) {
    acc_t* entering = scratch_row<acc_t>(p, 1, state, seg);
    const acc_t* summary = scratch_row<acc_t>(p, 0, state, seg);
    if (lane == 0) {
      entering[0] = m;
      entering[1] = c;
    }
    store_vector(entering + 2, DV, lane, w);
    const acc_t ms = summary[0], cs = summary[1];
    load_vector(summary + 2, DV, lane, ws);
    const acc_t M = ms > m ? ms : m, a = gate(m, M), b = gate(ms, M);
    c = c * a + cs * b;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) w[i] = w[i] * a + ws[i] * b;
    m = M;
  }
}

// kSummary: the segment's map of the reverse scans from a zero start (gate product, K', K), into
// segment_state. Otherwise the full pass from the (K, K') entering from the right.
template <typename scalar_t, int kPerLane, bool kSummary>
__global__ void __launch_bounds__(kWarp * kWarpsPerBlock)
    prefix_attention_bwd_kernel(PrefixAttentionBackwardParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = threadIdx.x % kWarp;
  Segment sg;
  if (!segment_of_task(p, task_index(), sg)) return;
  const int64_t H = p.heads, D = p.dim, DV = p.dim_v, h = sg.head, state = sg.state;
  const Span span = sg.span;
  const acc_t* m_stats = static_cast<const acc_t*>(p.m_stats);
  const acc_t* c_stats = static_cast<const acc_t*>(p.c_stats);
  const scalar_t* q = static_cast<const scalar_t*>(p.q) + span.batch * p.q_batch_stride + h * p.q_head_stride;
  const acc_t* grad_w_last = static_cast<const acc_t*>(p.grad_w_last) + state * DV;
  const acc_t* w_last = static_cast<const acc_t*>(p.w_last) + state * DV;
  acc_t qs[kPerLane], dq[kPerLane], K[kPerLane];
  acc_t last_dot = 0;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + int64_t(i) * kWarp;
    qs[i] = d < D ? acc_t(p.scale) * to_acc(*(q + d)) : acc_t(0);
    dq[i] = 0;
    if (d < DV) last_dot += grad_w_last[d] * w_last[d];
  }
  const acc_t grad_c_last = static_cast<const acc_t*>(p.grad_c_last)[state];
  // The final state's explicit dependence on its max: reaches the score that set it.
  const acc_t grad_max = static_cast<const acc_t*>(p.grad_m_last)[state] -
                         grad_c_last * static_cast<const acc_t*>(p.c_last)[state] - warp_sum(last_dot);
  const acc_t m0 = p.m0 != nullptr ? static_cast<const acc_t*>(p.m0)[state] : neg_inf<acc_t>();
  const acc_t c0 = p.m0 != nullptr ? static_cast<const acc_t*>(p.c0)[state] : acc_t(0);
  const int64_t stat_base = span.batch * p.seqlen * H + h;
  const acc_t m_final = span.end > span.begin ? m_stats[stat_base + (span.end - 1) * H] : m0;
  // What enters from the right: the final state's gradients after the last segment, else the
  // next segment's (K, K') from the combine pass; zeros in the summary pass.
  acc_t K_scalar, m_next = sg.last ? m_final : m_stats[stat_base + sg.end * H], product = 1;
  if (kSummary) {
    K_scalar = 0;
    load_vector<acc_t>(nullptr, DV, lane, K);
  } else if (sg.last) {
    K_scalar = -grad_c_last;
    load_vector(grad_w_last, DV, lane, K);
  } else {
    const acc_t* entering = scratch_row<acc_t>(p, 1, state, sg.seg);
    K_scalar = entering[1];
    load_vector(entering + 2, DV, lane, K);
  }
  const scalar_t* k = static_cast<const scalar_t*>(p.k) + span.batch * p.k_batch_stride + h * p.k_head_stride;
  const scalar_t* v = static_cast<const scalar_t*>(p.v) + span.batch * p.v_batch_stride + h * p.v_head_stride;
  const scalar_t* o = static_cast<const scalar_t*>(p.o);
  const scalar_t* grad_o = static_cast<const scalar_t*>(p.grad_o);
  scalar_t* dk = static_cast<scalar_t*>(p.dk);
  scalar_t* dv = static_cast<scalar_t*>(p.dv);
  acc_t krow[kPerLane], vrow[kPerLane], orow[kPerLane], grow[kPerLane];  // rows of k, v, o, grad_o
  {
    const bool any = sg.end > sg.begin;
    const int64_t t = any ? sg.end - 1 : sg.begin, row = stat_base + t * H;
    load_row(k + t * p.k_pos_stride, D, any && !kSummary, lane, krow);
    load_row(v + t * p.v_pos_stride, DV, any && !kSummary, lane, vrow);
    load_row(o + row * DV, DV, any, lane, orow);
    load_row(grad_o + row * DV, DV, any, lane, grow);
  }
  for (int64_t t = sg.end - 1; t >= sg.begin; --t) {
    const int64_t row = stat_base + t * H;
    // The rows of position t - 1, loaded while t is processed.
    const bool more = t > sg.begin;
    const int64_t t_next = more ? t - 1 : t, row_next = stat_base + t_next * H;
    acc_t knext[kPerLane], vnext[kPerLane], onext[kPerLane], gnext[kPerLane];
    load_row(k + t_next * p.k_pos_stride, D, more && !kSummary, lane, knext);
    load_row(v + t_next * p.v_pos_stride, DV, more && !kSummary, lane, vnext);
    load_row(o + row_next * DV, DV, more, lane, onext);
    load_row(grad_o + row_next * DV, DV, more, lane, gnext);
    const acc_t m_t = m_stats[row], c_t = c_stats[row];
    const acc_t g = gate(m_t, m_next);
    product *= g;
    const acc_t inv = c_t > acc_t(0) ? acc_t(1) / c_t : acc_t(0);
    acc_t o_dot = 0, score = 0;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {  // rows are 0 past d / dv: K stays 0 there
      o_dot += orow[i] * grow[i];
      K[i] = K[i] * g + grow[i] * inv;
      score += qs[i] * krow[i];
    }
    K_scalar = K_scalar * g + warp_sum(o_dot) * inv;
    if (!kSummary) {
      const acc_t e = exp_acc(warp_sum(score) - m_t);
      acc_t v_dot_K = 0;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int64_t d = lane + int64_t(i) * kWarp;
        if (d < DV) dv[row * DV + d] = from_acc<scalar_t>(e * K[i]);
        v_dot_K += vrow[i] * K[i];
      }
      acc_t ds = e * (warp_sum(v_dot_K) - K_scalar);
      const acc_t m_prev = t > span.begin ? m_stats[row - H] : m0;
      if (m_t == m_final && m_prev < m_final) ds += grad_max;  // the first score to reach the final max
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int64_t d = lane + int64_t(i) * kWarp;
        if (d < D) dk[row * D + d] = from_acc<scalar_t>(ds * qs[i]);
        dq[i] += ds * krow[i];
      }
    }
    m_next = m_t;
    copy_row(knext, krow);
    copy_row(vnext, vrow);
    copy_row(onext, orow);
    copy_row(gnext, grow);
  }
  if (kSummary) {
    acc_t* summary = scratch_row<acc_t>(p, 0, state, sg.seg);
    if (lane == 0) {
      summary[0] = product;
      summary[1] = K_scalar;
    }
    store_vector(summary + 2, DV, lane, K);
    return;
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) dq[i] *= acc_t(p.scale);
  store_vector(p.segments > 1 ? static_cast<acc_t*>(p.dq_segments) + (state * p.segments + sg.seg) * D
                              : static_cast<acc_t*>(p.dq_partial) + state * D,
               D, lane, dq);
  if (sg.seg != 0) return;
  // The initial state's gradients, from K and K' at the first position.
  const acc_t g0 = gate(m0, m_next);
  const acc_t dc0 = -g0 * K_scalar;
  acc_t w0_dot = 0;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + int64_t(i) * kWarp;
    K[i] *= g0;
    if (p.w0 != nullptr && d < DV) w0_dot += K[i] * static_cast<const acc_t*>(p.w0)[state * DV + d];
  }
  store_vector(static_cast<acc_t*>(p.dw0) + state * DV, DV, lane, K);
  // grad_max reaches m0 only when no score exceeded it.
  const acc_t dm0 = warp_sum(w0_dot) + dc0 * c0 + (m_final > m0 ? acc_t(0) : grad_max);
  if (lane == 0) {
    static_cast<acc_t*>(p.dm0)[state] = dm0;
    static_cast<acc_t*>(p.dc0)[state] = dc0;
  }
}

// (K, K') entering each segment from the right: the final state's gradients, then the later
// segments' maps composed right to left. One warp per (sequence, head).
template <typename scalar_t, int kPerLane>
__global__ void __launch_bounds__(kWarp * kWarpsPerBlock)
    prefix_attention_combine_bwd_kernel(PrefixAttentionBackwardParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = threadIdx.x % kWarp;
  const int64_t state = task_index();
  if (state >= p.num_seqs * p.heads) return;
  const int64_t DV = p.dim_v;
  const Span span = sequence_span(p, state / p.heads);
  const int64_t length = span.end - span.begin;
  const int64_t count = length > 0 ? (length + p.segment_length - 1) / p.segment_length : 1;
  acc_t K_scalar = -static_cast<const acc_t*>(p.grad_c_last)[state], K[kPerLane], Ks[kPerLane];
  load_vector(static_cast<const acc_t*>(p.grad_w_last) + state * DV, DV, lane, K);
  for (int64_t seg = count - 1; seg >= 0; --seg) {
    acc_t* entering = scratch_row<acc_t>(p, 1, state, seg);
    const acc_t* summary = scratch_row<acc_t>(p, 0, state, seg);
    if (lane == 0) entering[1] = K_scalar;
    store_vector(entering + 2, DV, lane, K);
    const acc_t product = summary[0];
    load_vector(summary + 2, DV, lane, Ks);
    K_scalar = product * K_scalar + summary[1];
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) K[i] = product * K[i] + Ks[i];
  }
}

// dq: the segments' partials summed in order.
template <typename scalar_t>
__global__ void __launch_bounds__(256) prefix_attention_dq_kernel(PrefixAttentionBackwardParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t total = p.num_seqs * p.heads * p.dim;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t state = i / p.dim, d = i % p.dim;
    const Span span = sequence_span(p, state / p.heads);
    const int64_t length = span.end - span.begin;
    const int64_t count = length > 0 ? (length + p.segment_length - 1) / p.segment_length : 1;
    acc_t sum = 0;
    for (int64_t seg = 0; seg < count; ++seg)
      sum += static_cast<const acc_t*>(p.dq_segments)[(state * p.segments + seg) * p.dim + d];
    static_cast<acc_t*>(p.dq_partial)[i] = sum;
  }
}

inline int per_lane(int64_t dim, int64_t dim_v) {
  const int64_t widest = dim > dim_v ? dim : dim_v;
  return widest <= 32 ? 1 : widest <= 64 ? 2 : widest <= 128 ? 4 : 8;
}

inline unsigned warp_blocks(int64_t warps) { return unsigned((warps + kWarpsPerBlock - 1) / kWarpsPerBlock); }

template <typename scalar_t, int kPerLane>
void forward_passes(const PrefixAttentionParams& p, cudaStream_t stream) {
  const unsigned threads = kWarp * kWarpsPerBlock, blocks = warp_blocks(p.num_seqs * p.heads * p.segments);
  if (p.segments > 1) {
    launch_kernel<prefix_attention_fwd_kernel<scalar_t, kPerLane, true>>(blocks, threads, 0, stream, p);
    launch_kernel<prefix_attention_combine_kernel<scalar_t, kPerLane>>(warp_blocks(p.num_seqs * p.heads), threads,
                                                                         0, stream, p);
  }
  launch_kernel<prefix_attention_fwd_kernel<scalar_t, kPerLane, false>>(blocks, threads, 0, stream, p);
}

template <typename scalar_t, int kPerLane>
void backward_passes(const PrefixAttentionBackwardParams& p, cudaStream_t stream) {
  const unsigned threads = kWarp * kWarpsPerBlock, blocks = warp_blocks(p.num_seqs * p.heads * p.segments);
  if (p.segments > 1) {
    launch_kernel<prefix_attention_bwd_kernel<scalar_t, kPerLane, true>>(blocks, threads, 0, stream, p);
    launch_kernel<prefix_attention_combine_bwd_kernel<scalar_t, kPerLane>>(warp_blocks(p.num_seqs * p.heads),
                                                                             threads, 0, stream, p);
  }
  launch_kernel<prefix_attention_bwd_kernel<scalar_t, kPerLane, false>>(blocks, threads, 0, stream, p);
  if (p.segments > 1) {
    const int64_t items = p.num_seqs * p.heads * p.dim;
    const int64_t stride_blocks = (items + 255) / 256;
    launch_kernel<prefix_attention_dq_kernel<scalar_t>>(unsigned(stride_blocks < 65536 ? stride_blocks : 65536), 256,
                                                         0, stream, p);
  }
}

template <typename scalar_t>
void launch_forward(const PrefixAttentionParams& p, cudaStream_t stream) {
  if (p.num_seqs * p.heads == 0) return;
  switch (per_lane(p.dim, p.dim_v)) {
    case 1: forward_passes<scalar_t, 1>(p, stream); break;
    case 2: forward_passes<scalar_t, 2>(p, stream); break;
    case 4: forward_passes<scalar_t, 4>(p, stream); break;
    default: forward_passes<scalar_t, 8>(p, stream); break;
  }
}

template <typename scalar_t>
void launch_backward(const PrefixAttentionBackwardParams& p, cudaStream_t stream) {
  if (p.num_seqs * p.heads == 0) return;
  switch (per_lane(p.dim, p.dim_v)) {
    case 1: backward_passes<scalar_t, 1>(p, stream); break;
    case 2: backward_passes<scalar_t, 2>(p, stream); break;
    case 4: backward_passes<scalar_t, 4>(p, stream); break;
    default: backward_passes<scalar_t, 8>(p, stream); break;
  }
}

}  // namespace prefix
}  // namespace cuda
}  // namespace scangraph

namespace scangraph {
template <typename T>
void prefix_attention_fwd_cuda(const PrefixAttentionParams& p, cudaStream_t stream) {
  cuda::prefix::launch_forward<T>(p, stream);
}
template <typename T>
void prefix_attention_bwd_cuda(const PrefixAttentionBackwardParams& p, cudaStream_t stream) {
  cuda::prefix::launch_backward<T>(p, stream);
}
}  // namespace scangraph

// One instantiation file per dtype (prefix_attention_<dtype>.cu) instantiates the entry points of
// prefix_attention.h for its element type, so the dtypes compile in parallel.
#define SCANGRAPH_INSTANTIATE_PREFIX_ATTENTION(T)                                                       \
  template void scangraph::prefix_attention_fwd_cuda<T>(const scangraph::PrefixAttentionParams&,        \
                                                        cudaStream_t);                                   \
  template void scangraph::prefix_attention_bwd_cuda<T>(const scangraph::PrefixAttentionBackwardParams&, \
                                                        cudaStream_t);
