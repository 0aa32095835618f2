// CPU kernel of qlinear (W8A8 / W4A8). It fuses the per-row quantization of x, the int8 x int8
// (or int4) product with int32 accumulation and the fp32 epilogue: a thread quantizes 32 rows of x into a small int8 buffer,
// multiplies them against the weight panel (which stays in L2) and writes the finished
// outputs; x is read once and never materialised in int8 in memory. The product runs on AMX,
// AVX-512 VNNI, AVX2 (vpsignb / vpmaddubsw / vpmaddwd, docs/lowp.md) or a scalar
// loop, chosen at run time; all are exact integer arithmetic, so they agree bit for bit.
#include <atomic>

#include "cpu/stream_output.h"
#include "cpu/lowp_common.h"

namespace scangraph {
namespace {

// ---- qlinear ------------------------------------------------------------------------------------
// Quantizes one row of x (K values) into q (Kp bytes, zero padded) and returns its scale: not
// finite for a row holding NaN or inf, whose q is then all zero (the caller raises).
// kOffset stores q + 128 as uint8 (the VNNI path's unsigned operand). Always inlined into the
// ISA-specific callers so both loops vectorise for their instruction set.
template <typename scalar_t, bool kOffset>
SCANGRAPH_INLINE float quantize_row(const scalar_t* __restrict__ x, int64_t K, int64_t Kp,
                                         int8_t* __restrict__ q) {
  const float amax = absmax(x, K);
  const float scale = amax / 127.0f;
  const int offset = kOffset ? 128 : 0;
  if (scale > 0.0f && std::isfinite(scale)) {
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

#if SCANGRAPH_X86
// quantize_row<float, false> for the AVX2 path, 32 values per step: the compiler turns the
// generic loop's clamp and narrowing into compare-and-blend sequences. The same fp32 division;
// the clamp is applied before rounding, which gives the same integers because rounding is
// monotone and +-127 are integers; vpackssdw / vpacksswb narrow (their saturation never
// applies within +-127) and vpermd restores the order the two 128-bit lanes of the packs mix.
// A call per row (not inlined: the generic caller is not compiled for AVX2).
__attribute__((target("avx2"))) float quantize_row_avx2(const float* __restrict__ x, int64_t K, int64_t Kp,
                                                        int8_t* __restrict__ q) {
  const float amax = absmax(x, K);
  const float scale = amax / 127.0f;
  if (!(scale > 0.0f && std::isfinite(scale))) {
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
SCANGRAPH_INLINE float activate(float v) {
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

#if SCANGRAPH_X86
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
SCANGRAPH_INLINE void epilogue_row(const int32_t* __restrict__ acc, float sx, const float* __restrict__ sw,
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
SCANGRAPH_INLINE void qlinear_epilogue(const QLinearParams& p, const int32_t* acc, float sx, out_t* o) {
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
  bool non_finite = false;  // a row of x held NaN or inf
  explicit GroupBuffers(const WeightPanel& panel)
      : q(kGroupRows * panel.Kq * 4), acc(kGroupRows * panel.Np), row(panel.Np) {}
};

// Row groups [g0, g1) of kGroupRows rows: quantize them into qbuf (as uint8 q + 128 when
// kOffset), padded with zero rows to a multiple of kTileRows; the product into accbuf; the
// epilogue. Always inlined into one wrapper per ISA below, so that quantizing and the epilogue
// vectorise for that ISA.
template <typename scalar_t, typename out_t, bool kOffset, int64_t kTileRows, bool kAvx2Quantize = false,
          typename Product>
SCANGRAPH_INLINE void qlinear_groups(const QLinearParams& p, const WeightPanel& panel, int64_t g0, int64_t g1,
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
#if SCANGRAPH_X86
        if constexpr (kAvx2Quantize && std::is_same_v<scalar_t, float> && !kOffset)
          sx[r] = quantize_row_avx2(xr, p.K, Kp, qbuf + r * Kp);
        else
#endif
          sx[r] = quantize_row<scalar_t, kOffset>(xr, p.K, Kp, qbuf + r * Kp);
        if (!std::isfinite(sx[r])) buffers.non_finite = true;
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

#if SCANGRAPH_X86
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
#if SCANGRAPH_X86
  if (isa == QLinearIsa::Avx2) groups = &qlinear_avx2_groups<scalar_t, out_t>;
  if (isa == QLinearIsa::Avx512Vnni) groups = &qlinear_vnni_groups<scalar_t, out_t>;
  if (amx) groups = &qlinear_amx_groups<scalar_t, out_t>;
#else
  SCANGRAPH_CHECK(isa == QLinearIsa::Scalar, "qlinear: only the scalar path is compiled on this platform");
#endif
  std::atomic<bool> non_finite{false};
  parallel_for(0, (p.M + kGroupRows - 1) / kGroupRows, 1, [&](int64_t g0, int64_t g1) {
    GroupBuffers buffers(panel);
    groups(p, panel, g0, g1, buffers);
    if (buffers.non_finite) non_finite.store(true, std::memory_order_relaxed);
  });
  check_finite(!non_finite.load(), "qlinear");
}

QLinearIsa best_isa() {
  if (cpu::has_amx_int8()) return QLinearIsa::Amx;
  if (cpu::has_avx512_vnni()) return QLinearIsa::Avx512Vnni;
  if (cpu::has_avx2()) return QLinearIsa::Avx2;
  return QLinearIsa::Scalar;
}

Tensor qlinear_impl(const Tensor& x, const Tensor& w, const Tensor& w_scale, int64_t w_bits, int64_t in_features,
                    const std::optional<Tensor>& bias, StringArg activation, std::optional<ScalarType> out_dtype,
                    QLinearIsa isa) {
  KernelCall<QLinearParams> call = prepare_qlinear(x, w, w_scale, w_bits, in_features, bias, activation, out_dtype);
  const ScalarType out_type = call.out.scalar_type();
  if (w_bits == 8) {
    // Symmetric weights lie in [-127, 127] (quantize never writes -128); the AVX2 sign trick
    // negates w, which would wrap at -128, so every path refuses it alike. N * K bytes: cheap.
    const QLinearParams& p = call.params;
    for (int64_t n = 0; n < p.N; ++n)
      for (int64_t k = 0; k < p.K; ++k)
        SCANGRAPH_CHECK(p.w[n * p.w_row_stride + k] != -128, "qlinear: 8-bit weights must lie in "
                        "[-127, 127], found -128 in row ", n, " (quantize with scangraph.quantize)");
  }
  dispatch_float(x.scalar_type(), "qlinear_cpu", [&](auto element) {
    using scalar_t = element_t<decltype(element)>;
    auto run = [&](auto out_tag) {
      using out_t = decltype(out_tag);
      qlinear_kernel<scalar_t, out_t>(call.params, isa);
    };
    switch (out_type) {
      case ScalarType::Int: run(int32_t{}); break;
      case ScalarType::Half: run(Half{}); break;
      case ScalarType::BFloat16: run(BFloat16{}); break;
      default: run(float{}); break;
    }
  });
  return call.out;
}

Tensor qlinear_cpu(const Tensor& x, const Tensor& w, const Tensor& w_scale, int64_t w_bits, int64_t in_features,
                   const std::optional<Tensor>& bias, StringArg activation, std::optional<ScalarType> out_dtype) {
  return qlinear_impl(x, w, w_scale, w_bits, in_features, bias, activation, out_dtype, best_isa());
}

// One named instruction-set path, whatever the CPU would pick: tests compare them bit for bit.
Tensor qlinear_cpu_isa(const Tensor& x, const Tensor& w, const Tensor& w_scale, int64_t w_bits, int64_t in_features,
                       const std::optional<Tensor>& bias, StringArg activation, std::optional<ScalarType> out_dtype,
                       StringArg isa) {
  const char* op = "_qlinear_cpu_isa";
  QLinearIsa chosen = QLinearIsa::Scalar;
  if (isa == "avx2") {
    SCANGRAPH_CHECK(cpu::has_avx2(), op, ": this CPU has no AVX2");
    chosen = QLinearIsa::Avx2;
  } else if (isa == "avx512_vnni") {
    SCANGRAPH_CHECK(cpu::has_avx512_vnni(), op, ": this CPU has no AVX-512 VNNI");
    chosen = QLinearIsa::Avx512Vnni;
  } else if (isa == "amx") {
    SCANGRAPH_CHECK(cpu::has_amx_int8(), op, ": this CPU (or its operating system) offers no AMX-INT8");
    chosen = QLinearIsa::Amx;
  } else {
    SCANGRAPH_CHECK(isa == "scalar", op, ": isa must be 'scalar', 'avx2', 'avx512_vnni' or 'amx', got '", std::string(isa),
                    "'");
  }
  return qlinear_impl(x, w, w_scale, w_bits, in_features, bias, activation, out_dtype, chosen);
}

}  // namespace

SCANGRAPH_CPU_IMPLS(m) {
  SCANGRAPH_IMPL(m, "qlinear", &qlinear_cpu);
  SCANGRAPH_IMPL(m, "_qlinear_cpu_isa", &qlinear_cpu_isa);
}

}  // namespace scangraph
