// The stable-ABI trial (tools/stable_abi/measure.py): one CPU kernel behind both registrations.
// out[i] = sum over the edges j -> i of x[j], x (N, F) float32, CSR with int64 indices.
#pragma once
#include <cstdint>
template <class ParallelFor>
void spmm_sum_rows(const int64_t* rowptr, const int64_t* col, const float* x, float* out, int64_t rows, int64_t f,
                   ParallelFor parallel_for) {
  parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* o = out + r * f;
      for (int64_t k = 0; k < f; ++k) o[k] = 0.f;
      for (int64_t e = rowptr[r]; e < rowptr[r + 1]; ++e) {
        const float* xi = x + col[e] * f;
        for (int64_t k = 0; k < f; ++k) o[k] += xi[k];
      }
    }
  });
}
