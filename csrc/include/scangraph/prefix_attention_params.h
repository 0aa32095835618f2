// Torch-free parameter structs of the prefix-scan attention (Aaren) kernels.
//
// Per sequence and head, with s_t = scale * q . k_t and the state (m, c, w) = (running max,
// denominator, numerator of dv values):
//   m_t = max(m_{t-1}, s_t),  c_t = c_{t-1} e^{m_{t-1} - m_t} + e^{s_t - m_t},
//   w_t = w_{t-1} e^{m_{t-1} - m_t} + e^{s_t - m_t} v_t,  o_t = w_t / c_t   (0 where c_t = 0)
// starting from (m0, c0, w0), or from (-inf, 0, 0): the running max never starts at 0, so any
// finite scores are safe. docs/prefix_attention.md has the backward.
//
// Layouts: q (batch or 1, heads, d) with q_batch_stride 0 when one query serves every batch;
// k (batch, L, heads, d) and v (batch, L, heads, dv) with unit last stride; o, grad_o, dk, dv
// contiguous (batch, L, heads, dv | d); the per-position statistics m, c contiguous
// (batch, L, heads); states contiguous (num_seqs, heads[, dv]). Statistics, states and their
// gradients are in the opmath type (float; double for double inputs). With cu_seqlens
// (int32, num_seqs + 1 offsets into L, batch == 1) sequence i is positions
// cu_seqlens[i] .. cu_seqlens[i+1] of batch 0; without it sequence i is batch i, all L positions.
// Offsets are 64-bit everywhere.
#pragma once
#include <cstdint>

namespace scangraph {

// The CUDA kernels' launch shape. A warp owns one (sequence, head) and one segment of at most
// segment_length positions. When the (sequence, head) pairs leave the GPU short of warps
// (target_warps: SMs x 64), L is cut into segments: each computes its summary state from the
// empty one, a short pass combines them in order (the combine of (m, c, w) is associative), and
// every segment runs from its true state. The backward does the same for its reverse scans.
constexpr int64_t kPrefixMinSegment = 16;  // shorter segments would cost more in passes than they save

inline int64_t prefix_attention_segment_length(int64_t tasks, int64_t seqlen, int64_t target_warps) {
  if (tasks <= 0 || seqlen <= kPrefixMinSegment) return seqlen > 0 ? seqlen : 1;
  const int64_t want = (target_warps + tasks - 1) / tasks;  // segments per (sequence, head)
  int64_t length = (seqlen + want - 1) / want;
  if (length < kPrefixMinSegment) length = kPrefixMinSegment;
  return length;
}

struct PrefixAttentionParams {
  const void* q;
  const void* k;
  const void* v;
  void* o;
  void* m_stats;             // per-position running max; nullptr: not kept (the step op)
  void* c_stats;             // per-position denominator; nullptr like m_stats
  const void* m0;            // initial state; all three nullptr: the empty state (-inf, 0, 0)
  const void* c0;
  const void* w0;
  // Final state. May alias m0 / c0 / w0 (the in-place step op): a kernel reads a sequence's
  // initial state completely before it writes that sequence's final state.
  void* m_last;
  void* c_last;
  void* w_last;
  const int32_t* cu_seqlens;  // nullptr: one sequence per batch entry
  int64_t batch, seqlen, heads, dim, dim_v, num_seqs;
  int64_t q_batch_stride, q_head_stride;
  int64_t k_batch_stride, k_pos_stride, k_head_stride;
  int64_t v_batch_stride, v_pos_stride, v_head_stride;
  double scale;
  // CUDA only: segments of at most segment_length positions (segments = ceil(seqlen / length);
  // shorter packed sequences use fewer), and their scratch (2, num_seqs, heads, segments, 2 + dv)
  // opmath: each segment's summary (m, c, w), then the state entering it.
  int64_t segment_length;
  int64_t segments;
  void* segment_state;
};

// Backward, given grad_o and the gradients reaching the final state (grad_m_last, grad_c_last,
// grad_w_last; zeros when unused). Two reverse scans per sequence and head with gates
// e^{m_j - m_{j+1}} <= 1:
//   K_j = grad_o_j / c_j + e^{m_j - m_{j+1}} K_{j+1},  K'_j = (o_j . grad_o_j) / c_j + e^{..} K'_{j+1}
// started from K = grad_w_last, K' = -grad_c_last at the last position; then
//   dv_j = e^{s_j - m_j} K_j,  ds_j = e^{s_j - m_j} (v_j . K_j - K'_j),  dk_j = scale ds_j q,
//   dq = scale sum_j ds_j k_j, dw0 = e^{m0 - m_first} K_first, dc0 = -e^{m0 - m_first} K'_first,
//   dm0 = dw0 . w0 + dc0 c0.
// The final state depends on m_last explicitly: grad_m_last - grad_c_last c_last -
// grad_w_last . w_last reaches the score that set the final max (its first occurrence), or m0
// when the initial max was never exceeded.
struct PrefixAttentionBackwardParams {
  const void* q;
  const void* k;
  const void* v;
  const void* o;
  const void* m_stats;
  const void* c_stats;
  const void* m0;            // nullptr: the empty initial state
  const void* c0;
  const void* w0;
  const void* c_last;
  const void* w_last;
  const void* grad_o;
  const void* grad_m_last;
  const void* grad_c_last;
  const void* grad_w_last;
  const int32_t* cu_seqlens;
  void* dq_partial;          // (num_seqs, heads, d) opmath: one partial per sequence, summed after
  void* dk;
  void* dv;
  void* dm0;                 // (num_seqs, heads) opmath, written even without an initial state
  void* dc0;
  void* dw0;
  int64_t batch, seqlen, heads, dim, dim_v, num_seqs;
  int64_t q_batch_stride, q_head_stride;
  int64_t k_batch_stride, k_pos_stride, k_head_stride;
  int64_t v_batch_stride, v_pos_stride, v_head_stride;
  double scale;
  // CUDA only, as in the forward: the reverse scans' segments, their scratch (2, num_seqs,
  // heads, segments, 2 + dv): each segment's map (gate product, K, K') and then (K, K') entering
  // it from the right; and dq per segment (num_seqs, heads, segments, d), summed in order.
  int64_t segment_length;
  int64_t segments;
  void* segment_state;
  void* dq_segments;
};

}  // namespace scangraph
