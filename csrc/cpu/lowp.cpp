// CPU kernels of the low-precision family: quantize, qlinear (W8A8 / W4A8) and qspmm.
//
// qlinear fuses the per-row quantization of x, the int8 x int8 (or int4) product with int32
// accumulation and the fp32 epilogue: a thread quantizes two rows of x into a small int8
// buffer, multiplies them against every weight row (the weight panel stays in L2) and writes
// the finished outputs; x is read once and never materialised in int8 in memory.
// The product runs on AVX2 (vpsignb / vpmaddubsw / vpmaddwd, ALGORITHMS.md section 4) when the
// CPU has it, else on a scalar loop; both are exact integer arithmetic, so they agree bit for bit.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/csr_validate.h"
#include "glue/lowp_args.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define SCANGRAPH_LOWP_AVX2 1
#else
#define SCANGRAPH_LOWP_AVX2 0
#endif

namespace scangraph {
namespace {

// K is padded to a multiple of one AVX2 register of int8 (32 values) with zeros, which add
// nothing to the integer dot products.
constexpr int64_t kKPad = 32;
// Output columns per micro-kernel step: 2 rows x 4 columns = 8 int32 accumulator registers,
// which with the 4 x registers, the weight and the constant ones fits AVX2's 16.
constexpr int64_t kRowsPerStep = 2;
constexpr int64_t kColsPerStep = 4;

bool cpu_has_avx2() {
#if SCANGRAPH_LOWP_AVX2
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
#else
  return false;
#endif
}

template <typename scalar_t>
inline float to_float(scalar_t v) { return static_cast<float>(v); }

// max |x| of n values in fp32; NaN compares as larger than inf, so a non-finite row is seen.
template <typename scalar_t>
inline float absmax(const scalar_t* x, int64_t n, int64_t stride = 1) {
  float m = 0.0f;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    const float v = std::fabs(to_float(x[i * stride]));
    nan |= v != v;
    m = v > m ? v : m;
  }
  return nan ? std::numeric_limits<float>::quiet_NaN() : m;
}

inline void check_finite(float amax, const char* op) {
  TORCH_CHECK(std::isfinite(amax), op, ": input holds NaN or inf, which has no symmetric quantization");
}

// ---- quantize ---------------------------------------------------------------------------------
template <typename scalar_t>
void quantize_kernel(const QuantizeParams& p) {
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const int qmax = quant_max(p.bits);
  // Pass 1: absmax of every channel (elements (o, c, i) at (o * channels + c) * inner + i).
  at::parallel_for(0, p.channels, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      float m = 0.0f;
      for (int64_t o = 0; o < p.outer; ++o) {
        const float mo = absmax(x + (o * p.channels + c) * p.inner, p.inner);
        m = (mo > m || mo != mo) ? mo : m;
      }
      check_finite(m, "scangraph::quantize");
      p.scale[c] = m / float(qmax);
    }
  });
  // Pass 2: one output row (of the last dimension) per step, packing pairs for 4 bits.
  const int64_t L = p.last_dim, rows = L == 0 ? 0 : (p.outer * p.channels * p.inner) / L;
  const int64_t row_bytes = p.bits == 4 ? (L + 1) / 2 : L;
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* xr = x + r * L;
      auto q_at = [&](int64_t j) {
        const int64_t channel = ((r * L + j) / p.inner) % p.channels;
        return quantize_value(to_float(xr[j]), p.scale[channel], qmax);
      };
      int8_t* out = p.data + r * row_bytes;
      if (p.bits == 8) {
        for (int64_t j = 0; j < L; ++j) out[j] = static_cast<int8_t>(q_at(j));
      } else {
        for (int64_t b = 0; b < row_bytes; ++b) {
          const int lo = q_at(2 * b), hi = 2 * b + 1 < L ? q_at(2 * b + 1) : 0;
          out[b] = static_cast<int8_t>((lo & 0xF) | ((hi & 0xF) << 4));
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_cpu(const at::Tensor& x, int64_t bits, std::optional<int64_t> axis) {
  QuantizeCall call = prepare_quantize(x, bits, axis);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantize_cpu",
                                  [&] { quantize_kernel<scalar_t>(call.params); });
  return {call.data, call.scale};
}

// ---- qlinear ------------------------------------------------------------------------------------
// Quantizes one row of x (K values) into q (Kp bytes, zero padded); returns its scale.
template <typename scalar_t>
inline float quantize_row(const scalar_t* x, int64_t K, int64_t Kp, int8_t* q) {
  const float amax = absmax(x, K);
  check_finite(amax, "scangraph::qlinear");
  const float scale = amax / 127.0f;
  if (scale > 0.0f) {
    for (int64_t k = 0; k < K; ++k) {
      float v = round_half_even(to_float(x[k]) / scale);
      v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
      q[k] = static_cast<int8_t>(v);
    }
  } else {
    std::memset(q, 0, K);
  }
  std::memset(q + K, 0, Kp - K);
  return scale;
}

inline float activate(float v, Activation act) {
  switch (act) {
    case Activation::Relu: return v > 0.0f ? v : 0.0f;
    case Activation::Gelu: return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
    case Activation::Silu: return v / (1.0f + std::exp(-v));
    default: return v;
  }
}

// The weight panel: rows padded to Kp values (Kp / 2 bytes for int4, still packed) and to a
// multiple of kColsPerStep rows, zero filled: the micro-kernels then need no tail cases.
struct WeightPanel {
  std::vector<int8_t> bytes;
  int64_t row_bytes = 0, rows = 0;
};

WeightPanel pack_weight(const QLinearParams& p, int64_t Kp) {
  WeightPanel panel;
  panel.row_bytes = p.w_bits == 4 ? Kp / 2 : Kp;
  panel.rows = (p.N + kColsPerStep - 1) / kColsPerStep * kColsPerStep;
  panel.bytes.assign(panel.rows * panel.row_bytes, 0);
  const int64_t src_bytes = p.w_bits == 4 ? (p.K + 1) / 2 : p.K;
  for (int64_t n = 0; n < p.N; ++n) {
    const int8_t* src = p.w + n * p.w_row_stride;
    if (p.w_bits == 8)
      for (int64_t k = 0; k < p.K; ++k)
        // The AVX2 sign trick negates w; -128 would wrap. quantize() never produces it.
        TORCH_CHECK(src[k] != -128, "scangraph::qlinear: 8-bit weights must lie in [-127, 127], found -128 "
                    "in row ", n, " (use scangraph.quantize)");
    std::memcpy(panel.bytes.data() + n * panel.row_bytes, src, src_bytes);
  }
  return panel;
}

// acc[r][c] = dot(q rows r, weight rows n0 + c) for kRowsPerStep x kColsPerStep, scalar.
template <bool kInt4>
inline void dot_block_scalar(const int8_t* const* q, const int8_t* w, int64_t row_bytes, int64_t Kp,
                             int32_t acc[kRowsPerStep][kColsPerStep]) {
  for (int64_t c = 0; c < kColsPerStep; ++c) {
    const int8_t* wr = w + c * row_bytes;
    for (int64_t r = 0; r < kRowsPerStep; ++r) {
      int32_t s = 0;
      for (int64_t k = 0; k < Kp; ++k) {
        const int wk = kInt4 ? unpack_nibble(static_cast<uint8_t>(wr[k >> 1]), int(k & 1)) : int(wr[k]);
        s += int32_t(q[r][k]) * wk;
      }
      acc[r][c] = s;
    }
  }
}

#if SCANGRAPH_LOWP_AVX2
// 32 weights starting at k of one panel row, as int8 lanes; int4 is unpacked here, in registers.
template <bool kInt4>
__attribute__((target("avx2"), always_inline)) inline __m256i load_weights(const int8_t* wr, int64_t k) {
  if constexpr (!kInt4) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + k));
  } else {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + k / 2));
    const __m128i nibble = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(packed, nibble);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), nibble);
    // Element 2i is the low nibble of byte i: interleaving lo and hi restores the order.
    const __m256i v = _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
    const __m256i eight = _mm256_set1_epi8(8);
    return _mm256_sub_epi8(_mm256_xor_si256(v, eight), eight);  // 4-bit two's complement -> int8
  }
}

// Sum of the 8 int32 lanes of each of a0..a3 -> (sum a0, sum a1, sum a2, sum a3).
__attribute__((target("avx2"), always_inline)) inline __m128i hsum4(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// vpmaddubsw multiplies unsigned by signed bytes; both sides are kept within +-127 by feeding
// |x| and w carrying x's sign: pairs sum to at most 2 * 127 * 127 = 32258 < 2^15, so the int16
// step never saturates, and vpmaddwd with ones widens the pairs into int32 exactly.
template <bool kInt4>
__attribute__((target("avx2"))) void dot_block_avx2(const int8_t* const* q, const int8_t* w, int64_t row_bytes,
                                                     int64_t Kp, int32_t acc[kRowsPerStep][kColsPerStep]) {
  static_assert(kRowsPerStep == 2 && kColsPerStep == 4, "the register tile below is 2 x 4");
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i a[2][4];
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 4; ++c) a[r][c] = _mm256_setzero_si256();
  for (int64_t k = 0; k < Kp; k += 32) {
    const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[0] + k));
    const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[1] + k));
    const __m256i ax0 = _mm256_sign_epi8(x0, x0), ax1 = _mm256_sign_epi8(x1, x1);
    for (int c = 0; c < 4; ++c) {
      const __m256i wv = load_weights<kInt4>(w + c * row_bytes, k);
      a[0][c] = _mm256_add_epi32(a[0][c], _mm256_madd_epi16(_mm256_maddubs_epi16(ax0, _mm256_sign_epi8(wv, x0)), ones));
      a[1][c] = _mm256_add_epi32(a[1][c], _mm256_madd_epi16(_mm256_maddubs_epi16(ax1, _mm256_sign_epi8(wv, x1)), ones));
    }
  }
  for (int r = 0; r < 2; ++r)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(acc[r]), hsum4(a[r][0], a[r][1], a[r][2], a[r][3]));
}
#endif

using DotBlock = void (*)(const int8_t* const*, const int8_t*, int64_t, int64_t, int32_t[kRowsPerStep][kColsPerStep]);

template <typename scalar_t, typename out_t>
void qlinear_kernel(const QLinearParams& p, bool use_avx2) {
  const int64_t Kp = std::max<int64_t>(kKPad, (p.K + kKPad - 1) / kKPad * kKPad);
  const WeightPanel panel = pack_weight(p, Kp);
  DotBlock dot = p.w_bits == 4 ? &dot_block_scalar<true> : &dot_block_scalar<false>;
#if SCANGRAPH_LOWP_AVX2
  if (use_avx2) dot = p.w_bits == 4 ? &dot_block_avx2<true> : &dot_block_avx2<false>;
#endif
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const float* bias = static_cast<const float*>(p.bias);
  out_t* out = static_cast<out_t*>(p.out);
  const int64_t steps = (p.M + kRowsPerStep - 1) / kRowsPerStep;
  // Grain: enough row pairs per task that the weight panel's trip through L2 is amortised.
  at::parallel_for(0, steps, 16, [&](int64_t s0, int64_t s1) {
    std::vector<int8_t> qbuf(kRowsPerStep * Kp, 0);
    const int8_t* q[kRowsPerStep];
    float sx[kRowsPerStep];
    int32_t acc[kRowsPerStep][kColsPerStep];
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t m0 = s * kRowsPerStep, rows = std::min<int64_t>(kRowsPerStep, p.M - m0);
      for (int64_t r = 0; r < kRowsPerStep; ++r) {
        q[r] = qbuf.data() + r * Kp;
        // A missing last row computes on zeros and is not stored.
        sx[r] = r < rows ? quantize_row(x + (m0 + r) * p.x_row_stride, p.K, Kp, qbuf.data() + r * Kp) : 0.0f;
        if (r >= rows) std::memset(qbuf.data() + r * Kp, 0, Kp);
      }
      for (int64_t n0 = 0; n0 < p.N; n0 += kColsPerStep) {
        dot(q, panel.bytes.data() + n0 * panel.row_bytes, panel.row_bytes, Kp, acc);
        const int64_t cols = std::min<int64_t>(kColsPerStep, p.N - n0);
        for (int64_t r = 0; r < rows; ++r) {
          out_t* o = out + (m0 + r) * p.N + n0;
          for (int64_t c = 0; c < cols; ++c) {
            if constexpr (std::is_same_v<out_t, int32_t>) {
              o[c] = acc[r][c];
            } else {
              // ((acc * sx) * sw) + bias in fp32: the reference's order, rounded once at the end.
              float v = float(acc[r][c]) * sx[r] * p.w_scale[n0 + c];
              if (bias) v += bias[n0 + c];
              o[c] = static_cast<out_t>(activate(v, p.activation));
            }
          }
        }
      }
    }
  });
}

at::Tensor qlinear_impl(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale, int64_t w_bits,
                        int64_t in_features, const std::optional<at::Tensor>& bias, c10::string_view activation,
                        std::optional<at::ScalarType> out_dtype, bool use_avx2) {
  QLinearCall call = prepare_qlinear(x, w, w_scale, w_bits, in_features, bias, activation, out_dtype);
  const at::ScalarType out_type = call.out.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "qlinear_cpu", [&] {
    switch (out_type) {
      case at::kInt: qlinear_kernel<scalar_t, int32_t>(call.params, use_avx2); break;
      case at::kHalf: qlinear_kernel<scalar_t, at::Half>(call.params, use_avx2); break;
      case at::kBFloat16: qlinear_kernel<scalar_t, at::BFloat16>(call.params, use_avx2); break;
      default: qlinear_kernel<scalar_t, float>(call.params, use_avx2); break;
    }
  });
  return call.out;
}

at::Tensor qlinear_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale, int64_t w_bits,
                       int64_t in_features, const std::optional<at::Tensor>& bias, c10::string_view activation,
                       std::optional<at::ScalarType> out_dtype) {
  return qlinear_impl(x, w, w_scale, w_bits, in_features, bias, activation, out_dtype, cpu_has_avx2());
}

// The scalar path alone, whatever the CPU: lets tests compare both paths on one machine.
at::Tensor qlinear_scalar_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale, int64_t w_bits,
                              int64_t in_features, const std::optional<at::Tensor>& bias,
                              c10::string_view activation, std::optional<at::ScalarType> out_dtype) {
  return qlinear_impl(x, w, w_scale, w_bits, in_features, bias, activation, out_dtype, false);
}

// ---- qspmm --------------------------------------------------------------------------------------
// Features per register tile: 32 fp32 accumulators (4 AVX2 registers) across a row's edges.
constexpr int64_t kQFeatureTile = 32;

template <typename index_t, int kReduce>
inline __attribute__((always_inline)) void qspmm_row_range(const QSpmmParams& p, int64_t r0, int64_t r1) {
  const index_t* col = static_cast<const index_t*>(p.col);
  const int64_t F = p.num_features;
  constexpr bool kExtreme = kReduce >= 2;
  const float sign = kReduce == 3 ? -1.0f : 1.0f;  // min = -max of the negated messages
  for (int64_t i = r0; i < r1; ++i) {
    const int64_t begin = p.rowptr[i], end = p.rowptr[i + 1];
    float* o = p.out + i * F;
    if (begin == end) { std::fill(o, o + F, 0.0f); continue; }
    for (int64_t f0 = 0; f0 < F; f0 += kQFeatureTile) {
      const int64_t width = std::min<int64_t>(kQFeatureTile, F - f0);
      float acc[kQFeatureTile];
      for (int64_t k = 0; k < kQFeatureTile; ++k) acc[k] = kExtreme ? -std::numeric_limits<float>::infinity() : 0.0f;
      for (int64_t e = begin; e < end; ++e) {
        const int64_t j = int64_t(col[e]);
        // Dequantization folded into the edge coefficient: one multiply per edge, not per feature.
        const float coef = sign * (p.weight ? p.weight[e] : 1.0f) * p.x_scale[j];
        const int8_t* xr = p.x + j * p.x_row_stride + f0;
        if (width == kQFeatureTile) {
          for (int64_t k = 0; k < kQFeatureTile; ++k) {
            const float m = coef * float(xr[k]);
            acc[k] = kExtreme ? (m > acc[k] ? m : acc[k]) : acc[k] + m;
          }
        } else {
          for (int64_t k = 0; k < width; ++k) {
            const float m = coef * float(xr[k]);
            acc[k] = kExtreme ? (m > acc[k] ? m : acc[k]) : acc[k] + m;
          }
        }
      }
      const float scale = kReduce == 1 ? 1.0f / float(end - begin) : sign;
      for (int64_t k = 0; k < width; ++k) o[f0 + k] = acc[k] * scale;
    }
  }
}

template <typename index_t, int kReduce>
void qspmm_range_baseline(const QSpmmParams& p, int64_t r0, int64_t r1) { qspmm_row_range<index_t, kReduce>(p, r0, r1); }

#if SCANGRAPH_LOWP_AVX2
template <typename index_t, int kReduce>
__attribute__((target("avx2"))) void qspmm_range_avx2(const QSpmmParams& p, int64_t r0, int64_t r1) {
  qspmm_row_range<index_t, kReduce>(p, r0, r1);
}
#endif

template <typename index_t, int kReduce>
void qspmm_rows(const QSpmmParams& p) {
  auto* range = &qspmm_range_baseline<index_t, kReduce>;
#if SCANGRAPH_LOWP_AVX2
  if (cpu_has_avx2()) range = &qspmm_range_avx2<index_t, kReduce>;
#endif
  // Work per row ~ degree + 1: chunks of rows small enough to balance hub rows between threads.
  at::parallel_for(0, p.num_rows, 256, [&](int64_t r0, int64_t r1) { range(p, r0, r1); });
}

template <typename index_t>
void qspmm_dispatch(const QSpmmParams& p) {
  switch (p.reduce) {
    case 0: qspmm_rows<index_t, 0>(p); break;
    case 1: qspmm_rows<index_t, 1>(p); break;
    case 2: qspmm_rows<index_t, 2>(p); break;
    default: qspmm_rows<index_t, 3>(p); break;
  }
}

at::Tensor qspmm_cpu(const at::Tensor& rowptr, const at::Tensor& col, const std::optional<at::Tensor>& weight,
                     const at::Tensor& x, const at::Tensor& x_scale, c10::string_view reduce) {
  QSpmmCall call = prepare_qspmm(rowptr, col, weight, x, x_scale, reduce);
  validate_csr(rowptr, col, x.size(0), "scangraph::qspmm");
  if (call.params.col_is_int32) qspmm_dispatch<int32_t>(call.params);
  else qspmm_dispatch<int64_t>(call.params);
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(scangraph, CPU, m) {
  m.impl("quantize", &quantize_cpu);
  m.impl("qlinear", &qlinear_cpu);
  m.impl("qlinear_scalar", &qlinear_scalar_cpu);
  m.impl("qspmm", &qspmm_cpu);
}

}  // namespace scangraph
