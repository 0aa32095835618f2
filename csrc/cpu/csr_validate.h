// CPU validation of CSR index values, shared by the sparse and low-precision CPU kernels.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

namespace scangraph {

// Values are read before any kernel runs: a bad index would read out of bounds.
inline void validate_csr(const at::Tensor& rowptr, const at::Tensor& col, int64_t num_src,
                  const char* op) {
  const int64_t* rp = rowptr.data_ptr<int64_t>();
  const int64_t num_rows = rowptr.numel() - 1, num_edges = col.numel();
  TORCH_CHECK(rp[0] == 0, op, ": rowptr[0] must be 0, got ", rp[0]);
  TORCH_CHECK(rp[num_rows] == num_edges, op, ": rowptr[-1] must equal the number of edges (",
              num_edges, "), got ", rp[num_rows]);
  for (int64_t i = 0; i < num_rows; ++i)
    TORCH_CHECK(rp[i] <= rp[i + 1], op, ": rowptr must be non-decreasing, but rowptr[", i,
                "] = ", rp[i], " > rowptr[", i + 1, "] = ", rp[i + 1]);
  AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "validate_csr", [&] {
    const index_t* c = col.data_ptr<index_t>();
    for (int64_t e = 0; e < num_edges; ++e)
      TORCH_CHECK(c[e] >= 0 && c[e] < num_src, op, ": col[", e, "] = ", c[e],
                  " is out of range for ", num_src, " source nodes");
  });
}

}  // namespace scangraph
