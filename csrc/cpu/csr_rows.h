// CSR helpers shared by the sparse and low-precision CPU kernels: index validation and
// work-balanced row chunks.
#pragma once
#include <algorithm>
#include <vector>

#include "glue/torch_api.h"
#include "scangraph/index_type.h"

namespace scangraph {

// Values are read before any kernel runs: a bad index would read out of bounds.
inline void validate_csr(const Tensor& rowptr, const Tensor& col, int64_t num_src, const char* op) {
  const int64_t* rp = rowptr.const_data_ptr<int64_t>();
  const int64_t num_rows = rowptr.numel() - 1, num_edges = col.numel();
  SCANGRAPH_CHECK(rp[0] == 0, op, ": rowptr[0] must be 0, got ", rp[0]);
  SCANGRAPH_CHECK(rp[num_rows] == num_edges, op, ": rowptr[-1] must equal the number of edges (",
                  num_edges, "), got ", rp[num_rows]);
  for (int64_t i = 0; i < num_rows; ++i)
    SCANGRAPH_CHECK(rp[i] <= rp[i + 1], op, ": rowptr must be non-decreasing, but rowptr[", i,
                    "] = ", rp[i], " > rowptr[", i + 1, "] = ", rp[i + 1]);
  dispatch_index(col.scalar_type() == ScalarType::Int, [&](auto index) {
    using index_t = decltype(index);
    const index_t* c = col.const_data_ptr<index_t>();
    for (int64_t e = 0; e < num_edges; ++e)
      SCANGRAPH_CHECK(c[e] >= 0 && c[e] < num_src, op, ": col[", e, "] = ", c[e],
                      " is out of range for ", num_src, " source nodes");
  });
}

// Chunks per thread: more than one so that chunks that turn out slower (cache misses on hub
// rows) are balanced by the scheduler, few enough that per-chunk overhead stays negligible.
constexpr int64_t kChunksPerThread = 8;

// Row boundaries of chunks holding about equal (edges + rows): the work of row i is
// deg(i) + 1, so the prefix sum of work at row i is rowptr[i] + i (monotone): binary search.
inline std::vector<int64_t> balanced_row_chunks(const int64_t* rowptr, int64_t num_rows) {
  const int64_t total = rowptr[num_rows] + num_rows;
  const int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>(num_rows, num_threads() * kChunksPerThread));
  std::vector<int64_t> bounds(chunks + 1);
  bounds[0] = 0;
  for (int64_t c = 1; c < chunks; ++c) {
    const int64_t target = total * c / chunks;
    int64_t lo = bounds[c - 1], hi = num_rows;  // first row whose prefix work reaches target
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (rowptr[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    bounds[c] = lo;
  }
  bounds[chunks] = num_rows;
  return bounds;
}

// Calls body(row_begin, row_end) on balanced chunks of rows, in parallel.
template <typename Body>
inline void for_each_row_chunk(const int64_t* rowptr, int64_t num_rows, const Body& body) {
  if (num_rows == 0) return;
  const std::vector<int64_t> bounds = balanced_row_chunks(rowptr, num_rows);
  parallel_for(0, static_cast<int64_t>(bounds.size()) - 1, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) body(bounds[c], bounds[c + 1]);
  });
}

}  // namespace scangraph
