// The trial op on the LibTorch stable ABI (torch >= 2.10): torch::stable::Tensor, the C shims,
// STABLE_TORCH_LIBRARY. Built against one torch with TORCH_TARGET_VERSION = 2.10, it is meant to
// load under every torch from 2.10 on.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include "kernel.h"

using torch::stable::Tensor;

Tensor spmm_sum(Tensor rowptr, Tensor col, Tensor x) {
  STD_TORCH_CHECK(x.scalar_type() == torch::headeronly::ScalarType::Float, "x must be float32");
  STD_TORCH_CHECK(rowptr.scalar_type() == torch::headeronly::ScalarType::Long, "rowptr must be int64");
  STD_TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.is_cpu(), "x must be a contiguous (N, F) CPU tensor");
  int64_t rows = rowptr.size(0) - 1, f = x.size(1);
  Tensor out = torch::stable::new_empty(x, {rows, f});
  spmm_sum_rows(rowptr.const_data_ptr<int64_t>(), col.const_data_ptr<int64_t>(), x.const_data_ptr<float>(),
                out.mutable_data_ptr<float>(), rows, f,
                [](int64_t b, int64_t e, int64_t g, auto fn) { torch::stable::parallel_for(b, e, g, fn); });
  return out;
}

STABLE_TORCH_LIBRARY(sgstable, m) { m.def("spmm_sum(Tensor rowptr, Tensor col, Tensor x) -> Tensor"); }
STABLE_TORCH_LIBRARY_IMPL(sgstable, CPU, m) { m.impl("spmm_sum", TORCH_BOX(&spmm_sum)); }
