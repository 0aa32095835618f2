// Torch-free parameter structs of the sparse message-passing kernels.
//
// A graph is CSR: row i is a destination, rowptr[i]..rowptr[i+1] are its edges, col[e] the
// source of edge e. Features are (nodes, heads, features) with unit feature stride; a plain
// (nodes, features) tensor is one head. Every offset is 64-bit so graphs past 2^31 edges and
// feature tensors past 2^31 elements index correctly.
#pragma once
#include <cstdint>

#include "scangraph/index_type.h"
#include "scangraph/philox.h"

namespace scangraph {

enum class Reduce : int8_t { Sum, Mean, Max, Min };

// Load balance of the row reductions on the GPU (spmm, GAT and their backward passes, over the
// CSR or its transpose): a row with more than kSpmmSplitEdges edges is cut into segments of
// kSpmmSplitEdges edges (the last one shorter), each reduced by its own warp into an
// accumulator-type partial (a sum; best and arg for max / min; max, denominator and sum for the
// GAT softmax); a second pass combines a row's partials in segment order (a fixed order:
// deterministic, no atomics). Why 256: a segment is 8 batches of 32 gathered rows, enough
// work per warp to hide the cost of writing and re-reading its partial (one F-vector per 256
// gathered F-vectors: < 2% extra traffic even for bf16), while a 10^5-edge hub row becomes 391
// warps instead of one. Rows of up to 256 edges, nearly all rows of real graphs, keep the
// one-warp path and pay nothing.
constexpr int64_t kSpmmSplitEdges = 256;

// The split plan of the long rows of one CSR (its rows, or its transpose's), see
// kSpmmSplitEdges; segment_ptr == nullptr: no row is split. Row i owns segments segment_ptr[i] ..
// segment_ptr[i+1]; segment s of row r = segment_row[s] starts at edge rowptr[r] + (s -
// segment_ptr[r]) * kSpmmSplitEdges. max_segments bounds the real count segment_ptr[num_rows].
struct SplitPlan {
  const int64_t* segment_ptr;  // (num_rows + 1)
  const int64_t* segment_row;  // (max_segments)
  int64_t max_segments;
};

// What builds a SplitPlan on the device (sparse_launch.cpp), without a host sync: the counts pass
// writes segment_ptr[0] = 0 and, for each row, its number of segments (ceil(d / kSpmmSplitEdges)
// for a row of d > kSpmmSplitEdges edges, else 0) at segment_ptr[row + 1]; the glue prefix-sums
// segment_ptr in place; the rows pass gives each segment s < max_segments its row, the last row
// whose segment_ptr is <= s (a surplus slot gets the last row, and is never read).
struct SplitPlanParams {
  const int64_t* rowptr;
  int64_t num_rows;
  int64_t* segment_ptr;  // (num_rows + 1)
  int64_t* segment_row;  // (max_segments)
  int64_t max_segments;
};

// Sum / mean: out[i, h, :] = scale_i * sum_{e in row i} w[e, h] * x[col[e], h, :], scale_i = 1
// (sum) or 1 / deg(i) (mean). Max / min: out[i, h, f] = max / min over the same messages, and
// arg[i, h, f] the edge id that won (the first in CSR order, i.e. the lowest column, on ties).
// Empty rows give 0 (and arg -1).
struct SpmmParams {
  const int64_t* rowptr;
  const void* col;           // int32 or int64, chosen by col_is_int32
  const void* weight;        // nullptr: every edge weighs 1
  const void* x;
  void* out;                 // contiguous (num_rows, num_heads, num_features)
  int64_t* arg;              // max / min only: contiguous like out
  int64_t num_rows;
  int64_t num_heads;
  int64_t num_features;
  int64_t x_row_stride;      // elements between consecutive source nodes
  int64_t x_head_stride;     // elements between consecutive heads
  int64_t weight_edge_stride;
  int64_t weight_head_stride;  // 0 when one weight per edge serves every head
  bool col_is_int32;
  Reduce reduce;
  // Long rows (CUDA): each segment reduces into partial (and partial_arg for max / min), which
  // the row's warp combines in segment order.
  SplitPlan plan;
  void* partial;               // (plan.max_segments, num_heads, num_features), accumulator type
  int64_t* partial_arg;        // max / min: the winning edge of each partial, like partial
};

// Backward of max / min spmm, without atomics:
//   dx[j, h, f] = sum over edges e = (j -> i), walked on the transpose (rowptr_t, col_t, perm_t),
//                 with arg[i, h, f] == e of w[e, h] * grad[i, h, f]
//   dweight[e, h] = sum over f with arg[row(e), h, f] == e of grad[row(e), h, f] * x[col[e], h, f]
struct SpmmArgBackwardParams {
  const int64_t* rowptr;     // the original CSR (for dweight)
  const void* col;
  const int64_t* rowptr_t;   // its transpose (for dx)
  const void* col_t;
  const int64_t* perm_t;
  const void* weight;        // nullptr: every edge weighs 1
  const void* x;             // (num_src, heads, F) with unit feature stride; only for dweight
  const void* grad;          // contiguous (num_rows, heads, F)
  const int64_t* arg;        // contiguous (num_rows, heads, F)
  void* dx;                  // contiguous (num_src, heads, F)
  void* dweight;             // contiguous (num_edges, heads), or nullptr when not wanted
  int64_t num_rows, num_src, num_edges, num_heads, num_features;
  int64_t x_row_stride, x_head_stride;
  int64_t weight_edge_stride, weight_head_stride;
  bool col_is_int32;
  SplitPlan transpose_plan;  // long rows of the transpose (hub sources), for dx
  void* partial_dx;          // (transpose_plan.max_segments, heads, F) accumulator type
};

// out[e, h] = sum_f a[row(e), h, f] * b[col[e], h, f]
struct SddmmParams {
  const int64_t* rowptr;
  const void* col;
  const void* a;             // destination side, indexed by row
  const void* b;             // source side, indexed by col
  void* out;                 // contiguous (num_edges, num_heads)
  int64_t num_rows;
  int64_t num_edges;
  int64_t num_heads;
  int64_t num_features;
  int64_t a_row_stride, a_head_stride;
  int64_t b_row_stride, b_head_stride;
  bool col_is_int32;
};

}  // namespace scangraph

namespace scangraph {

// GAT aggregation (per head h), all tensors contiguous:
//   s_ij = leaky_relu(alpha_src[j, h] + alpha_dst[i, h]),  p_ij = softmax over j in row i of s_ij
//   out[i, h, :] = sum_j p_ij x[j, h, :]
// in one pass with an online softmax; the row max m and denominator c (opmath type: float,
// double for double inputs) are kept for the backward, which recomputes p_ij.
struct GatParams {
  const int64_t* rowptr;
  const void* col;
  const void* x;             // (num_src, heads, F)
  const void* alpha_src;     // (num_src, heads)
  const void* alpha_dst;     // (num_rows, heads)
  void* out;                 // (num_rows, heads, F)
  void* row_max;             // (num_rows, heads) opmath
  void* row_sum;             // (num_rows, heads) opmath
  int64_t num_rows, num_src, num_heads, num_features;
  double negative_slope;
  bool col_is_int32;
  // Attention dropout: out_i = sum_j k_ij a_ij x_j with k_ij the factor of element
  // n = e * heads + h (philox.h), e the CSR edge; the denominator keeps every edge.
  DropoutParams dropout;
  // Long rows: each segment keeps its own softmax max and denominator and its unnormalised
  // sum; the row rescales them to the common max in segment order.
  SplitPlan plan;
  void* partial;               // (plan.max_segments, num_heads, num_features) opmath
  void* partial_stats;         // (plan.max_segments, num_heads, 2) opmath: max, denominator
};

// Its backward, with delta[i, h] = out[i, h, :] . grad[i, h, :] and
//   ds_ij = p_ij (k_ij x[j] . grad[i] - delta_i) * leaky_relu'(alpha_src[j] + alpha_dst[i]):
//   dalpha_dst[i] = sum_j ds_ij (rows of the CSR), dalpha_src[j] = sum_i ds_ij and
//   dx[j] = sum_i k_ij p_ij grad[i] (rows of the transpose): no atomics. k_ij is the forward's
//   dropout factor (1 without dropout), regenerated from the CSR edge (perm_t on the transpose).
struct GatBackwardParams {
  const int64_t* rowptr;
  const void* col;
  const int64_t* rowptr_t;
  const void* col_t;
  const int64_t* perm_t;     // CSR edge of each transpose entry
  const void* x;
  const void* alpha_src;
  const void* alpha_dst;
  const void* row_max;       // opmath
  const void* row_sum;       // opmath
  const void* delta;         // opmath
  const void* grad;          // (num_rows, heads, F)
  void* dx;                  // (num_src, heads, F)
  void* dalpha_src;          // (num_src, heads)
  void* dalpha_dst;          // (num_rows, heads)
  int64_t num_rows, num_src, num_heads, num_features;
  double negative_slope;
  bool col_is_int32;
  DropoutParams dropout;
  // Long rows of the CSR (dalpha_dst) and of its transpose (dx, dalpha_src): per-segment sums
  // in opmath, added by the row's warp in segment order.
  SplitPlan plan, transpose_plan;
  void* partial_dalpha_dst;  // (plan.max_segments, heads)
  void* partial_dx;          // (transpose_plan.max_segments, heads, F)
  void* partial_dalpha_src;  // (transpose_plan.max_segments, heads)
};

}  // namespace scangraph

namespace scangraph {

// Common neighbours of node pairs: for pair q, the sorted-merge intersection of rows src[q] and
// dst[q] of the CSR (columns sorted within each row). Pass 1 writes counts[q]; pass 2 writes the
// common neighbours of pair q at neighbors[offsets[q] ...] (offsets = exclusive prefix sum).
struct CommonNeighborParams {
  const int64_t* rowptr;
  const void* col;
  const int64_t* src;
  const int64_t* dst;
  int64_t num_pairs;
  int64_t num_rows;          // a pair naming a node outside [0, num_rows) has no common neighbours
  int64_t* counts;           // pass 1 output (nullptr in pass 2)
  const int64_t* offsets;    // pass 2 input (num_pairs + 1)
  void* neighbors;           // pass 2 output, the dtype of col
  bool col_is_int32;
};

}  // namespace scangraph
