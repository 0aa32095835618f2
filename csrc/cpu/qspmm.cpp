// CPU kernel of qspmm: spmm over int8 per-row quantized features, fp32 out, dequantization fused
// per edge, on the widest of scalar / AVX2 / AVX-512 loops the CPU has.
#include "cpu/csr_rows.h"
#include "cpu/stream_output.h"
#include "cpu/lowp_common.h"

namespace scangraph {
namespace {

// ---- qspmm --------------------------------------------------------------------------------------
// Features per tile of the scalar loop: 64 int8 features are one cache line of a gathered row.
constexpr int64_t kQFeatureTile = 64;

// Features [f0, f0 + width) of row i, any width: the scalar form of qspmm_tile.
template <typename index_t, bool kExtreme>
SCANGRAPH_INLINE void qspmm_tile_scalar(const QSpmmParams& p, int64_t begin, int64_t end, int64_t f0,
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

#if SCANGRAPH_X86
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
#if SCANGRAPH_X86
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

Tensor qspmm_impl(const Tensor& rowptr, const Tensor& col, const std::optional<Tensor>& weight, const Tensor& x,
                  const Tensor& x_scale, StringArg reduce, QSpmmIsa isa) {
  KernelCall<QSpmmParams> call = prepare_qspmm(rowptr, col, weight, x, x_scale, reduce);
  validate_csr(rowptr, col, x.size(0), "qspmm");
  dispatch_index(call.params.col_is_int32, [&](auto index) { qspmm_dispatch<decltype(index)>(call.params, isa); });
  return call.out;
}

Tensor qspmm_cpu(const Tensor& rowptr, const Tensor& col, const std::optional<Tensor>& weight, const Tensor& x,
                 const Tensor& x_scale, StringArg reduce) {
  return qspmm_impl(rowptr, col, weight, x, x_scale, reduce, QSpmmIsa::Best);
}

// qspmm on a named instruction set (tests run every path the machine has against each other).
Tensor qspmm_cpu_isa(const Tensor& rowptr, const Tensor& col, const std::optional<Tensor>& weight, const Tensor& x,
                     const Tensor& x_scale, StringArg reduce, StringArg isa) {
  const char* op = "_qspmm_cpu_isa";
  QSpmmIsa chosen = QSpmmIsa::Scalar;
  if (isa == "avx2") {
    SCANGRAPH_CHECK(cpu::has_avx2_fma(), op, ": this CPU has no AVX2 with FMA");
    chosen = QSpmmIsa::Avx2;
  } else if (isa == "avx512") {
    SCANGRAPH_CHECK(cpu::has_avx512f(), op, ": this CPU has no AVX-512");
    chosen = QSpmmIsa::Avx512;
  } else {
    SCANGRAPH_CHECK(isa == "scalar", op, ": isa must be 'scalar', 'avx2' or 'avx512', got '", std::string(isa), "'");
  }
  return qspmm_impl(rowptr, col, weight, x, x_scale, reduce, chosen);
}

}  // namespace

SCANGRAPH_CPU_IMPLS(m) {
  SCANGRAPH_IMPL(m, "qspmm", &qspmm_cpu);
  SCANGRAPH_IMPL(m, "_qspmm_cpu_isa", &qspmm_cpu_isa);
}

}  // namespace scangraph
