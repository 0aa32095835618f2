// CUDA kernels of prefix-scan attention (Aaren), torch-free (raw pointers + strides). The math
// is in scangraph/prefix_attention_params.h.
//
// One warp owns one (sequence, head) and walks its positions in order: lane l holds elements
// l, l + 32, ... of q, of the numerator w (forward) and of the reverse-scan vector K and the dq
// sum (backward), in registers. Each position's row of k / v / o is read and written with one
// coalesced access per 32 elements; dot products are reduced with a fixed xor butterfly, which
// leaves the bitwise same sum in every lane, so the branch on a new maximum is warp-uniform.
// Every output element has one owner lane: no atomics, deterministic. The scan over L is
// sequential within a warp; parallelism comes from batch x heads (x sequences) warps.
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

template <typename scalar_t, int kPerLane>
__global__ void __launch_bounds__(kWarp * kWarpsPerBlock) prefix_attention_fwd_kernel(PrefixAttentionParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = threadIdx.x % kWarp;
  const int64_t task = task_index();
  if (task >= p.num_seqs * p.heads) return;  // whole warps exit together
  const int64_t H = p.heads, D = p.dim, DV = p.dim_v;
  const int64_t seq = task / H, h = task % H, state = seq * H + h;
  const Span span = sequence_span(p, seq);
  const scalar_t* q = static_cast<const scalar_t*>(p.q) + span.batch * p.q_batch_stride + h * p.q_head_stride;
  acc_t qs[kPerLane], w[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + int64_t(i) * kWarp;
    qs[i] = d < D ? acc_t(p.scale) * to_acc(*(q + d)) : acc_t(0);
  }
  acc_t m = neg_inf<acc_t>(), c = 0;
  if (p.m0 != nullptr) {
    m = static_cast<const acc_t*>(p.m0)[state];
    c = static_cast<const acc_t*>(p.c0)[state];
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + int64_t(i) * kWarp;
    w[i] = (p.w0 != nullptr && d < DV) ? static_cast<const acc_t*>(p.w0)[state * DV + d] : acc_t(0);
  }
  const scalar_t* k = static_cast<const scalar_t*>(p.k) + span.batch * p.k_batch_stride + h * p.k_head_stride;
  const scalar_t* v = static_cast<const scalar_t*>(p.v) + span.batch * p.v_batch_stride + h * p.v_head_stride;
  scalar_t* o = static_cast<scalar_t*>(p.o);
  acc_t krow[kPerLane], vrow[kPerLane];
  const bool any = span.end > span.begin;
  load_row(k + span.begin * p.k_pos_stride, D, any, lane, krow);
  load_row(v + span.begin * p.v_pos_stride, DV, any, lane, vrow);
  for (int64_t t = span.begin; t < span.end; ++t) {
    acc_t knext[kPerLane], vnext[kPerLane];
    const bool more = t + 1 < span.end;
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
      if (d < DV) o[row * DV + d] = from_acc<scalar_t>(w[i] * inv);
    }
    if (p.m_stats != nullptr && lane == 0) {
      static_cast<acc_t*>(p.m_stats)[row] = m;
      static_cast<acc_t*>(p.c_stats)[row] = c;
    }
    copy_row(knext, krow);
    copy_row(vnext, vrow);
  }
  // The final state may alias the initial one (the step op): every lane has read it above.
  __syncwarp();
  if (lane == 0) {
    static_cast<acc_t*>(p.m_last)[state] = m;
    static_cast<acc_t*>(p.c_last)[state] = c;
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + int64_t(i) * kWarp;
    if (d < DV) static_cast<acc_t*>(p.w_last)[state * DV + d] = w[i];
  }
}

template <typename scalar_t, int kPerLane>
__global__ void __launch_bounds__(kWarp * kWarpsPerBlock)
    prefix_attention_bwd_kernel(PrefixAttentionBackwardParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = threadIdx.x % kWarp;
  const int64_t task = task_index();
  if (task >= p.num_seqs * p.heads) return;
  const int64_t H = p.heads, D = p.dim, DV = p.dim_v;
  const int64_t seq = task / H, h = task % H, state = seq * H + h;
  const Span span = sequence_span(p, seq);
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
    K[i] = d < DV ? grad_w_last[d] : acc_t(0);
    if (d < DV) last_dot += K[i] * w_last[d];
  }
  const acc_t grad_c_last = static_cast<const acc_t*>(p.grad_c_last)[state];
  // The final state's explicit dependence on its max: reaches the score that set it.
  acc_t grad_max = static_cast<const acc_t*>(p.grad_m_last)[state] -
                   grad_c_last * static_cast<const acc_t*>(p.c_last)[state] - warp_sum(last_dot);
  const acc_t m0 = p.m0 != nullptr ? static_cast<const acc_t*>(p.m0)[state] : neg_inf<acc_t>();
  const acc_t c0 = p.m0 != nullptr ? static_cast<const acc_t*>(p.c0)[state] : acc_t(0);
  const int64_t stat_base = span.batch * p.seqlen * H + h;
  const acc_t m_final = span.end > span.begin ? m_stats[stat_base + (span.end - 1) * H] : m0;
  acc_t K_scalar = -grad_c_last, m_next = m_final;
  const scalar_t* k = static_cast<const scalar_t*>(p.k) + span.batch * p.k_batch_stride + h * p.k_head_stride;
  const scalar_t* v = static_cast<const scalar_t*>(p.v) + span.batch * p.v_batch_stride + h * p.v_head_stride;
  const scalar_t* o = static_cast<const scalar_t*>(p.o);
  const scalar_t* grad_o = static_cast<const scalar_t*>(p.grad_o);
  scalar_t* dk = static_cast<scalar_t*>(p.dk);
  scalar_t* dv = static_cast<scalar_t*>(p.dv);
  acc_t krow[kPerLane], vrow[kPerLane], orow[kPerLane], grow[kPerLane];  // rows of k, v, o, grad_o
  {
    const bool any = span.end > span.begin;
    const int64_t t = any ? span.end - 1 : span.begin, row = stat_base + t * H;
    load_row(k + t * p.k_pos_stride, D, any, lane, krow);
    load_row(v + t * p.v_pos_stride, DV, any, lane, vrow);
    load_row(o + row * DV, DV, any, lane, orow);
    load_row(grad_o + row * DV, DV, any, lane, grow);
  }
  for (int64_t t = span.end - 1; t >= span.begin; --t) {
    const int64_t row = stat_base + t * H;
    // The rows of position t - 1, loaded while t is processed.
    const bool more = t > span.begin;
    const int64_t t_next = more ? t - 1 : t, row_next = stat_base + t_next * H;
    acc_t knext[kPerLane], vnext[kPerLane], onext[kPerLane], gnext[kPerLane];
    load_row(k + t_next * p.k_pos_stride, D, more, lane, knext);
    load_row(v + t_next * p.v_pos_stride, DV, more, lane, vnext);
    load_row(o + row_next * DV, DV, more, lane, onext);
    load_row(grad_o + row_next * DV, DV, more, lane, gnext);
    const acc_t m_t = m_stats[row], c_t = c_stats[row];
    const acc_t g = gate(m_t, m_next);
    const acc_t inv = c_t > acc_t(0) ? acc_t(1) / c_t : acc_t(0);
    acc_t o_dot = 0, score = 0;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {  // rows are 0 past d / dv: K stays 0 there
      o_dot += orow[i] * grow[i];
      K[i] = K[i] * g + grow[i] * inv;
      score += qs[i] * krow[i];
    }
    K_scalar = K_scalar * g + warp_sum(o_dot) * inv;
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
    if (m_t == m_final && m_prev < m_final) {  // the first score to reach the final max
      ds += grad_max;
      grad_max = 0;
    }
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t d = lane + int64_t(i) * kWarp;
      if (d < D) dk[row * D + d] = from_acc<scalar_t>(ds * qs[i]);
      dq[i] += ds * krow[i];
    }
    m_next = m_t;
    copy_row(knext, krow);
    copy_row(vnext, vrow);
    copy_row(onext, orow);
    copy_row(gnext, grow);
  }
  const acc_t g0 = gate(m0, m_next);
  const acc_t dc0 = -g0 * K_scalar;
  acc_t w0_dot = 0;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + int64_t(i) * kWarp;
    if (d < DV) {
      static_cast<acc_t*>(p.dw0)[state * DV + d] = g0 * K[i];
      if (p.w0 != nullptr) w0_dot += g0 * K[i] * static_cast<const acc_t*>(p.w0)[state * DV + d];
    }
    if (d < D) static_cast<acc_t*>(p.dq_partial)[state * D + d] = acc_t(p.scale) * dq[i];
  }
  // grad_max is nonzero here only when no score exceeded m0.
  const acc_t dm0 = warp_sum(w0_dot) + dc0 * c0 + grad_max;
  if (lane == 0) {
    static_cast<acc_t*>(p.dm0)[state] = dm0;
    static_cast<acc_t*>(p.dc0)[state] = dc0;
  }
}

inline int per_lane(int64_t dim, int64_t dim_v) {
  const int64_t widest = dim > dim_v ? dim : dim_v;
  return widest <= 32 ? 1 : widest <= 64 ? 2 : widest <= 128 ? 4 : 8;
}

template <typename Params>
inline unsigned num_blocks(const Params& p) {
  return unsigned((p.num_seqs * p.heads + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

template <typename scalar_t>
void launch_forward(const PrefixAttentionParams& p, cudaStream_t stream) {
  const unsigned blocks = num_blocks(p);
  if (blocks == 0) return;
  const unsigned threads = kWarp * kWarpsPerBlock;
  switch (per_lane(p.dim, p.dim_v)) {
    case 1: launch_kernel<prefix_attention_fwd_kernel<scalar_t, 1>>(blocks, threads, 0, stream, p); break;
    case 2: launch_kernel<prefix_attention_fwd_kernel<scalar_t, 2>>(blocks, threads, 0, stream, p); break;
    case 4: launch_kernel<prefix_attention_fwd_kernel<scalar_t, 4>>(blocks, threads, 0, stream, p); break;
    default: launch_kernel<prefix_attention_fwd_kernel<scalar_t, 8>>(blocks, threads, 0, stream, p); break;
  }
}

template <typename scalar_t>
void launch_backward(const PrefixAttentionBackwardParams& p, cudaStream_t stream) {
  const unsigned blocks = num_blocks(p);
  if (blocks == 0) return;
  const unsigned threads = kWarp * kWarpsPerBlock;
  switch (per_lane(p.dim, p.dim_v)) {
    case 1: launch_kernel<prefix_attention_bwd_kernel<scalar_t, 1>>(blocks, threads, 0, stream, p); break;
    case 2: launch_kernel<prefix_attention_bwd_kernel<scalar_t, 2>>(blocks, threads, 0, stream, p); break;
    case 4: launch_kernel<prefix_attention_bwd_kernel<scalar_t, 4>>(blocks, threads, 0, stream, p); break;
    default: launch_kernel<prefix_attention_bwd_kernel<scalar_t, 8>>(blocks, threads, 0, stream, p); break;
  }
}

}  // namespace prefix
}  // namespace cuda
}  // namespace scangraph

// One instantiation file per dtype (prefix_attention_<dtype>.cu) defines the entry points
// declared in prefix_attention.h for its element type, so the dtypes compile in parallel.
#define SCANGRAPH_INSTANTIATE_PREFIX_ATTENTION(SCALAR, NAME)                                        \
  namespace scangraph {                                                                             \
  void prefix_attention_fwd_cuda_##NAME(const PrefixAttentionParams& p, cudaStream_t stream) {      \
    cuda::prefix::launch_forward<SCALAR>(p, stream);                                                \
  }                                                                                                 \
  void prefix_attention_bwd_cuda_##NAME(const PrefixAttentionBackwardParams& p, cudaStream_t stream) { \
    cuda::prefix::launch_backward<SCALAR>(p, stream);                                               \
  }                                                                                                 \
  }
