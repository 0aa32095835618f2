// CPU kernels of the low-precision family: quantize, qlinear (W8A8 / W4A8) and qspmm.
//
// qlinear fuses the per-row quantization of x, the int8 x int8 (or int4) product with int32
// accumulation and the fp32 epilogue: a thread quantizes 32 rows of x into a small int8 buffer,
// multiplies them against the weight panel (which stays in L2) and writes the finished
// outputs; x is read once and never materialised in int8 in memory. The product runs on AMX,
// AVX-512 VNNI, AVX2 (vpsignb / vpmaddubsw / vpmaddwd, docs/lowp.md) or a scalar
// loop, chosen at run time; all are exact integer arithmetic, so they agree bit for bit.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/stream_output.h"
#include "cpu/csr_rows.h"
#include "glue/lowp_args.h"

// The x86 paths (AVX2, AVX-512 VNNI, AMX), each chosen at run time. -DSCANGRAPH_LOWP_AVX2=0 leaves
// the portable code alone, as on ARM: CI compiles it so (.ci/run).
#ifndef SCANGRAPH_LOWP_AVX2
#if defined(__GNUC__) && defined(__x86_64__)
#define SCANGRAPH_LOWP_AVX2 1
#else
#define SCANGRAPH_LOWP_AVX2 0
#endif
#endif
#if SCANGRAPH_LOWP_AVX2
#include <immintrin.h>
#endif

// The epilogue computes ((acc * sx) * sw) + bias as separate fp32 roundings, as the reference
// does; contracting it into an FMA (GCC's default under AVX-512 / FMA targets) would round
// differently per ISA path.
#pragma GCC optimize("fp-contract=off")

namespace scangraph {
namespace {

template <typename scalar_t>
inline float to_float(scalar_t v) { return static_cast<float>(v); }

#define SCANGRAPH_LOWP_INLINE inline __attribute__((always_inline))

// max |x| of n values in fp32, as an integer max over the sign-cleared bit patterns (monotone
// for floats, and it vectorises where a float max with NaN handling does not); NaN sorts above
// inf, so a non-finite input comes out non-finite and check_finite reports it.
template <typename scalar_t>
SCANGRAPH_LOWP_INLINE float absmax(const scalar_t* __restrict__ x, int64_t n) {
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

inline void check_finite(float amax, const char* op) {
  TORCH_CHECK(std::isfinite(amax), op, ": x holds NaN or inf, which has no symmetric quantization");
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
        m = (mo > m || mo != mo) ? mo : m;  // keeps a NaN once seen
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
// Quantizes one row of x (K values) into q (Kp bytes, zero padded) and returns its scale.
// kOffset stores q + 128 as uint8 (the VNNI path's unsigned operand). Always inlined into the
// ISA-specific callers so both loops vectorise for their instruction set.
template <typename scalar_t, bool kOffset>
SCANGRAPH_LOWP_INLINE float quantize_row(const scalar_t* __restrict__ x, int64_t K, int64_t Kp,
                                         int8_t* __restrict__ q) {
  const float amax = absmax(x, K);
  check_finite(amax, "scangraph::qlinear");
  const float scale = amax / 127.0f;
  const int offset = kOffset ? 128 : 0;
  if (scale > 0.0f) {
    for (int64_t k = 0; k < K; ++k) {
      float v = round_half_even(to_float(x[k]) / scale);
      v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
      q[k] = static_cast<int8_t>(static_cast<uint8_t>(static_cast<int>(v) + offset));
    }
  } else {
    std::memset(q, offset, K);
  }
  std::memset(q + K, offset, Kp - K);
  return scale;
}

#if SCANGRAPH_LOWP_AVX2
// quantize_row<float, false> for the AVX2 path, 32 values per step: the compiler turns the
// generic loop's clamp and narrowing into compare-and-blend sequences. The same fp32 division;
// the clamp is applied before rounding, which gives the same integers because rounding is
// monotone and +-127 are integers; vpackssdw / vpacksswb narrow (their saturation never
// applies within +-127) and vpermd restores the order the two 128-bit lanes of the packs mix.
// A call per row (not inlined: the generic caller is not compiled for AVX2).
__attribute__((target("avx2"))) float quantize_row_avx2(const float* __restrict__ x, int64_t K, int64_t Kp,
                                                        int8_t* __restrict__ q) {
  const float amax = absmax(x, K);
  check_finite(amax, "scangraph::qlinear");
  const float scale = amax / 127.0f;
  if (!(scale > 0.0f)) {
    std::memset(q, 0, Kp);
    return scale;
  }
  const __m256 s = _mm256_set1_ps(scale), hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m256i v[4];
    for (int i = 0; i < 4; ++i) {
      const __m256 d = _mm256_div_ps(_mm256_loadu_ps(x + k + 8 * i), s);
      const __m256 c = _mm256_max_ps(_mm256_min_ps(d, hi), lo);
      v[i] = _mm256_cvttps_epi32(_mm256_round_ps(c, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + k), _mm256_permutevar8x32_epi32(bytes, order));
  }
  for (; k < K; ++k) {
    float v = round_half_even(x[k] / scale);
    v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
    q[k] = static_cast<int8_t>(v);
  }
  std::memset(q + K, 0, Kp - K);
  return scale;
}
#endif

template <Activation kAct>
SCANGRAPH_LOWP_INLINE float activate(float v) {
  if constexpr (kAct == Activation::Relu) return v > 0.0f ? v : 0.0f;
  if constexpr (kAct == Activation::Gelu) return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
  if constexpr (kAct == Activation::Silu) return v / (1.0f + std::exp(-v));
  return v;
}

// ---- the weight panel -----------------------------------------------------------------------------
// Every path multiplies against one int8 layout, [N / 16][K / 4][16][4]: 4 consecutive k of 16
// columns lie together, so one vector load holds 4 k of several columns and each int32 lane
// accumulates its own column (no horizontal sums), and each 16-column block is one contiguous
// stream over K (a power-of-two stride between k steps would map a tile's lines onto a few
// cache sets). int4 weights are unpacked into it once per call (N * K bytes, L2 resident,
// amortised over all M rows). K is zero padded to 4 (64 for AMX) and N to 16 (32 for AMX): zeros
// add nothing to the integer dot products, and the micro-kernels need no tail cases.
constexpr int64_t kPanelLanes = 16;  // columns per panel block
// Rows quantized together, which then share each column block while it sits in L1.
constexpr int64_t kGroupRows = 32;
// AMX multiplies 64 k at a time and we take 32 columns (two B tiles) per step: its panel's
// K and N are padded to those.
constexpr int64_t kAmxCols = 32, kAmxK = 64;

struct WeightPanel {
  std::vector<int8_t> bytes;    // [Np / 16][Kq][16][4]
  std::vector<int32_t> offset;  // 128 * sum_k w[n, k], (Np,): the VNNI path's uint8 correction
  int64_t Kq = 0, Np = 0;       // K / 4 and N rounded up to multiples of kq_multiple, n_multiple
  int64_t block_bytes() const { return Kq * kPanelLanes * 4; }
  const int8_t* block(int64_t n0) const { return bytes.data() + (n0 / kPanelLanes) * block_bytes(); }
};

inline int64_t panel_index(const WeightPanel& panel, int64_t n, int64_t k) {
  return ((n / kPanelLanes) * panel.Kq + k / 4) * (kPanelLanes * 4) + (n % kPanelLanes) * 4 + k % 4;
}

WeightPanel pack_weight(const QLinearParams& p, int64_t kq_multiple, int64_t n_multiple) {
  WeightPanel panel;
  panel.Kq = ((p.K + 3) / 4 + kq_multiple - 1) / kq_multiple * kq_multiple;
  panel.Np = (p.N + n_multiple - 1) / n_multiple * n_multiple;
  panel.bytes.assign(panel.Kq * panel.Np * 4, 0);
  panel.offset.assign(panel.Np, 0);
  for (int64_t n = 0; n < p.N; ++n) {
    const int8_t* src = p.w + n * p.w_row_stride;
    int32_t sum = 0;
    for (int64_t k = 0; k < p.K; ++k) {
      const int v = p.w_bits == 4 ? unpack_nibble(static_cast<uint8_t>(src[k >> 1]), int(k & 1)) : int(src[k]);
      panel.bytes[panel_index(panel, n, k)] = static_cast<int8_t>(v);
      sum += v;
    }
    panel.offset[n] = 128 * sum;
  }
  return panel;
}

// ---- the products: acc (rows x Np int32, row stride Np) = q (rows x Kp int8, row stride Kp)
// times the panel, for rows a multiple of the path's tile rows. -----------------------------------

// Scalar: one row against one 16-column block at a time.
void scalar_product(const int8_t* q, int64_t rows, const WeightPanel& panel, int32_t* acc) {
  const int64_t Kp = panel.Kq * 4;
  for (int64_t n0 = 0; n0 < panel.Np; n0 += kPanelLanes) {
    for (int64_t r = 0; r < rows; ++r) {
      const int8_t* qr = q + r * Kp;
      const int8_t* w = panel.block(n0);
      int32_t a[kPanelLanes] = {};
      for (int64_t kq = 0; kq < panel.Kq; ++kq, w += kPanelLanes * 4)
        for (int64_t c = 0; c < kPanelLanes; ++c)
          for (int64_t j = 0; j < 4; ++j) a[c] += int32_t(qr[kq * 4 + j]) * int32_t(w[c * 4 + j]);
      std::memcpy(acc + r * panel.Np + n0, a, sizeof(a));
    }
  }
}

#if SCANGRAPH_LOWP_AVX2
// AVX2 has no int8 dot product into int32 without saturation; vpmaddubsw multiplies unsigned by
// signed bytes into int16 pairs. Both sides are kept within +-127 by feeding |x| and w carrying
// x's sign: pairs sum to at most 2 * 127 * 127 = 32258 < 2^15, so the int16 step never
// saturates, and vpmaddwd with ones adds the two pairs of each 4 k into one int32 lane exactly.
// A tile is 4 rows x one 16-column block: 8 ymm accumulators, 2 weight registers, and per row a
// broadcast of its 4 k, their absolute values and two temporaries: 15 of the 16 registers.
constexpr int64_t kAvx2Rows = 4;

__attribute__((target("avx2"))) inline void avx2_tile(const int8_t* q, int64_t Kp, const int8_t* w, int64_t Kq,
                                                      int32_t* acc, int64_t Np) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i a[kAvx2Rows][2];
  for (int r = 0; r < kAvx2Rows; ++r) a[r][0] = a[r][1] = _mm256_setzero_si256();
  for (int64_t kq = 0; kq < Kq; ++kq, w += kPanelLanes * 4) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));       // columns 0-7
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32));  // columns 8-15
    for (int r = 0; r < kAvx2Rows; ++r) {
      int32_t four;
      std::memcpy(&four, q + r * Kp + kq * 4, 4);
      const __m256i xb = _mm256_set1_epi32(four);
      const __m256i ax = _mm256_sign_epi8(xb, xb);
      a[r][0] = _mm256_add_epi32(a[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(w0, xb)), ones));
      a[r][1] = _mm256_add_epi32(a[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(w1, xb)), ones));
    }
  }
  for (int r = 0; r < kAvx2Rows; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * Np), a[r][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * Np + 8), a[r][1]);
  }
}

// Column block outermost: a block's weights (K * 16 bytes, 8 KiB at K = 512) stay in L1 while
// every row tile of the group uses them.
__attribute__((target("avx2"))) void avx2_product(const int8_t* q, int64_t rows, const WeightPanel& panel,
                                                  int32_t* acc) {
  const int64_t Kp = panel.Kq * 4;
  for (int64_t n0 = 0; n0 < panel.Np; n0 += kPanelLanes)
    for (int64_t r = 0; r < rows; r += kAvx2Rows)
      avx2_tile(q + r * Kp, Kp, panel.block(n0), panel.Kq, acc + r * panel.Np + n0, panel.Np);
}

// ---- AVX-512 VNNI ---------------------------------------------------------------------------------
// vpdpbusd multiplies unsigned by signed bytes and adds groups of 4 into int32 lanes without
// intermediate saturation, 64 products per instruction. x is offset into uint8 (q + 128, exact
// in 0..255) and the offset is removed afterwards: sum_k (q + 128) w = acc + 128 * sum_k w.
constexpr int64_t kVnniRows = 4;      // rows per micro-kernel step
constexpr int64_t kVnniBlocks = 4;    // zmm column blocks per step: 4 x 4 = 16 accumulators of 32 registers

#define SCANGRAPH_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))
// acc rows (kVnniRows x Np int32) = sum_k xu[r][k] * panel[k][n] - offset[n], for kBlocks zmm
// column blocks starting at n0.
template <int kBlocks>
SCANGRAPH_VNNI_TARGET inline void vnni_tile(const uint8_t* const* xu, const WeightPanel& panel, int64_t n0,
                                            int32_t* const* acc) {
  __m512i a[kVnniRows][kBlocks];
  for (int r = 0; r < kVnniRows; ++r)
    for (int b = 0; b < kBlocks; ++b) a[r][b] = _mm512_setzero_si512();
  const int64_t block_bytes = panel.block_bytes();
  const int8_t* w = panel.block(n0);
  for (int64_t kq = 0; kq < panel.Kq; ++kq, w += kPanelLanes * 4) {
    __m512i wv[kBlocks];
    for (int b = 0; b < kBlocks; ++b) wv[b] = _mm512_loadu_si512(w + b * block_bytes);
    for (int r = 0; r < kVnniRows; ++r) {
      int32_t four;
      std::memcpy(&four, xu[r] + kq * 4, 4);
      const __m512i xb = _mm512_set1_epi32(four);
      for (int b = 0; b < kBlocks; ++b) a[r][b] = _mm512_dpbusd_epi32(a[r][b], xb, wv[b]);
    }
  }
  for (int b = 0; b < kBlocks; ++b) {
    const __m512i off = _mm512_loadu_si512(panel.offset.data() + n0 + b * kPanelLanes);
    for (int r = 0; r < kVnniRows; ++r)
      _mm512_storeu_si512(acc[r] + n0 + b * kPanelLanes, _mm512_sub_epi32(a[r][b], off));
  }
}

// q holds q + 128 as uint8 here. Column tile outermost: a tile's weights (at most 4 x 8 KiB for
// K = 512) stay in L1 while every row of the group uses them.
SCANGRAPH_VNNI_TARGET void vnni_product(const int8_t* q, int64_t rows, const WeightPanel& panel, int32_t* acc) {
  const uint8_t* xu[kGroupRows];
  int32_t* accr[kGroupRows];
  for (int64_t r = 0; r < rows; ++r) {
    xu[r] = reinterpret_cast<const uint8_t*>(q + r * panel.Kq * 4);
    accr[r] = acc + r * panel.Np;
  }
  int64_t n0 = 0;
  for (; n0 + kVnniBlocks * kPanelLanes <= panel.Np; n0 += kVnniBlocks * kPanelLanes)
    for (int64_t r = 0; r < rows; r += kVnniRows) vnni_tile<kVnniBlocks>(xu + r, panel, n0, accr + r);
  for (; n0 < panel.Np; n0 += kPanelLanes)
    for (int64_t r = 0; r < rows; r += kVnniRows) vnni_tile<1>(xu + r, panel, n0, accr + r);
}

// ---- AMX ------------------------------------------------------------------------------------------
// One AMX tdpbssd adds A (16 rows x 64 int8 k) times B (16 rows of 4 k x 16 columns, the panel
// layout) into a 16 x 16 int32 tile: 16 384 signed x signed products, so no uint8 offset. The
// quantized rows of x are the A tiles straight from the row buffer (stride Kp), and the panel
// with K padded to 64 is, 16 columns by 64 k at a time, exactly the B tiles (stride 64 bytes).
// A 2 x 2 block of C tiles (32 rows x 32 columns) with two A and two B tiles fills the 8 tile
// registers. The product is then a small share of the time: quantizing x and the epilogue, both
// AVX-512 here, and the memory traffic dominate.
static_assert(kGroupRows == 32, "an AMX group is two 16-row A tiles");

#define SCANGRAPH_AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni,amx-tile,amx-int8")))

// The palette-1 tile configuration (Intel SDM, LDTILECFG): 64 bytes, per thread.
struct alignas(64) AmxTileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: C (rows 0-15 / 16-31 x columns 0-15 / 16-31); 4-5: A; 6-7: B; all 16 x 64 bytes.
SCANGRAPH_AMX_TARGET void amx_configure() {
  AmxTileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.colsb[t] = 64;
    config.rows[t] = 16;
  }
  _tile_loadconfig(&config);
}

// All kGroupRows rows (the caller pads), 32 columns at a time.
SCANGRAPH_AMX_TARGET void amx_product(const int8_t* q, int64_t, const WeightPanel& panel, int32_t* acc) {
  const int64_t Kp = panel.Kq * 4, block_bytes = panel.block_bytes(), acc_stride = panel.Np * 4;
  for (int64_t n0 = 0; n0 < panel.Np; n0 += kAmxCols) {
    const int8_t* b0 = panel.block(n0);
    const int8_t* b1 = b0 + block_bytes;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t k0 = 0; k0 < Kp; k0 += kAmxK) {
      _tile_loadd(4, q + k0, Kp);
      _tile_loadd(5, q + 16 * Kp + k0, Kp);
      _tile_loadd(6, b0 + k0 * kPanelLanes, 64);  // rows k0 / 4 ... of 64 bytes
      _tile_loadd(7, b1 + k0 * kPanelLanes, 64);
      _tile_dpbssd(0, 4, 6);
      _tile_dpbssd(1, 4, 7);
      _tile_dpbssd(2, 5, 6);
      _tile_dpbssd(3, 5, 7);
    }
    _tile_stored(0, acc + n0, acc_stride);
    _tile_stored(1, acc + n0 + 16, acc_stride);
    _tile_stored(2, acc + 16 * panel.Np + n0, acc_stride);
    _tile_stored(3, acc + 16 * panel.Np + n0 + 16, acc_stride);
  }
}
#endif

// ---- one row group after another --------------------------------------------------------------------
// One output row: ((acc * sx) * sw) + bias in fp32 (the reference's order), activation, one
// rounding to the output type; int32 output is acc itself. Compile-time activation and
// restrict pointers so the loop vectorises (relu / none) inside each ISA's caller.
template <typename out_t, Activation kAct>
SCANGRAPH_LOWP_INLINE void epilogue_row(const int32_t* __restrict__ acc, float sx, const float* __restrict__ sw,
                                        const float* __restrict__ bias, out_t* __restrict__ o, int64_t N) {
  if constexpr (std::is_same_v<out_t, int32_t>) {
    std::memcpy(o, acc, N * sizeof(int32_t));
  } else if (bias) {
    for (int64_t n = 0; n < N; ++n) o[n] = static_cast<out_t>(activate<kAct>(float(acc[n]) * sx * sw[n] + bias[n]));
  } else {
    for (int64_t n = 0; n < N; ++n) o[n] = static_cast<out_t>(activate<kAct>(float(acc[n]) * sx * sw[n]));
  }
}

template <typename out_t>
SCANGRAPH_LOWP_INLINE void qlinear_epilogue(const QLinearParams& p, const int32_t* acc, float sx, out_t* o) {
  const float* bias = static_cast<const float*>(p.bias);
  switch (p.activation) {
    case Activation::Relu: return epilogue_row<out_t, Activation::Relu>(acc, sx, p.w_scale, bias, o, p.N);
    case Activation::Gelu: return epilogue_row<out_t, Activation::Gelu>(acc, sx, p.w_scale, bias, o, p.N);
    case Activation::Silu: return epilogue_row<out_t, Activation::Silu>(acc, sx, p.w_scale, bias, o, p.N);
    default: return epilogue_row<out_t, Activation::None>(acc, sx, p.w_scale, bias, o, p.N);
  }
}

// A task's scratch: its group's quantized rows (kGroupRows x Kp int8), their accumulators
// (kGroupRows x Np int32), and one fp32 output row staged in L1 for streaming stores.
struct GroupBuffers {
  std::vector<int8_t> q;
  std::vector<int32_t> acc;
  std::vector<float> row;
  explicit GroupBuffers(const WeightPanel& panel)
      : q(kGroupRows * panel.Kq * 4), acc(kGroupRows * panel.Np), row(panel.Np) {}
};

// Row groups [g0, g1) of kGroupRows rows: quantize them into qbuf (as uint8 q + 128 when
// kOffset), padded with zero rows to a multiple of kTileRows; the product into accbuf; the
// epilogue. Always inlined into one wrapper per ISA below, so that quantizing and the epilogue
// vectorise for that ISA.
template <typename scalar_t, typename out_t, bool kOffset, int64_t kTileRows, bool kAvx2Quantize = false,
          typename Product>
SCANGRAPH_LOWP_INLINE void qlinear_groups(const QLinearParams& p, const WeightPanel& panel, int64_t g0, int64_t g1,
                                          GroupBuffers& buffers, Product product) {
  const int64_t Kp = panel.Kq * 4;
  int8_t* qbuf = buffers.q.data();
  int32_t* accbuf = buffers.acc.data();
  // Large fp32 outputs are written with streaming stores (csrc/cpu/stream_output.h): each row's
  // epilogue goes to an L1 row first, vectorised as usual, then streams out.
  const bool stream = std::is_same_v<out_t, float> && stream_output(p.out, p.M, p.N, sizeof(out_t));
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  out_t* out = static_cast<out_t*>(p.out);
  float sx[kGroupRows];
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t m0 = g * kGroupRows, rows = std::min<int64_t>(kGroupRows, p.M - m0);
    const int64_t padded = (rows + kTileRows - 1) / kTileRows * kTileRows;
    for (int64_t r = 0; r < padded; ++r) {
      if (r < rows) {
        // Ask for the same row of the next group now: reading x is the one stream from memory.
        if (g + 1 < g1 && m0 + kGroupRows + r < p.M) {
          const char* next = reinterpret_cast<const char*>(x + (m0 + kGroupRows + r) * p.x_row_stride);
          for (int64_t b = 0; b < p.K * int64_t(sizeof(scalar_t)); b += 64) __builtin_prefetch(next + b, 0, 3);
        }
        const scalar_t* xr = x + (m0 + r) * p.x_row_stride;
#if SCANGRAPH_LOWP_AVX2
        if constexpr (kAvx2Quantize && std::is_same_v<scalar_t, float> && !kOffset)
          sx[r] = quantize_row_avx2(xr, p.K, Kp, qbuf + r * Kp);
        else
#endif
          sx[r] = quantize_row<scalar_t, kOffset>(xr, p.K, Kp, qbuf + r * Kp);
      } else {
        std::memset(qbuf + r * Kp, kOffset ? 128 : 0, Kp);  // a missing row computes on zeros, is not stored
      }
    }
    product(qbuf, padded, panel, accbuf);
    for (int64_t r = 0; r < rows; ++r) {
      out_t* o = out + (m0 + r) * p.N;
      if constexpr (std::is_same_v<out_t, float>) {
        if (stream) {
          qlinear_epilogue(p, accbuf + r * panel.Np, sx[r], buffers.row.data());
          stream_copy(o, buffers.row.data(), p.N);
          continue;
        }
      }
      qlinear_epilogue(p, accbuf + r * panel.Np, sx[r], o);
    }
  }
  if (stream) stream_fence();  // the streamed stores are weakly ordered: drain them before the join
}

template <typename scalar_t, typename out_t>
void qlinear_scalar_groups(const QLinearParams& p, const WeightPanel& panel, int64_t g0, int64_t g1,
                           GroupBuffers& buffers) {
  qlinear_groups<scalar_t, out_t, false, 1>(p, panel, g0, g1, buffers, scalar_product);
}

#if SCANGRAPH_LOWP_AVX2
template <typename scalar_t, typename out_t>
__attribute__((target("avx2"))) void qlinear_avx2_groups(const QLinearParams& p, const WeightPanel& panel, int64_t g0,
                                                         int64_t g1, GroupBuffers& buffers) {
  qlinear_groups<scalar_t, out_t, false, kAvx2Rows, true>(p, panel, g0, g1, buffers, avx2_product);
}

template <typename scalar_t, typename out_t>
SCANGRAPH_VNNI_TARGET void qlinear_vnni_groups(const QLinearParams& p, const WeightPanel& panel, int64_t g0, int64_t g1,
                                               GroupBuffers& buffers) {
  qlinear_groups<scalar_t, out_t, true, kVnniRows>(p, panel, g0, g1, buffers, vnni_product);
}

template <typename scalar_t, typename out_t>
SCANGRAPH_AMX_TARGET void qlinear_amx_groups(const QLinearParams& p, const WeightPanel& panel, int64_t g0, int64_t g1,
                                             GroupBuffers& buffers) {
  amx_configure();
  qlinear_groups<scalar_t, out_t, false, kGroupRows>(p, panel, g0, g1, buffers, amx_product);
  _tile_release();
}
#endif

enum class QLinearIsa { Scalar, Avx2, Avx512Vnni, Amx };

// Groups of kGroupRows rows in parallel, each task with its own buffers.
template <typename scalar_t, typename out_t>
void qlinear_kernel(const QLinearParams& p, QLinearIsa isa) {
  const bool amx = isa == QLinearIsa::Amx;
  const WeightPanel panel = pack_weight(p, amx ? kAmxK / 4 : 1, amx ? kAmxCols : kPanelLanes);
  auto* groups = &qlinear_scalar_groups<scalar_t, out_t>;
#if SCANGRAPH_LOWP_AVX2
  if (isa == QLinearIsa::Avx2) groups = &qlinear_avx2_groups<scalar_t, out_t>;
  if (isa == QLinearIsa::Avx512Vnni) groups = &qlinear_vnni_groups<scalar_t, out_t>;
  if (amx) groups = &qlinear_amx_groups<scalar_t, out_t>;
#else
  TORCH_CHECK(isa == QLinearIsa::Scalar, "scangraph::qlinear: only the scalar path is compiled on this platform");
#endif
  at::parallel_for(0, (p.M + kGroupRows - 1) / kGroupRows, 1, [&](int64_t g0, int64_t g1) {
    GroupBuffers buffers(panel);
    groups(p, panel, g0, g1, buffers);
  });
}

QLinearIsa best_isa() {
  if (cpu::has_amx_int8()) return QLinearIsa::Amx;
  if (cpu::has_avx512_vnni()) return QLinearIsa::Avx512Vnni;
  if (cpu::has_avx2()) return QLinearIsa::Avx2;
  return QLinearIsa::Scalar;
}

at::Tensor qlinear_impl(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale, int64_t w_bits,
                        int64_t in_features, const std::optional<at::Tensor>& bias, c10::string_view activation,
                        std::optional<at::ScalarType> out_dtype, QLinearIsa isa) {
  QLinearCall call = prepare_qlinear(x, w, w_scale, w_bits, in_features, bias, activation, out_dtype);
  const at::ScalarType out_type = call.out.scalar_type();
  if (w_bits == 8) {
    // Symmetric weights lie in [-127, 127] (quantize never writes -128); the AVX2 sign trick
    // negates w, which would wrap at -128, so every path refuses it alike. N * K bytes: cheap.
    const QLinearParams& p = call.params;
    for (int64_t n = 0; n < p.N; ++n)
      for (int64_t k = 0; k < p.K; ++k)
        TORCH_CHECK(p.w[n * p.w_row_stride + k] != -128, "scangraph::qlinear: 8-bit weights must lie in "
                    "[-127, 127], found -128 in row ", n, " (quantize with scangraph.quantize)");
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "qlinear_cpu", [&] {
    auto run = [&](auto out_tag) {
      using out_t = decltype(out_tag);
      qlinear_kernel<scalar_t, out_t>(call.params, isa);
    };
    switch (out_type) {
      case at::kInt: run(int32_t{}); break;
      case at::kHalf: run(at::Half{}); break;
      case at::kBFloat16: run(at::BFloat16{}); break;
      default: run(float{}); break;
    }
  });
  return call.out;
}

at::Tensor qlinear_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale, int64_t w_bits,
                       int64_t in_features, const std::optional<at::Tensor>& bias, c10::string_view activation,
                       std::optional<at::ScalarType> out_dtype) {
  return qlinear_impl(x, w, w_scale, w_bits, in_features, bias, activation, out_dtype, best_isa());
}

// One named instruction-set path, whatever the CPU would pick: tests compare them bit for bit.
at::Tensor qlinear_cpu_isa(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale, int64_t w_bits,
                           int64_t in_features, const std::optional<at::Tensor>& bias, c10::string_view activation,
                           std::optional<at::ScalarType> out_dtype, c10::string_view isa) {
  const char* op = "scangraph::qlinear_cpu_isa";
  QLinearIsa chosen = QLinearIsa::Scalar;
  if (isa == "avx2") {
    TORCH_CHECK(cpu::has_avx2(), op, ": this CPU has no AVX2");
    chosen = QLinearIsa::Avx2;
  } else if (isa == "avx512_vnni") {
    TORCH_CHECK(cpu::has_avx512_vnni(), op, ": this CPU has no AVX-512 VNNI");
    chosen = QLinearIsa::Avx512Vnni;
  } else if (isa == "amx") {
    TORCH_CHECK(cpu::has_amx_int8(), op, ": this CPU (or its operating system) offers no AMX-INT8");
    chosen = QLinearIsa::Amx;
  } else {
    TORCH_CHECK(isa == "scalar", op, ": isa must be 'scalar', 'avx2', 'avx512_vnni' or 'amx', got '", std::string(isa),
                "'");
  }
  return qlinear_impl(x, w, w_scale, w_bits, in_features, bias, activation, out_dtype, chosen);
}

// ---- qspmm --------------------------------------------------------------------------------------
// Features per tile of the scalar loop: 64 int8 features are one cache line of a gathered row.
constexpr int64_t kQFeatureTile = 64;

// Features [f0, f0 + width) of row i, any width: the scalar form of qspmm_tile.
template <typename index_t, bool kExtreme>
SCANGRAPH_LOWP_INLINE void qspmm_tile_scalar(const QSpmmParams& p, int64_t begin, int64_t end, int64_t f0,
                                             int64_t width, float sign, float* __restrict__ o) {
  const index_t* __restrict__ col = static_cast<const index_t*>(p.col);
  float acc[kQFeatureTile];
  for (int64_t k = 0; k < width; ++k) acc[k] = kExtreme ? -std::numeric_limits<float>::infinity() : 0.0f;
  for (int64_t e = begin; e < end; ++e) {
    const int64_t j = int64_t(col[e]);
    const float coef = sign * (p.weight ? p.weight[e] : 1.0f) * p.x_scale[j];
    const int8_t* xr = p.x + j * p.x_row_stride + f0;
    for (int64_t k = 0; k < width; ++k) {
      const float m = coef * float(xr[k]);
      acc[k] = kExtreme ? (m > acc[k] ? m : acc[k]) : acc[k] + m;
    }
  }
  for (int64_t k = 0; k < width; ++k) o[k] = acc[k];
}

#if SCANGRAPH_LOWP_AVX2
// Edges ahead (in CSR order, across rows: most rows are shorter than this) whose feature rows
// are prefetched: the gathers are random, so the hardware prefetcher cannot predict them.
constexpr int64_t kQPrefetchDistance = 16;
// A row's edges are taken in blocks of this many: each edge's row address and coefficient are
// computed once per block, not once per feature tile.
constexpr int64_t kQEdgeBlock = 64;

// One block of a row's edges, kVectors x 8 features from f0: a (registers) accumulates the sum
// (or max of the sign-flipped messages) of coef[k] * q[rows[k] + f] over the block's edges in
// order. Intrinsics: GCC scalarises a generic int8 -> float vector conversion (movsbl + cvtsi2ss
// per element); vpmovsxbd + vcvtdq2ps widen 8 values in two instructions, and the FMA adds them.
template <bool kExtreme, int kVectors>
__attribute__((target("avx2,fma"), always_inline)) inline void qspmm_block_avx2(
    const int8_t* const* rows, const float* coef, int64_t n, int64_t f0, __m256 a[kVectors]) {
  for (int64_t k = 0; k < n; ++k) {
    const __m256 c = _mm256_broadcast_ss(coef + k);
    const int8_t* xr = rows[k] + f0;
    for (int v = 0; v < kVectors; ++v) {
      const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(xr + 8 * v))));
      a[v] = kExtreme ? _mm256_max_ps(_mm256_mul_ps(c, q), a[v]) : _mm256_fmadd_ps(c, q, a[v]);
    }
  }
}

// Features [f0, f0 + 8 kVectors) of a row, over its edge blocks. Rows longer than one block carry
// the partial sums through carry (the same per-feature order of additions as a single pass).
// The tile is multiplied by scale (1 / degree for mean, the sign for min) as it is stored;
// stream: non-temporal stores, for outputs larger than the cache (no read for ownership of
// lines the kernel overwrites whole and does not read again); o is then 32-byte aligned.
template <bool kExtreme, int kVectors>
__attribute__((target("avx2,fma"), always_inline)) inline void qspmm_tile_avx2(
    const int8_t* const* rows, const float* coef, int64_t n, int64_t f0, bool first, bool last, float scale,
    bool stream, float* __restrict__ carry, float* __restrict__ o) {
  __m256 a[kVectors];
  for (int v = 0; v < kVectors; ++v)
    a[v] = first ? _mm256_set1_ps(kExtreme ? -__builtin_inff() : 0.0f) : _mm256_loadu_ps(carry + f0 + 8 * v);
  qspmm_block_avx2<kExtreme, kVectors>(rows, coef, n, f0, a);
  if (!last) {
    for (int v = 0; v < kVectors; ++v) _mm256_storeu_ps(carry + f0 + 8 * v, a[v]);
    return;
  }
  const __m256 s = _mm256_set1_ps(scale);
  for (int v = 0; v < kVectors; ++v) {
    if (stream) _mm256_stream_ps(o + f0 + 8 * v, _mm256_mul_ps(a[v], s));
    else _mm256_storeu_ps(o + f0 + 8 * v, _mm256_mul_ps(a[v], s));
  }
}

template <typename index_t, int kReduce>
__attribute__((target("avx2,fma"))) void qspmm_range_avx2(const QSpmmParams& p, int64_t r0, int64_t r1) {
  constexpr bool kExtreme = kReduce >= 2;
  const index_t* __restrict__ col = static_cast<const index_t*>(p.col);
  const int64_t F = p.num_features, F8 = F / 8 * 8, num_edges = p.rowptr[p.num_rows];
  const float sign = kReduce == 3 ? -1.0f : 1.0f;  // min = -max of the negated messages
  const bool stream = stream_output(p.out, p.num_rows, F, sizeof(float));
  const int8_t* rows[kQEdgeBlock];
  alignas(32) float coef[kQEdgeBlock];
  std::vector<float> carry(F8);
  for (int64_t i = r0; i < r1; ++i) {
    const int64_t begin = p.rowptr[i], end = p.rowptr[i + 1];
    float* o = p.out + i * F;
    if (begin == end) { std::fill(o, o + F, 0.0f); continue; }
    const float scale = kReduce == 1 ? 1.0f / float(end - begin) : sign;
    for (int64_t b0 = begin; b0 < end; b0 += kQEdgeBlock) {
      const int64_t n = std::min(kQEdgeBlock, end - b0);
      for (int64_t k = 0; k < n; ++k) {
        const int64_t e = b0 + k, j = int64_t(col[e]);
        if (e + kQPrefetchDistance < num_edges) {
          const int8_t* ahead = p.x + int64_t(col[e + kQPrefetchDistance]) * p.x_row_stride;
          for (int64_t f = 0; f < F; f += 64) _mm_prefetch(reinterpret_cast<const char*>(ahead + f), _MM_HINT_T0);
        }
        rows[k] = p.x + j * p.x_row_stride;
        // Dequantization folded into the edge coefficient: one multiply per edge, not per feature.
        coef[k] = sign * (p.weight ? p.weight[e] : 1.0f) * p.x_scale[j];
      }
      const bool first = b0 == begin, last = b0 + n == end;
      for (int64_t f0 = 0, width = 0; f0 < F8; f0 += width) {
        const int64_t left = F8 - f0;
        width = left >= 64 ? 64 : left >= 32 ? 32 : left >= 16 ? 16 : 8;
        if (width == 64) qspmm_tile_avx2<kExtreme, 8>(rows, coef, n, f0, first, last, scale, stream, carry.data(), o);
        else if (width == 32) qspmm_tile_avx2<kExtreme, 4>(rows, coef, n, f0, first, last, scale, stream, carry.data(), o);
        else if (width == 16) qspmm_tile_avx2<kExtreme, 2>(rows, coef, n, f0, first, last, scale, stream, carry.data(), o);
        else qspmm_tile_avx2<kExtreme, 1>(rows, coef, n, f0, first, last, scale, stream, carry.data(), o);
      }
    }
    if (F8 < F) {  // the last F % 8 features
      qspmm_tile_scalar<index_t, kExtreme>(p, begin, end, F8, F - F8, sign, o + F8);
      for (int64_t k = F8; k < F; ++k) o[k] *= scale;
    }
  }
  if (stream) stream_fence();  // the streamed stores are weakly ordered: drain them before the join
}

// AVX-512: 32 zmm registers hold up to 256 fp32 sums (16 accumulators), so a whole GNN-width
// row (F <= 256) is summed in registers in one pass over the row's edges: each edge's index,
// scale and feature row are fetched once, and 16 features cost a widening load, a convert and
// an FMA (as on the AVX2 path, the FMA rounds once where the scalar loop rounds twice: within
// fp32 rounding).
template <typename index_t, bool kExtreme, int kVectors>
__attribute__((target("avx512f"))) void qspmm_tile_avx512(const QSpmmParams& p, int64_t begin, int64_t end,
                                                           int64_t f0, float sign, float* __restrict__ o) {
  const index_t* __restrict__ col = static_cast<const index_t*>(p.col);
  __m512 a[kVectors];
  for (int v = 0; v < kVectors; ++v) a[v] = _mm512_set1_ps(kExtreme ? -__builtin_inff() : 0.0f);
  for (int64_t e = begin; e < end; ++e) {
    if (e + kQPrefetchDistance < end) {  // the gathers are random: start the row a few edges ahead
      const int8_t* ahead = p.x + int64_t(col[e + kQPrefetchDistance]) * p.x_row_stride + f0;
      for (int v = 0; v < kVectors; v += 4) _mm_prefetch(reinterpret_cast<const char*>(ahead + 16 * v), _MM_HINT_T0);
    }
    const int64_t j = int64_t(col[e]);
    const __m512 coef = _mm512_set1_ps(sign * (p.weight ? p.weight[e] : 1.0f) * p.x_scale[j]);
    const int8_t* xr = p.x + j * p.x_row_stride + f0;
    for (int v = 0; v < kVectors; ++v) {
      const __m512 q = _mm512_cvtepi32_ps(
          _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xr + 16 * v))));
      a[v] = kExtreme ? _mm512_max_ps(_mm512_mul_ps(coef, q), a[v]) : _mm512_fmadd_ps(coef, q, a[v]);
    }
  }
  for (int v = 0; v < kVectors; ++v) _mm512_storeu_ps(o + 16 * v, a[v]);
}

template <typename index_t, int kReduce>
__attribute__((target("avx512f"))) void qspmm_range_avx512(const QSpmmParams& p, int64_t r0, int64_t r1) {
  constexpr bool kExtreme = kReduce >= 2;
  const int64_t F = p.num_features;
  const float sign = kReduce == 3 ? -1.0f : 1.0f;
  for (int64_t i = r0; i < r1; ++i) {
    const int64_t begin = p.rowptr[i], end = p.rowptr[i + 1];
    float* o = p.out + i * F;
    if (begin == end) { std::fill(o, o + F, 0.0f); continue; }
    for (int64_t f0 = 0, width = 0; f0 < F; f0 += width) {
      const int64_t left = F - f0;
      width = left >= 256 ? 256 : left >= 128 ? 128 : left >= 64 ? 64 : left >= 32 ? 32 : left >= 16 ? 16 : left;
      switch (width) {
        case 256: qspmm_tile_avx512<index_t, kExtreme, 16>(p, begin, end, f0, sign, o + f0); break;
        case 128: qspmm_tile_avx512<index_t, kExtreme, 8>(p, begin, end, f0, sign, o + f0); break;
        case 64: qspmm_tile_avx512<index_t, kExtreme, 4>(p, begin, end, f0, sign, o + f0); break;
        case 32: qspmm_tile_avx512<index_t, kExtreme, 2>(p, begin, end, f0, sign, o + f0); break;
        case 16: qspmm_tile_avx512<index_t, kExtreme, 1>(p, begin, end, f0, sign, o + f0); break;
        default: qspmm_tile_scalar<index_t, kExtreme>(p, begin, end, f0, width, sign, o + f0);
      }
      const float scale = kReduce == 1 ? 1.0f / float(end - begin) : sign;
      for (int64_t k = 0; k < width; ++k) o[f0 + k] *= scale;
    }
  }
}
#endif

template <typename index_t, int kReduce>
void qspmm_range_baseline(const QSpmmParams& p, int64_t r0, int64_t r1) {
  constexpr bool kExtreme = kReduce >= 2;
  const int64_t F = p.num_features;
  const float sign = kReduce == 3 ? -1.0f : 1.0f;  // min = -max of the negated messages
  for (int64_t i = r0; i < r1; ++i) {
    const int64_t begin = p.rowptr[i], end = p.rowptr[i + 1];
    float* o = p.out + i * F;
    if (begin == end) { std::fill(o, o + F, 0.0f); continue; }
    const float scale = kReduce == 1 ? 1.0f / float(end - begin) : sign;
    for (int64_t f0 = 0, width = 0; f0 < F; f0 += width) {
      width = std::min(kQFeatureTile, F - f0);
      qspmm_tile_scalar<index_t, kExtreme>(p, begin, end, f0, width, sign, o + f0);
      for (int64_t k = 0; k < width; ++k) o[f0 + k] *= scale;
    }
  }
}

// The instruction sets of the qspmm row loop; Best picks the widest the CPU has.
enum class QSpmmIsa { Best, Scalar, Avx2, Avx512 };

template <typename index_t, int kReduce>
void qspmm_rows(const QSpmmParams& p, QSpmmIsa isa) {
  auto* range = &qspmm_range_baseline<index_t, kReduce>;
#if SCANGRAPH_LOWP_AVX2
  if (isa == QSpmmIsa::Avx2 || (isa == QSpmmIsa::Best && cpu::has_avx2_fma()))
    range = &qspmm_range_avx2<index_t, kReduce>;
  if (isa == QSpmmIsa::Avx512 || (isa == QSpmmIsa::Best && cpu::has_avx512f()))
    range = &qspmm_range_avx512<index_t, kReduce>;
#endif
  // Chunks of equal work (edges + rows), as spmm: hub rows do not leave a thread idle.
  for_each_row_chunk(p.rowptr, p.num_rows, [&](int64_t r0, int64_t r1) { range(p, r0, r1); });
}

template <typename index_t>
void qspmm_dispatch(const QSpmmParams& p, QSpmmIsa isa) {
  switch (p.reduce) {
    case 0: qspmm_rows<index_t, 0>(p, isa); break;
    case 1: qspmm_rows<index_t, 1>(p, isa); break;
    case 2: qspmm_rows<index_t, 2>(p, isa); break;
    default: qspmm_rows<index_t, 3>(p, isa); break;
  }
}

at::Tensor qspmm_impl(const at::Tensor& rowptr, const at::Tensor& col, const std::optional<at::Tensor>& weight,
                      const at::Tensor& x, const at::Tensor& x_scale, c10::string_view reduce, QSpmmIsa isa) {
  QSpmmCall call = prepare_qspmm(rowptr, col, weight, x, x_scale, reduce);
  validate_csr(rowptr, col, x.size(0), "scangraph::qspmm");
  if (call.params.col_is_int32) qspmm_dispatch<int32_t>(call.params, isa);
  else qspmm_dispatch<int64_t>(call.params, isa);
  return call.out;
}

at::Tensor qspmm_cpu(const at::Tensor& rowptr, const at::Tensor& col, const std::optional<at::Tensor>& weight,
                     const at::Tensor& x, const at::Tensor& x_scale, c10::string_view reduce) {
  return qspmm_impl(rowptr, col, weight, x, x_scale, reduce, QSpmmIsa::Best);
}

// qspmm on a named instruction set (tests run every path the machine has against each other).
at::Tensor qspmm_cpu_isa(const at::Tensor& rowptr, const at::Tensor& col, const std::optional<at::Tensor>& weight,
                         const at::Tensor& x, const at::Tensor& x_scale, c10::string_view reduce,
                         c10::string_view isa) {
  const char* op = "scangraph::qspmm_cpu_isa";
  QSpmmIsa chosen = QSpmmIsa::Scalar;
  if (isa == "avx2") {
    TORCH_CHECK(cpu::has_avx2_fma(), op, ": this CPU has no AVX2 with FMA");
    chosen = QSpmmIsa::Avx2;
  } else if (isa == "avx512") {
    TORCH_CHECK(cpu::has_avx512f(), op, ": this CPU has no AVX-512");
    chosen = QSpmmIsa::Avx512;
  } else {
    TORCH_CHECK(isa == "scalar", op, ": isa must be 'scalar', 'avx2' or 'avx512', got '", std::string(isa), "'");
  }
  return qspmm_impl(rowptr, col, weight, x, x_scale, reduce, chosen);
}

}  // namespace

TORCH_LIBRARY_IMPL(scangraph, CPU, m) {
  m.impl("quantize", &quantize_cpu);
  m.impl("qlinear", &qlinear_cpu);
  m.impl("qlinear_cpu_isa", &qlinear_cpu_isa);
  m.impl("qspmm", &qspmm_cpu);
  m.impl("qspmm_cpu_isa", &qspmm_cpu_isa);
}

}  // namespace scangraph
