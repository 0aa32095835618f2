// CPU kernels of the sparse message-passing family: spmm (sum | mean) and sddmm.
//
// Rows are split into chunks of equal work (edges + rows), so a few hub rows do not leave
// threads idle; each row is owned by one thread, which accumulates in registers / a small
// opmath buffer and writes its output once: no atomics, results independent of thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "glue/sparse_args.h"

namespace scangraph {
namespace {

// Chunks per thread: more than one so that chunks that turn out slower (cache misses on hub
// rows) are balanced by the scheduler, few enough that per-chunk overhead stays negligible.
constexpr int64_t kChunksPerThread = 8;

// Row boundaries of chunks holding about equal (edges + rows): the work of row i is
// deg(i) + 1, so the prefix sum of work at row i is rowptr[i] + i (monotone): binary search.
std::vector<int64_t> balanced_row_chunks(const int64_t* rowptr, int64_t num_rows) {
  const int64_t total = rowptr[num_rows] + num_rows;
  const int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>(num_rows, at::get_num_threads() * kChunksPerThread));
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

template <typename Body>
void for_each_row_balanced(const int64_t* rowptr, int64_t num_rows, const Body& body) {
  if (num_rows == 0) return;
  const std::vector<int64_t> bounds = balanced_row_chunks(rowptr, num_rows);
  at::parallel_for(0, static_cast<int64_t>(bounds.size()) - 1, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t row = bounds[c]; row < bounds[c + 1]; ++row) body(row);
  });
}

// Values are read before any kernel runs: a bad index would read out of bounds.
void validate_csr(const at::Tensor& rowptr, const at::Tensor& col, int64_t num_src,
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

template <typename scalar_t, typename index_t>
void spmm_rows(const SpmmParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t* __restrict__ col = static_cast<const index_t*>(p.col);
  const scalar_t* __restrict__ w = static_cast<const scalar_t*>(p.weight);
  const scalar_t* __restrict__ x = static_cast<const scalar_t*>(p.x);
  scalar_t* __restrict__ out = static_cast<scalar_t*>(p.out);
  const int64_t F = p.num_features;
  for_each_row_balanced(p.rowptr, p.num_rows, [&](int64_t row) {
    thread_local std::vector<acc_t> acc;
    acc.resize(F);
    acc_t* __restrict__ a = acc.data();
    const int64_t begin = p.rowptr[row], end = p.rowptr[row + 1];
    const acc_t scale = (p.mean && end > begin) ? acc_t(1) / acc_t(end - begin) : acc_t(1);
    for (int64_t h = 0; h < p.num_heads; ++h) {
      std::fill(a, a + F, acc_t(0));
      for (int64_t e = begin; e < end; ++e) {
        const scalar_t* __restrict__ xr = x + int64_t(col[e]) * p.x_row_stride + h * p.x_head_stride;
        if (w) {
          const acc_t we = acc_t(w[e * p.weight_edge_stride + h * p.weight_head_stride]);
          for (int64_t f = 0; f < F; ++f) a[f] += we * acc_t(xr[f]);
        } else {
          for (int64_t f = 0; f < F; ++f) a[f] += acc_t(xr[f]);
        }
      }
      scalar_t* __restrict__ o = out + (row * p.num_heads + h) * F;
      for (int64_t f = 0; f < F; ++f) o[f] = scalar_t(a[f] * scale);
    }
  });
}

template <typename scalar_t, typename index_t>
void sddmm_rows(const SddmmParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t* __restrict__ col = static_cast<const index_t*>(p.col);
  const scalar_t* __restrict__ a = static_cast<const scalar_t*>(p.a);
  const scalar_t* __restrict__ b = static_cast<const scalar_t*>(p.b);
  scalar_t* __restrict__ out = static_cast<scalar_t*>(p.out);
  const int64_t F = p.num_features;
  for_each_row_balanced(p.rowptr, p.num_rows, [&](int64_t row) {
    for (int64_t e = p.rowptr[row]; e < p.rowptr[row + 1]; ++e) {
      for (int64_t h = 0; h < p.num_heads; ++h) {
        const scalar_t* __restrict__ ar = a + row * p.a_row_stride + h * p.a_head_stride;
        const scalar_t* __restrict__ br = b + int64_t(col[e]) * p.b_row_stride + h * p.b_head_stride;
        acc_t dot = 0;
        for (int64_t f = 0; f < F; ++f) dot += acc_t(ar[f]) * acc_t(br[f]);
        out[e * p.num_heads + h] = scalar_t(dot);
      }
    }
  });
}

at::Tensor spmm_cpu(const at::Tensor& rowptr, const at::Tensor& col,
                    const std::optional<at::Tensor>& weight, const at::Tensor& x,
                    c10::string_view reduce, const std::optional<at::Tensor>& /*rowptr_t*/,
                    const std::optional<at::Tensor>& /*col_t*/,
                    const std::optional<at::Tensor>& /*perm_t*/) {
  const KernelCall<SpmmParams> call = prepare_spmm(rowptr, col, weight, x, reduce);
  const SpmmParams& p = call.params;
  validate_csr(rowptr, col, x.size(0), "scangraph::spmm");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spmm_cpu", [&] {
    if (p.col_is_int32) spmm_rows<scalar_t, int32_t>(p); else spmm_rows<scalar_t, int64_t>(p);
  });
  return call.out;
}

at::Tensor sddmm_cpu(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& a,
                     const at::Tensor& b,
                     const std::optional<at::Tensor>& /*rowptr_t*/,
                     const std::optional<at::Tensor>& /*col_t*/,
                     const std::optional<at::Tensor>& /*perm_t*/) {
  const KernelCall<SddmmParams> call = prepare_sddmm(rowptr, col, a, b);
  const SddmmParams& p = call.params;
  validate_csr(rowptr, col, b.size(0), "scangraph::sddmm");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "sddmm_cpu", [&] {
    if (p.col_is_int32) sddmm_rows<scalar_t, int32_t>(p); else sddmm_rows<scalar_t, int64_t>(p);
  });
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(scangraph, CPU, m) {
  m.impl("spmm", &spmm_cpu);
  m.impl("sddmm", &sddmm_cpu);
}

}  // namespace scangraph
