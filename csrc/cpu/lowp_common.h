// What the CPU kernels of the low-precision family share: quantize.cpp, qlinear.cpp and
// qspmm.cpp include it last, after their own headers.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/isa.h"
#include "glue/lowp_args.h"
#if SCANGRAPH_X86
#include <immintrin.h>
#endif

// The epilogues compute ((acc * sx) * sw) + bias and the dequantized sums as separate fp32
// roundings, as the reference does; contracting them into FMAs (GCC's default under AVX-512 /
// FMA targets) would round differently per ISA path. The pragma holds for the rest of each file
// that includes this one.
#pragma GCC optimize("fp-contract=off")

namespace scangraph {
namespace {

template <typename scalar_t>
inline float to_float(scalar_t v) { return static_cast<float>(v); }

// max |x| of n values in fp32, as an integer max over the sign-cleared bit patterns (monotone
// for floats, and it vectorises where a float max with NaN handling does not); NaN sorts above
// inf, so a non-finite input comes out non-finite and check_finite reports it.
template <typename scalar_t>
SCANGRAPH_INLINE float absmax(const scalar_t* __restrict__ x, int64_t n) {
  uint32_t max_bits = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = to_float(x[i]);
    uint32_t b;
    std::memcpy(&b, &v, 4);
    b &= 0x7fffffffu;
    max_bits = b > max_bits ? b : max_bits;
  }
  float m;
  std::memcpy(&m, &max_bits, 4);
  return m;
}

// A NaN or inf in x has no symmetric quantization. The kernels note it inside their parallel
// regions and raise after them: an exception thrown inside torch::stable::parallel_for's body
// reaches Python without its message under torch 2.11 (the shim turns it into an error code).
inline void check_finite(bool finite, const char* op) {
  SCANGRAPH_CHECK(finite, op, ": x holds NaN or inf, which has no symmetric quantization");
}

}  // namespace
}  // namespace scangraph
