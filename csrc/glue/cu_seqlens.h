// The packed-sequence offsets of the scans (selective scan, prefix attention), checked in one
// place; its Python twin is check_cu_seqlens in python/scangraph/ops/_rules.py.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <limits>

namespace scangraph {

// cu_seqlens: a 1-D int32 tensor of num_seqs + 1 >= 2 offsets on like's device, packing the
// sequences of a batch of one along L. On the CPU its values are checked too (0 first, L last,
// never decreasing), as the kernels index with them; on a GPU the Python layer checks them (one
// sync there, none here). Returns num_seqs.
inline int64_t check_cu_seqlens(const at::Tensor& cu, const at::Tensor& like, int64_t batch, int64_t length,
                                const char* op) {
  TORCH_CHECK(cu.dim() == 1 && cu.scalar_type() == at::kInt && cu.numel() >= 2, op,
              ": cu_seqlens must be a 1-D int32 tensor of num_seqs + 1 >= 2 offsets, got ", cu.dim(), "-D ",
              cu.scalar_type(), " of ", cu.numel());
  TORCH_CHECK(cu.device() == like.device(), op, ": cu_seqlens is on ", cu.device(), " but the inputs are on ",
              like.device());
  TORCH_CHECK(batch == 1, op, ": cu_seqlens packs sequences along L and needs batch == 1, got batch ", batch);
  TORCH_CHECK(length < std::numeric_limits<int32_t>::max(), op, ": cu_seqlens is int32, L = ", length,
              " does not fit");
  if (cu.device().is_cpu()) {
    const at::Tensor offsets = cu.contiguous();
    const int32_t* c = offsets.data_ptr<int32_t>();
    const int64_t n = offsets.numel();
    TORCH_CHECK(c[0] == 0 && c[n - 1] == length, op, ": cu_seqlens must start at 0 and end at L = ", length,
                ", got ", c[0], " ... ", c[n - 1]);
    for (int64_t i = 1; i < n; ++i)
      TORCH_CHECK(c[i] >= c[i - 1], op, ": cu_seqlens must not decrease, got ", c[i - 1], " then ", c[i]);
  }
  return cu.numel() - 1;
}

}  // namespace scangraph
