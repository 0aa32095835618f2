// The same op on the regular C++ API (at::Tensor, TORCH_LIBRARY): what scangraph's glue uses;
// a build loads only under the torch it was built against.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include "kernel.h"

at::Tensor spmm_sum(const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "x must be float32");
  TORCH_CHECK(rowptr.scalar_type() == at::kLong, "rowptr must be int64");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.is_cpu(), "x must be a contiguous (N, F) CPU tensor");
  int64_t rows = rowptr.size(0) - 1, f = x.size(1);
  at::Tensor out = at::empty({rows, f}, x.options());
  spmm_sum_rows(rowptr.const_data_ptr<int64_t>(), col.const_data_ptr<int64_t>(), x.const_data_ptr<float>(),
                out.mutable_data_ptr<float>(), rows, f,
                [](int64_t b, int64_t e, int64_t g, auto fn) { at::parallel_for(b, e, g, fn); });
  return out;
}

TORCH_LIBRARY(sgregular, m) { m.def("spmm_sum(Tensor rowptr, Tensor col, Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(sgregular, CPU, m) { m.impl("spmm_sum", &spmm_sum); }
