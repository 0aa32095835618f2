// CUDA kernels of the sparse message-passing family, torch-free (raw pointers + strides).
//
// One warp owns one destination row (spmm) or one row's edges (sddmm): the warp reads 32 edge
// indices with one coalesced load and broadcasts them with shuffles, and each lane owns
// features lane, lane + 32, ... so the gathers of x rows are coalesced. Every output element is
// written by exactly one lane: no atomics, deterministic. Reductions across lanes use a fixed
// butterfly order. Skewed rows: spmm (every reduction) splits rows longer than kSpmmSplitEdges
// into segments of one warp each, whose partials the row's warp combines in segment order; the
// per-edge kernels (sddmm, dweight of max / min) give each warp 32 consecutive edges whatever
// their rows, which merges short rows and splits long ones alike.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include <cstdint>

#include "numeric.cuh"
#include "scangraph/sparse_params.h"
#include "launch.cuh"

namespace scangraph {
namespace cuda {

constexpr int kWarp = 32;
// 8 warps per block: enough resident warps to hide gather latency, small enough that a block's
// rows finish at similar times.
constexpr int kWarpsPerBlock = 8;
// Features per lane held in registers at once; F is walked in tiles of kWarp * kFeaturesPerLane.
constexpr int kFeaturesPerLane = 4;

using numeric::Acc;
using numeric::from_acc;
using numeric::to_acc;

__device__ __forceinline__ int lane_index() { return threadIdx.x % kWarp; }

// The work item (row, source, ...) of this warp: kWarpsPerBlock warps per block.
__device__ __forceinline__ int64_t warp_index() {
  return int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
}

// The row of edge e: the last r in [0, num_rows) with rowptr[r] <= e, i.e. the row owning e
// (empty rows before it share its rowptr value and lose the tie). log2(num_rows) reads of rowptr,
// which the warps of a block share in cache.
__device__ __forceinline__ int64_t row_of_edge(const int64_t* rowptr, int64_t num_rows, int64_t e) {
  int64_t lo = 0, hi = num_rows;  // invariant: rowptr[lo] <= e < rowptr[hi]
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (rowptr[mid] <= e) lo = mid;
    else hi = mid;
  }
  return lo;
}

// Segment s of a split plan over rowptr: its row and edges [begin, end); false for a surplus
// slot (the launch is sized by max_segments, the real count lives on the device).
__device__ __forceinline__ bool segment_span(const SplitPlan& plan, const int64_t* rowptr, int64_t num_rows,
                                             int64_t s, int64_t& row, int64_t& begin, int64_t& end) {
  if (s >= plan.max_segments || s >= plan.segment_ptr[num_rows]) return false;
  row = plan.segment_row[s];
  begin = rowptr[row] + (s - plan.segment_ptr[row]) * kSpmmSplitEdges;
  const int64_t row_end = rowptr[row + 1];
  end = begin + kSpmmSplitEdges < row_end ? begin + kSpmmSplitEdges : row_end;
  return true;
}

// The segments [first, last) of a row: empty when the plan is (no row split) or the row is short.
__device__ __forceinline__ void row_segments(const SplitPlan& plan, int64_t row, int64_t& first, int64_t& last) {
  first = plan.segment_ptr ? plan.segment_ptr[row] : 0;
  last = plan.segment_ptr ? plan.segment_ptr[row + 1] : 0;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {  // fixed butterfly order: deterministic
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The lanes of this lane's group of kGroup (a whole warp, or a slice of it owning one row).
template <int kGroup>
__device__ __forceinline__ unsigned group_mask(int lane) {
  if constexpr (kGroup == kWarp) return 0xffffffffu;
  else return ((1u << kGroup) - 1u) << (lane / kGroup * kGroup);
}

// Adds sum_{e in [begin, end)} w[e, h] * x[col[e], h, f] to acc[k] for the lane's features
// f = f0 + k * kGroup + glane (glane: the lane's index in its group), edges in CSR order.
// Called by a whole group of kGroup lanes (shuffles within the group).
template <typename scalar_t, typename index_t, int kGroup = kWarp>
__device__ __forceinline__ void accumulate_messages(const SpmmParams& p, int64_t begin, int64_t end, int64_t h,
                                                    int64_t f0, int lane,
                                                    typename Acc<scalar_t>::type (&acc)[kFeaturesPerLane]) {
  using acc_t = typename Acc<scalar_t>::type;
  const index_t* col = static_cast<const index_t*>(p.col);
  const scalar_t* w = static_cast<const scalar_t*>(p.weight);
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const int64_t F = p.num_features;
  const unsigned mask = group_mask<kGroup>(lane);
  const int glane = lane % kGroup;
  for (int64_t e0 = begin; e0 < end; e0 += kGroup) {
    // Each lane loads one edge of this batch; shuffles hand them to every lane of the group.
    const int64_t my_edge = e0 + glane;
    int64_t my_src = 0;
    acc_t my_w = acc_t(1);
    if (my_edge < end) {
      my_src = int64_t(col[my_edge]);
      if (w) my_w = to_acc(w[my_edge * p.weight_edge_stride + h * p.weight_head_stride]);
    }
    const int batch = int(end - e0 < kGroup ? end - e0 : kGroup);
    for (int j = 0; j < batch; ++j) {
      const int64_t src = __shfl_sync(mask, my_src, j, kGroup);
      const acc_t we = __shfl_sync(mask, my_w, j, kGroup);
      const scalar_t* xr = x + src * p.x_row_stride + h * p.x_head_stride;
#pragma unroll
      for (int k = 0; k < kFeaturesPerLane; ++k) {
        const int64_t f = f0 + k * kGroup + glane;
        if (f < F) acc[k] += we * to_acc(xr[f]);
      }
    }
  }
}

// Sum / mean, one group of kGroup lanes per row: a whole warp, or at small F (<= 16, launched
// with kGroup = 16) two short rows per warp, so that lanes are not left without a feature. A
// row that the split plan cut into segments (see kSpmmSplitEdges) was summed by
// spmm_segment_kernel: its group adds the partials in segment order, so the result is the same
// on every run.
template <typename scalar_t, typename index_t, int kGroup>
__global__ void spmm_kernel(SpmmParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = lane_index(), glane = lane % kGroup;
  const int64_t row = warp_index() * (kWarp / kGroup) + lane / kGroup;
  if (row >= p.num_rows) return;  // whole groups leave: the shuffles only span a group
  scalar_t* out = static_cast<scalar_t*>(p.out);
  const acc_t* partial = static_cast<const acc_t*>(p.partial);
  const int64_t begin = p.rowptr[row], end = p.rowptr[row + 1];
  int64_t seg_begin, seg_end;
  row_segments(p.plan, row, seg_begin, seg_end);
  const acc_t scale = (p.reduce == Reduce::Mean && end > begin) ? acc_t(1) / acc_t(end - begin) : acc_t(1);
  const int64_t H = p.num_heads, F = p.num_features;
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t f0 = 0; f0 < F; f0 += kGroup * kFeaturesPerLane) {
      acc_t acc[kFeaturesPerLane];
#pragma unroll
      for (int k = 0; k < kFeaturesPerLane; ++k) acc[k] = acc_t(0);
      if (seg_end > seg_begin) {
        for (int64_t s = seg_begin; s < seg_end; ++s) {
          const acc_t* part = partial + (s * H + h) * F;
#pragma unroll
          for (int k = 0; k < kFeaturesPerLane; ++k) {
            const int64_t f = f0 + k * kGroup + glane;
            if (f < F) acc[k] += part[f];
          }
        }
      } else {
        accumulate_messages<scalar_t, index_t, kGroup>(p, begin, end, h, f0, lane, acc);
      }
      scalar_t* o = out + (row * H + h) * F;
#pragma unroll
      for (int k = 0; k < kFeaturesPerLane; ++k) {
        const int64_t f = f0 + k * kGroup + glane;
        if (f < F) o[f] = from_acc<scalar_t>(acc[k] * scale);
      }
    }
  }
}

// One warp per segment of a split row: the unscaled sum of the segment's messages, kept in the
// accumulator type in partial[s] (spmm_kernel adds them up, scales and rounds).
template <typename scalar_t, typename index_t>
__global__ void spmm_segment_kernel(SpmmParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = lane_index();
  const int64_t s = warp_index();
  int64_t row, begin, end;
  if (!segment_span(p.plan, p.rowptr, p.num_rows, s, row, begin, end)) return;
  acc_t* partial = static_cast<acc_t*>(p.partial);
  const int64_t H = p.num_heads, F = p.num_features;
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t f0 = 0; f0 < F; f0 += kWarp * kFeaturesPerLane) {
      acc_t acc[kFeaturesPerLane];
#pragma unroll
      for (int k = 0; k < kFeaturesPerLane; ++k) acc[k] = acc_t(0);
      accumulate_messages<scalar_t, index_t>(p, begin, end, h, f0, lane, acc);
      acc_t* part = partial + (s * H + h) * F;
#pragma unroll
      for (int k = 0; k < kFeaturesPerLane; ++k) {
        const int64_t f = f0 + k * kWarp + lane;
        if (f < F) part[f] = acc[k];
      }
    }
  }
}

// Max / min: each lane keeps the best of sign * message for its features and the edge that
// produced it (min = -max(-v), negation is exact); edges are visited in CSR order and compared
// strictly, so the first edge wins ties. The first edge is always taken (arg < 0), NaN or not.
template <typename scalar_t, typename index_t>
__device__ __forceinline__ void scan_extreme(const SpmmParams& p, int64_t begin, int64_t end, int64_t h, int64_t f0,
                                             int lane, typename Acc<scalar_t>::type sign,
                                             typename Acc<scalar_t>::type (&best)[kFeaturesPerLane],
                                             int64_t (&arg)[kFeaturesPerLane]) {
  using acc_t = typename Acc<scalar_t>::type;
  const index_t* col = static_cast<const index_t*>(p.col);
  const scalar_t* w = static_cast<const scalar_t*>(p.weight);
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const int64_t F = p.num_features;
  for (int64_t e = begin; e < end; ++e) {
    const scalar_t* xr = x + int64_t(col[e]) * p.x_row_stride + h * p.x_head_stride;
    const acc_t we = w ? to_acc(w[e * p.weight_edge_stride + h * p.weight_head_stride]) : acc_t(1);
#pragma unroll
    for (int k = 0; k < kFeaturesPerLane; ++k) {
      const int64_t f = f0 + k * kWarp + lane;
      if (f < F) {
        const acc_t v = sign * we * to_acc(xr[f]);
        if (arg[k] < 0 || v > best[k]) { best[k] = v; arg[k] = e; }
      }
    }
  }
}

// One warp per row. A row that the split plan cut into segments was scanned by
// spmm_extreme_segment_kernel: this warp combines the segments' (best, arg) in segment order
// with the same strict comparison, which picks exactly the edge a single pass would.
template <typename scalar_t, typename index_t>
__global__ void spmm_extreme_kernel(SpmmParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = lane_index();
  const int64_t row = warp_index();
  if (row >= p.num_rows) return;
  scalar_t* out = static_cast<scalar_t*>(p.out);
  const acc_t* partial = static_cast<const acc_t*>(p.partial);
  const acc_t sign = p.reduce == Reduce::Max ? acc_t(1) : acc_t(-1);
  const int64_t begin = p.rowptr[row], end = p.rowptr[row + 1], H = p.num_heads, F = p.num_features;
  int64_t seg_begin, seg_end;
  row_segments(p.plan, row, seg_begin, seg_end);
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t f0 = 0; f0 < F; f0 += kWarp * kFeaturesPerLane) {
      acc_t best[kFeaturesPerLane];
      int64_t arg[kFeaturesPerLane];
#pragma unroll
      for (int k = 0; k < kFeaturesPerLane; ++k) { best[k] = acc_t(0); arg[k] = -1; }
      if (seg_end > seg_begin) {
        for (int64_t s = seg_begin; s < seg_end; ++s) {
#pragma unroll
          for (int k = 0; k < kFeaturesPerLane; ++k) {
            const int64_t f = f0 + k * kWarp + lane, o = (s * H + h) * F + f;
            if (f < F && (arg[k] < 0 || partial[o] > best[k])) { best[k] = partial[o]; arg[k] = p.partial_arg[o]; }
          }
        }
      } else {
        scan_extreme<scalar_t, index_t>(p, begin, end, h, f0, lane, sign, best, arg);
      }
#pragma unroll
      for (int k = 0; k < kFeaturesPerLane; ++k) {
        const int64_t f = f0 + k * kWarp + lane;
        if (f < F) {
          const int64_t o = (row * H + h) * F + f;
          out[o] = from_acc<scalar_t>(arg[k] < 0 ? acc_t(0) : sign * best[k]);
          p.arg[o] = arg[k];
        }
      }
    }
  }
}

// One warp per segment of a split row: its (sign * best, arg) into partial / partial_arg.
template <typename scalar_t, typename index_t>
__global__ void spmm_extreme_segment_kernel(SpmmParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = lane_index();
  const int64_t s = warp_index();
  int64_t row, begin, end;
  if (!segment_span(p.plan, p.rowptr, p.num_rows, s, row, begin, end)) return;
  acc_t* partial = static_cast<acc_t*>(p.partial);
  const acc_t sign = p.reduce == Reduce::Max ? acc_t(1) : acc_t(-1);
  const int64_t H = p.num_heads, F = p.num_features;
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t f0 = 0; f0 < F; f0 += kWarp * kFeaturesPerLane) {
      acc_t best[kFeaturesPerLane];
      int64_t arg[kFeaturesPerLane];
#pragma unroll
      for (int k = 0; k < kFeaturesPerLane; ++k) { best[k] = acc_t(0); arg[k] = -1; }
      scan_extreme<scalar_t, index_t>(p, begin, end, h, f0, lane, sign, best, arg);
#pragma unroll
      for (int k = 0; k < kFeaturesPerLane; ++k) {
        const int64_t f = f0 + k * kWarp + lane, o = (s * H + h) * F + f;
        if (f < F) { partial[o] = best[k]; p.partial_arg[o] = arg[k]; }
      }
    }
  }
}

// dx of max / min at feature f of head h: the gradients that the edges of transpose entries
// [begin, end) (out-edges of one source) won there.
template <typename scalar_t, typename index_t>
__device__ __forceinline__ typename Acc<scalar_t>::type arg_dx_sum(const SpmmArgBackwardParams& p, int64_t begin,
                                                                   int64_t end, int64_t h, int64_t f) {
  using acc_t = typename Acc<scalar_t>::type;
  const index_t* col_t = static_cast<const index_t*>(p.col_t);
  const scalar_t* w = static_cast<const scalar_t*>(p.weight);
  const scalar_t* grad = static_cast<const scalar_t*>(p.grad);
  const int64_t H = p.num_heads, F = p.num_features;
  acc_t acc = acc_t(0);
  for (int64_t k = begin; k < end; ++k) {
    const int64_t e = p.perm_t[k], i = int64_t(col_t[k]);
    const int64_t o = (i * H + h) * F + f;
    if (p.arg[o] == e)
      acc += (w ? to_acc(w[e * p.weight_edge_stride + h * p.weight_head_stride]) : acc_t(1)) * to_acc(grad[o]);
  }
  return acc;
}

// dx of max / min: one warp per source row of the transpose; lanes own features. A hub source
// split by the transpose's plan adds its segments' partials in order.
template <typename scalar_t, typename index_t>
__global__ void spmm_arg_dx_kernel(SpmmArgBackwardParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = lane_index();
  const int64_t src = warp_index();
  if (src >= p.num_src) return;
  scalar_t* dx = static_cast<scalar_t*>(p.dx);
  const acc_t* partial = static_cast<const acc_t*>(p.partial_dx);
  const int64_t H = p.num_heads, F = p.num_features;
  int64_t seg_begin, seg_end;
  row_segments(p.transpose_plan, src, seg_begin, seg_end);
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t f = lane; f < F; f += kWarp) {
      acc_t acc = acc_t(0);
      if (seg_end > seg_begin) {
        for (int64_t s = seg_begin; s < seg_end; ++s) acc += partial[(s * H + h) * F + f];
      } else {
        acc = arg_dx_sum<scalar_t, index_t>(p, p.rowptr_t[src], p.rowptr_t[src + 1], h, f);
      }
      dx[(src * H + h) * F + f] = from_acc<scalar_t>(acc);
    }
  }
}

// One warp per segment of a hub source's transpose row: its partial dx.
template <typename scalar_t, typename index_t>
__global__ void spmm_arg_dx_segment_kernel(SpmmArgBackwardParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  int64_t src, begin, end;
  if (!segment_span(p.transpose_plan, p.rowptr_t, p.num_src, warp_index(), src, begin, end)) return;
  const int64_t s = warp_index(), H = p.num_heads, F = p.num_features;
  acc_t* partial = static_cast<acc_t*>(p.partial_dx);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t f = lane_index(); f < F; f += kWarp)
      partial[(s * H + h) * F + f] = arg_dx_sum<scalar_t, index_t>(p, begin, end, h, f);
}

// dweight of max / min: one warp per 32 consecutive edges (their rows found by binary search,
// so a hub row spreads over many warps); per edge, lanes split F and a fixed butterfly sums.
template <typename scalar_t, typename index_t>
__global__ void spmm_arg_dweight_kernel(SpmmArgBackwardParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = lane_index();
  const int64_t e0 = warp_index() * kWarp;
  if (e0 >= p.num_edges) return;
  const index_t* col = static_cast<const index_t*>(p.col);
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const scalar_t* grad = static_cast<const scalar_t*>(p.grad);
  scalar_t* dweight = static_cast<scalar_t*>(p.dweight);
  const int64_t H = p.num_heads, F = p.num_features;
  const int64_t my_edge = e0 + lane;
  int64_t my_row = 0, my_src = 0;
  if (my_edge < p.num_edges) {
    my_row = row_of_edge(p.rowptr, p.num_rows, my_edge);
    my_src = int64_t(col[my_edge]);
  }
  const int batch = int(p.num_edges - e0 < kWarp ? p.num_edges - e0 : kWarp);
  for (int j = 0; j < batch; ++j) {
    const int64_t e = e0 + j;
    const int64_t row = __shfl_sync(0xffffffffu, my_row, j);
    const scalar_t* xr = x + __shfl_sync(0xffffffffu, my_src, j) * p.x_row_stride;
    for (int64_t h = 0; h < H; ++h) {
      acc_t dot = acc_t(0);
      for (int64_t f = lane; f < F; f += kWarp) {
        const int64_t o = (row * H + h) * F + f;
        if (p.arg[o] == e) dot += to_acc(grad[o]) * to_acc(xr[h * p.x_head_stride + f]);
      }
      dot = warp_sum(dot);
      if (lane == 0) dweight[e * H + h] = from_acc<scalar_t>(dot);
    }
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t leaky_relu(acc_t v, acc_t slope) { return v > acc_t(0) ? v : v * slope; }

// GAT forward, online softmax over edges [begin, end) of row `row`, head h, continuing (m, c,
// acc): every lane tracks the same max m and denominator c and accumulates its own features
// f0 + k * 32 + lane, rescaling them by exp(old max - new max) when the running max grows.
template <typename scalar_t, typename index_t>
__device__ __forceinline__ void gat_online(const GatParams& p, int64_t row, int64_t begin, int64_t end, int64_t h,
                                           int64_t f0, int lane, typename Acc<scalar_t>::type& m,
                                           typename Acc<scalar_t>::type& c,
                                           typename Acc<scalar_t>::type (&acc)[kFeaturesPerLane]) {
  using acc_t = typename Acc<scalar_t>::type;
  const index_t* col = static_cast<const index_t*>(p.col);
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const scalar_t* a_src = static_cast<const scalar_t*>(p.alpha_src);
  const int64_t H = p.num_heads, F = p.num_features;
  const acc_t slope = acc_t(p.negative_slope);
  const acc_t ad = to_acc(static_cast<const scalar_t*>(p.alpha_dst)[row * H + h]);
  const uint64_t seed = p.dropout.rng ? uint64_t(p.dropout.rng[0]) : 0;
  const uint64_t offset = p.dropout.rng ? uint64_t(p.dropout.rng[1]) : 0;
  for (int64_t e = begin; e < end; ++e) {
    const int64_t j = int64_t(col[e]);
    const acc_t score = leaky_relu(to_acc(a_src[j * H + h]) + ad, slope);
    if (score > m) {
      const acc_t rescale = exp(m - score);
      c *= rescale;
#pragma unroll
      for (int k = 0; k < kFeaturesPerLane; ++k) acc[k] *= rescale;
      m = score;
    }
    // A score of -inf (an alpha of -inf) weighs 0, even while the running max is -inf too.
    const acc_t w = score == acc_t(-CUDART_INF_F) ? acc_t(0) : exp(score - m);
    c += w;
    // The denominator keeps every edge; the sum weighs the (edge, head)'s dropout factor.
    const acc_t kept = w * dropout_factor<acc_t>(p.dropout, seed, offset, uint64_t(e * H + h));
    if (kept == acc_t(0)) continue;  // the same in every lane: the warp stays converged
    const scalar_t* xr = x + (j * H + h) * F;
#pragma unroll
    for (int k = 0; k < kFeaturesPerLane; ++k) {
      const int64_t f = f0 + k * kWarp + lane;
      if (f < F) acc[k] += kept * to_acc(xr[f]);
    }
  }
}

// One warp per row. A row that the split plan cut into segments was reduced by
// gat_segment_kernel: this warp brings the segments' sums to the common max in segment order.
template <typename scalar_t, typename index_t>
__global__ void gat_kernel(GatParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = lane_index();
  const int64_t row = warp_index();
  if (row >= p.num_rows) return;
  scalar_t* out = static_cast<scalar_t*>(p.out);
  const acc_t* partial = static_cast<const acc_t*>(p.partial);
  const acc_t* stats = static_cast<const acc_t*>(p.partial_stats);
  const int64_t H = p.num_heads, F = p.num_features, begin = p.rowptr[row], end = p.rowptr[row + 1];
  int64_t seg_begin, seg_end;
  row_segments(p.plan, row, seg_begin, seg_end);
  for (int64_t h = 0; h < H; ++h) {
    acc_t m = -CUDART_INF_F, c = acc_t(0);
    for (int64_t f0 = 0; f0 == 0 || f0 < F; f0 += kWarp * kFeaturesPerLane) {
      acc_t acc[kFeaturesPerLane];
#pragma unroll
      for (int k = 0; k < kFeaturesPerLane; ++k) acc[k] = acc_t(0);
      m = -CUDART_INF_F;
      c = acc_t(0);
      if (seg_end > seg_begin) {
        for (int64_t s = seg_begin; s < seg_end; ++s) {
          const acc_t ms = stats[(s * H + h) * 2], cs = stats[(s * H + h) * 2 + 1];
          const acc_t m_new = ms > m ? ms : m;
          // Equal maxima weigh 1 (exp(0)), also when both are -inf.
          const acc_t keep = m == m_new ? acc_t(1) : exp(m - m_new);
          const acc_t take = ms == m_new ? acc_t(1) : exp(ms - m_new);
          c = c * keep + cs * take;
#pragma unroll
          for (int k = 0; k < kFeaturesPerLane; ++k) {
            const int64_t f = f0 + k * kWarp + lane;
            if (f < F) acc[k] = acc[k] * keep + partial[(s * H + h) * F + f] * take;
          }
          m = m_new;
        }
      } else {
        gat_online<scalar_t, index_t>(p, row, begin, end, h, f0, lane, m, c, acc);
      }
      const acc_t inv = c > acc_t(0) ? acc_t(1) / c : acc_t(0);
#pragma unroll
      for (int k = 0; k < kFeaturesPerLane; ++k) {
        const int64_t f = f0 + k * kWarp + lane;
        if (f < F) out[(row * H + h) * F + f] = from_acc<scalar_t>(acc[k] * inv);
      }
    }
    if (lane == 0) {
      static_cast<acc_t*>(p.row_max)[row * H + h] = m;
      static_cast<acc_t*>(p.row_sum)[row * H + h] = c;
    }
  }
}

// One warp per segment of a split row: its own max, denominator and unnormalised sum.
template <typename scalar_t, typename index_t>
__global__ void gat_segment_kernel(GatParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = lane_index();
  const int64_t s = warp_index();
  int64_t row, begin, end;
  if (!segment_span(p.plan, p.rowptr, p.num_rows, s, row, begin, end)) return;
  acc_t* partial = static_cast<acc_t*>(p.partial);
  const int64_t H = p.num_heads, F = p.num_features;
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t f0 = 0; f0 == 0 || f0 < F; f0 += kWarp * kFeaturesPerLane) {
      acc_t acc[kFeaturesPerLane];
#pragma unroll
      for (int k = 0; k < kFeaturesPerLane; ++k) acc[k] = acc_t(0);
      acc_t m = -CUDART_INF_F, c = acc_t(0);
      gat_online<scalar_t, index_t>(p, row, begin, end, h, f0, lane, m, c, acc);
#pragma unroll
      for (int k = 0; k < kFeaturesPerLane; ++k) {
        const int64_t f = f0 + k * kWarp + lane;
        if (f < F) partial[(s * H + h) * F + f] = acc[k];
      }
      if (f0 == 0 && lane == 0) {
        static_cast<acc_t*>(p.partial_stats)[(s * H + h) * 2] = m;
        static_cast<acc_t*>(p.partial_stats)[(s * H + h) * 2 + 1] = c;
      }
    }
  }
}

// k_ij p_ij and ds_ij of edge j -> i (CSR edge e, head h), identical in every lane of the warp;
// k_ij is the edge's dropout factor (1 without dropout).
template <typename scalar_t>
__device__ __forceinline__ void gat_edge_terms(const GatBackwardParams& p, int64_t i, int64_t j, int64_t e, int64_t h,
                                               int lane, typename Acc<scalar_t>::type& prob,
                                               typename Acc<scalar_t>::type& ds) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t H = p.num_heads, F = p.num_features;
  const acc_t slope = acc_t(p.negative_slope);
  const acc_t raw = to_acc(static_cast<const scalar_t*>(p.alpha_src)[j * H + h]) +
                    to_acc(static_cast<const scalar_t*>(p.alpha_dst)[i * H + h]);
  const acc_t p_ij = exp(leaky_relu(raw, slope) - static_cast<const acc_t*>(p.row_max)[i * H + h]) /
                     static_cast<const acc_t*>(p.row_sum)[i * H + h];
  const acc_t k_ij = p.dropout.rng == nullptr
                         ? acc_t(1)
                         : dropout_factor<acc_t>(p.dropout, uint64_t(p.dropout.rng[0]), uint64_t(p.dropout.rng[1]),
                                                 uint64_t(e * H + h));
  acc_t dot = acc_t(0);
  if (k_ij != acc_t(0)) {  // the same in every lane
    const scalar_t* xr = static_cast<const scalar_t*>(p.x) + (j * H + h) * F;
    const scalar_t* g = static_cast<const scalar_t*>(p.grad) + (i * H + h) * F;
    for (int64_t f = lane; f < F; f += kWarp) dot += to_acc(xr[f]) * to_acc(g[f]);
    dot = warp_sum(dot);
  }
  prob = k_ij * p_ij;
  ds = p_ij * (k_ij * dot - static_cast<const acc_t*>(p.delta)[i * H + h]) * (raw > acc_t(0) ? acc_t(1) : slope);
}

// sum of ds_ij over edges [begin, end) of row i, head h, identical in every lane.
template <typename scalar_t, typename index_t>
__device__ __forceinline__ typename Acc<scalar_t>::type gat_dst_sum(const GatBackwardParams& p, int64_t row,
                                                                    int64_t begin, int64_t end, int64_t h, int lane) {
  using acc_t = typename Acc<scalar_t>::type;
  const index_t* col = static_cast<const index_t*>(p.col);
  acc_t sum = acc_t(0), prob, ds;
  for (int64_t e = begin; e < end; ++e) {
    gat_edge_terms<scalar_t>(p, row, int64_t(col[e]), e, h, lane, prob, ds);
    sum += ds;
  }
  return sum;
}

// dalpha_dst: one warp per row; a split row adds its segments' partials in order.
template <typename scalar_t, typename index_t>
__global__ void gat_dst_grad_kernel(GatBackwardParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = lane_index();
  const int64_t row = warp_index();
  if (row >= p.num_rows) return;
  const acc_t* partial = static_cast<const acc_t*>(p.partial_dalpha_dst);
  int64_t seg_begin, seg_end;
  row_segments(p.plan, row, seg_begin, seg_end);
  for (int64_t h = 0; h < p.num_heads; ++h) {
    acc_t sum = acc_t(0);
    if (seg_end > seg_begin) {
      for (int64_t s = seg_begin; s < seg_end; ++s) sum += partial[s * p.num_heads + h];
    } else {
      sum = gat_dst_sum<scalar_t, index_t>(p, row, p.rowptr[row], p.rowptr[row + 1], h, lane);
    }
    if (lane == 0) static_cast<scalar_t*>(p.dalpha_dst)[row * p.num_heads + h] = from_acc<scalar_t>(sum);
  }
}

template <typename scalar_t, typename index_t>
__global__ void gat_dst_grad_segment_kernel(GatBackwardParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t s = warp_index();
  int64_t row, begin, end;
  if (!segment_span(p.plan, p.rowptr, p.num_rows, s, row, begin, end)) return;
  for (int64_t h = 0; h < p.num_heads; ++h) {
    const acc_t sum = gat_dst_sum<scalar_t, index_t>(p, row, begin, end, h, lane_index());
    if (lane_index() == 0) static_cast<acc_t*>(p.partial_dalpha_dst)[s * p.num_heads + h] = sum;
  }
}

// Over transpose entries [begin, end) of source j, head h: acc[q] += sum_i p_ij grad[i, f] for
// the lane's features f = f0 + q * 32 + lane, and sum = sum_i ds_ij.
template <typename scalar_t, typename index_t>
__device__ __forceinline__ void gat_src_sums(const GatBackwardParams& p, int64_t src, int64_t begin, int64_t end,
                                             int64_t h, int64_t f0, int lane,
                                             typename Acc<scalar_t>::type (&acc)[kFeaturesPerLane],
                                             typename Acc<scalar_t>::type& sum) {
  using acc_t = typename Acc<scalar_t>::type;
  const index_t* col_t = static_cast<const index_t*>(p.col_t);
  const scalar_t* grad = static_cast<const scalar_t*>(p.grad);
  const int64_t H = p.num_heads, F = p.num_features;
  acc_t prob, ds;
  for (int64_t k = begin; k < end; ++k) {
    const int64_t i = int64_t(col_t[k]);
    gat_edge_terms<scalar_t>(p, i, src, p.perm_t[k], h, lane, prob, ds);
    sum += ds;
#pragma unroll
    for (int q = 0; q < kFeaturesPerLane; ++q) {
      const int64_t f = f0 + q * kWarp + lane;
      if (f < F) acc[q] += prob * to_acc(grad[(i * H + h) * F + f]);
    }
  }
}

// dx and dalpha_src: one warp per source row of the transpose; a hub source split by the
// transpose's plan adds its segments' partials in order.
template <typename scalar_t, typename index_t>
__global__ void gat_src_grad_kernel(GatBackwardParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = lane_index();
  const int64_t src = warp_index();
  if (src >= p.num_src) return;
  const acc_t* partial = static_cast<const acc_t*>(p.partial_dx);
  const acc_t* partial_da = static_cast<const acc_t*>(p.partial_dalpha_src);
  const int64_t H = p.num_heads, F = p.num_features;
  int64_t seg_begin, seg_end;
  row_segments(p.transpose_plan, src, seg_begin, seg_end);
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t f0 = 0; f0 == 0 || f0 < F; f0 += kWarp * kFeaturesPerLane) {
      acc_t acc[kFeaturesPerLane];
#pragma unroll
      for (int q = 0; q < kFeaturesPerLane; ++q) acc[q] = acc_t(0);
      acc_t sum = acc_t(0);
      if (seg_end > seg_begin) {
        for (int64_t s = seg_begin; s < seg_end; ++s) {
          sum += partial_da[s * H + h];
#pragma unroll
          for (int q = 0; q < kFeaturesPerLane; ++q) {
            const int64_t f = f0 + q * kWarp + lane;
            if (f < F) acc[q] += partial[(s * H + h) * F + f];
          }
        }
      } else {
        gat_src_sums<scalar_t, index_t>(p, src, p.rowptr_t[src], p.rowptr_t[src + 1], h, f0, lane, acc, sum);
      }
#pragma unroll
      for (int q = 0; q < kFeaturesPerLane; ++q) {
        const int64_t f = f0 + q * kWarp + lane;
        if (f < F) static_cast<scalar_t*>(p.dx)[(src * H + h) * F + f] = from_acc<scalar_t>(acc[q]);
      }
      if (f0 == 0 && lane == 0) static_cast<scalar_t*>(p.dalpha_src)[src * H + h] = from_acc<scalar_t>(sum);
    }
  }
}

template <typename scalar_t, typename index_t>
__global__ void gat_src_grad_segment_kernel(GatBackwardParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = lane_index();
  const int64_t s = warp_index();
  int64_t src, begin, end;
  if (!segment_span(p.transpose_plan, p.rowptr_t, p.num_src, s, src, begin, end)) return;
  acc_t* partial = static_cast<acc_t*>(p.partial_dx);
  const int64_t H = p.num_heads, F = p.num_features;
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t f0 = 0; f0 == 0 || f0 < F; f0 += kWarp * kFeaturesPerLane) {
      acc_t acc[kFeaturesPerLane];
#pragma unroll
      for (int q = 0; q < kFeaturesPerLane; ++q) acc[q] = acc_t(0);
      acc_t sum = acc_t(0);
      gat_src_sums<scalar_t, index_t>(p, src, begin, end, h, f0, lane, acc, sum);
#pragma unroll
      for (int q = 0; q < kFeaturesPerLane; ++q) {
        const int64_t f = f0 + q * kWarp + lane;
        if (f < F) partial[(s * H + h) * F + f] = acc[q];
      }
      if (f0 == 0 && lane == 0) static_cast<acc_t*>(p.partial_dalpha_src)[s * H + h] = sum;
    }
  }
}

// Common neighbours: one thread per pair walks the two sorted rows (pass 1 counts, pass 2
// writes at the pair's offset); a pair's cost is deg(src) + deg(dst).
template <typename index_t>
__global__ void common_neighbors_kernel(CommonNeighborParams p) {
  const int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= p.num_pairs) return;
  const index_t* col = static_cast<const index_t*>(p.col);
  const int64_t a = p.src[q], b = p.dst[q];
  // The host checks the ids where it can read them; a traced call checks them with an async
  // assert (ops/sparse.py). Here an id out of range reads nothing and the pair stays empty.
  const bool valid = a >= 0 && a < p.num_rows && b >= 0 && b < p.num_rows;
  int64_t i = valid ? p.rowptr[a] : 0, j = valid ? p.rowptr[b] : 0;
  const int64_t end_a = valid ? p.rowptr[a + 1] : 0, end_b = valid ? p.rowptr[b + 1] : 0;
  index_t* out = p.counts ? nullptr : static_cast<index_t*>(p.neighbors) + p.offsets[q];
  int64_t count = 0;
  while (i < end_a && j < end_b) {
    const index_t u = col[i], v = col[j];
    if (u < v) ++i;
    else if (v < u) ++j;
    else {
      if (out) out[count] = u;
      ++count; ++i; ++j;
    }
  }
  if (p.counts) p.counts[q] = count;
}

// One warp per 32 consecutive edges, whatever rows they belong to (found by binary search): a
// hub row spreads over many warps and short rows share one. Per edge, lanes split F and a fixed
// butterfly sums the dot product.
template <typename scalar_t, typename index_t>
__global__ void sddmm_kernel(SddmmParams p) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = lane_index();
  const int64_t e0 = warp_index() * kWarp;
  if (e0 >= p.num_edges) return;
  const index_t* col = static_cast<const index_t*>(p.col);
  const scalar_t* a = static_cast<const scalar_t*>(p.a);
  const scalar_t* b = static_cast<const scalar_t*>(p.b);
  scalar_t* out = static_cast<scalar_t*>(p.out);
  const int64_t F = p.num_features;
  const int64_t my_edge = e0 + lane;
  int64_t my_row = 0, my_src = 0;
  if (my_edge < p.num_edges) {
    my_row = row_of_edge(p.rowptr, p.num_rows, my_edge);
    my_src = int64_t(col[my_edge]);
  }
  const int batch = int(p.num_edges - e0 < kWarp ? p.num_edges - e0 : kWarp);
  for (int j = 0; j < batch; ++j) {
    const int64_t e = e0 + j;
    const int64_t row = __shfl_sync(0xffffffffu, my_row, j);
    const int64_t src = __shfl_sync(0xffffffffu, my_src, j);
    for (int64_t h = 0; h < p.num_heads; ++h) {
      const scalar_t* ar = a + row * p.a_row_stride + h * p.a_head_stride;
      const scalar_t* br = b + src * p.b_row_stride + h * p.b_head_stride;
      acc_t dot = acc_t(0);
      for (int64_t f = lane; f < F; f += kWarp) dot += to_acc(ar[f]) * to_acc(br[f]);
      dot = warp_sum(dot);
      if (lane == 0) out[e * p.num_heads + h] = from_acc<scalar_t>(dot);
    }
  }
}

// Every kernel here but common_neighbors_kernel runs one warp per item (row, segment, source or
// 32 edges), kWarpsPerBlock warps to a block.
template <auto Kernel, typename Params>
inline void launch_warps(int64_t warps, cudaStream_t stream, const Params& p) {
  launch_kernel<Kernel>(unsigned((warps + kWarpsPerBlock - 1) / kWarpsPerBlock), kWarp * kWarpsPerBlock, 0, stream, p);
}

template <typename scalar_t, typename index_t>
void launch_spmm(const SpmmParams& p, cudaStream_t stream) {
  if (p.num_rows == 0) return;
  // Segments first: the row pass reads their partials (same stream, so ordered).
  if (p.reduce == Reduce::Max || p.reduce == Reduce::Min) {
    if (p.plan.max_segments > 0)
      launch_warps<spmm_extreme_segment_kernel<scalar_t, index_t>>(p.plan.max_segments, stream, p);
    launch_warps<spmm_extreme_kernel<scalar_t, index_t>>(p.num_rows, stream, p);
    return;
  }
  if (p.plan.max_segments > 0)
    launch_warps<spmm_segment_kernel<scalar_t, index_t>>(p.plan.max_segments, stream, p);
  // Small F: two rows per warp, 16 lanes each (F <= 16 would idle half a warp or more).
  if (p.num_features <= kWarp / 2)
    launch_warps<spmm_kernel<scalar_t, index_t, kWarp / 2>>((p.num_rows + 1) / 2, stream, p);
  else
    launch_warps<spmm_kernel<scalar_t, index_t, kWarp>>(p.num_rows, stream, p);
}

template <typename scalar_t, typename index_t>
void launch_spmm_arg_backward(const SpmmArgBackwardParams& p, cudaStream_t stream) {
  if (p.transpose_plan.max_segments > 0)  // segments first: the source pass reads their partials
    launch_warps<spmm_arg_dx_segment_kernel<scalar_t, index_t>>(p.transpose_plan.max_segments, stream, p);
  if (p.num_src > 0)
    launch_warps<spmm_arg_dx_kernel<scalar_t, index_t>>(p.num_src, stream, p);
  if (p.dweight && p.num_edges > 0)
    launch_warps<spmm_arg_dweight_kernel<scalar_t, index_t>>((p.num_edges + kWarp - 1) / kWarp, stream, p);
}

template <typename scalar_t, typename index_t>
void launch_gat(const GatParams& p, cudaStream_t stream) {
  if (p.num_rows == 0) return;
  if (p.plan.max_segments > 0)  // segments first: the row pass reads their partials
    launch_warps<gat_segment_kernel<scalar_t, index_t>>(p.plan.max_segments, stream, p);
  launch_warps<gat_kernel<scalar_t, index_t>>(p.num_rows, stream, p);
}

template <typename scalar_t, typename index_t>
void launch_gat_backward(const GatBackwardParams& p, cudaStream_t stream) {
  // Segments first: the row passes read their partials (same stream, so ordered).
  if (p.plan.max_segments > 0)
    launch_warps<gat_dst_grad_segment_kernel<scalar_t, index_t>>(p.plan.max_segments, stream, p);
  if (p.transpose_plan.max_segments > 0)
    launch_warps<gat_src_grad_segment_kernel<scalar_t, index_t>>(p.transpose_plan.max_segments, stream, p);
  if (p.num_rows > 0)
    launch_warps<gat_dst_grad_kernel<scalar_t, index_t>>(p.num_rows, stream, p);
  if (p.num_src > 0)
    launch_warps<gat_src_grad_kernel<scalar_t, index_t>>(p.num_src, stream, p);
}

template <typename scalar_t, typename index_t>
void launch_sddmm(const SddmmParams& p, cudaStream_t stream) {
  if (p.num_edges == 0 || p.num_rows == 0) return;
  launch_warps<sddmm_kernel<scalar_t, index_t>>((p.num_edges + kWarp - 1) / kWarp, stream, p);
}

// The index-only kernels, one thread per item: instantiated once, in sparse_fp32.cu.
template <auto Kernel, typename Params>
inline void launch_index_threads(int64_t items, cudaStream_t stream, const Params& p) {
  constexpr int kThreads = 256;
  if (items > 0) launch_kernel<Kernel>(unsigned((items + kThreads - 1) / kThreads), kThreads, 0, stream, p);
}

inline void launch_common_neighbors(const CommonNeighborParams& p, cudaStream_t stream) {
  dispatch_index(p.col_is_int32, [&](auto index) {
    launch_index_threads<common_neighbors_kernel<decltype(index)>>(p.num_pairs, stream, p);
  });
}
}  // namespace cuda

// The entry points of sparse.h, for the graph's index type.
template <typename T>
void spmm_cuda(const SpmmParams& p, cudaStream_t stream) {
  dispatch_index(p.col_is_int32, [&](auto index) { cuda::launch_spmm<T, decltype(index)>(p, stream); });
}
template <typename T>
void spmm_arg_backward_cuda(const SpmmArgBackwardParams& p, cudaStream_t stream) {
  dispatch_index(p.col_is_int32, [&](auto index) { cuda::launch_spmm_arg_backward<T, decltype(index)>(p, stream); });
}
template <typename T>
void gat_cuda(const GatParams& p, cudaStream_t stream) {
  dispatch_index(p.col_is_int32, [&](auto index) { cuda::launch_gat<T, decltype(index)>(p, stream); });
}
template <typename T>
void gat_backward_cuda(const GatBackwardParams& p, cudaStream_t stream) {
  dispatch_index(p.col_is_int32, [&](auto index) { cuda::launch_gat_backward<T, decltype(index)>(p, stream); });
}
template <typename T>
void sddmm_cuda(const SddmmParams& p, cudaStream_t stream) {
  dispatch_index(p.col_is_int32, [&](auto index) { cuda::launch_sddmm<T, decltype(index)>(p, stream); });
}
}  // namespace scangraph

// One instantiation file per dtype (sparse_<dtype>.cu) instantiates the entry points of sparse.h
// for its element type, so the dtypes compile in parallel.
#define SCANGRAPH_INSTANTIATE_SPARSE(T)                                                                    \
  template void scangraph::spmm_cuda<T>(const scangraph::SpmmParams&, cudaStream_t);                       \
  template void scangraph::spmm_arg_backward_cuda<T>(const scangraph::SpmmArgBackwardParams&, cudaStream_t); \
  template void scangraph::gat_cuda<T>(const scangraph::GatParams&, cudaStream_t);                         \
  template void scangraph::gat_backward_cuda<T>(const scangraph::GatBackwardParams&, cudaStream_t);        \
  template void scangraph::sddmm_cuda<T>(const scangraph::SddmmParams&, cudaStream_t);
