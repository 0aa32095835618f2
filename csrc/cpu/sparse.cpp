// CPU kernels of the sparse message-passing family: spmm (sum | mean | max | min, and the
// backward of max / min) and sddmm.
//
// Rows are split into chunks of equal work (edges + rows), so a few hub rows do not leave
// threads idle; each row is owned by one thread, which accumulates in registers / a small
// opmath buffer and writes its output once: no atomics, results independent of thread count.
//
// The file builds on torch's regular C++ API (the package) and, with SCANGRAPH_STABLE_ABI, on the
// LibTorch stable ABI (tools/stable_abi): it names torch only through glue/torch_api.h.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/isa.h"
#include "cpu/csr_rows.h"
#include "cpu/stream_output.h"
#include "glue/sparse_args.h"

namespace scangraph {
namespace {

// The row loop is compiled twice, for the baseline ISA and for AVX2 (chosen at run time), from
// one always-inlined body: 8-wide float vectors on machines that have them, no -march flag.

// Features per register tile: 32 fp32 accumulators are 4 AVX2 registers (8 SSE), so a tile's
// sums stay in registers across the whole edge loop instead of a load-add-store per edge.
constexpr int64_t kFeatureTile = 32;
static_assert(kFeatureTile == 32, "the tile widths of spmm_row_range assume 32");

#if defined(__GNUC__)
// 8 floats; aligned(4) lets a pointer of this type read unaligned rows (vmovups / 2x movups).
typedef float float8 __attribute__((vector_size(32), aligned(4)));
#define SCANGRAPH_FLOAT8_TILE 1
#else
#define SCANGRAPH_FLOAT8_TILE 0
#endif

#if SCANGRAPH_FLOAT8_TILE
// kVectors x 8 fp32 features of one (row, head), summed in registers over the row's edges.
template <typename index_t, bool kWeighted, int kVectors>
SCANGRAPH_INLINE void accumulate_float8(const SpmmParams& p, const index_t* __restrict__ col,
                                               const float* __restrict__ w, const float* __restrict__ x,
                                               int64_t begin, int64_t end, int64_t h, float* acc) {
  float8 a[kVectors] = {};
  for (int64_t e = begin; e < end; ++e) {
    const float8* xr = reinterpret_cast<const float8*>(x + int64_t(col[e]) * p.x_row_stride);
    if constexpr (kWeighted) {
      const float we = w[e * p.weight_edge_stride + h * p.weight_head_stride];
      for (int v = 0; v < kVectors; ++v) a[v] += we * xr[v];
    } else {
      for (int v = 0; v < kVectors; ++v) a[v] += xr[v];
    }
  }
  float8* out = reinterpret_cast<float8*>(acc);
  for (int v = 0; v < kVectors; ++v) out[v] = a[v];
}
#endif

// Accumulates features [f0, f0 + width) of one (row, head) over its edges, edge by edge in CSR
// order: every feature sees the same summation order whatever the tile, so results do not
// depend on F or on the ISA.
template <typename scalar_t, typename index_t, bool kWeighted>
SCANGRAPH_INLINE void accumulate_edges(const SpmmParams& p, int64_t begin, int64_t end, int64_t h,
                                              int64_t f0, int64_t width,
                                              opmath_t<scalar_t>* __restrict__ acc) {
  using acc_t = opmath_t<scalar_t>;
  const index_t* __restrict__ col = static_cast<const index_t*>(p.col);
  const scalar_t* __restrict__ w = static_cast<const scalar_t*>(p.weight);
  const scalar_t* __restrict__ x = static_cast<const scalar_t*>(p.x) + h * p.x_head_stride + f0;
#if SCANGRAPH_FLOAT8_TILE
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (width == 32) return accumulate_float8<index_t, kWeighted, 4>(p, col, w, x, begin, end, h, acc);
    if (width == 16) return accumulate_float8<index_t, kWeighted, 2>(p, col, w, x, begin, end, h, acc);
    if (width == 8) return accumulate_float8<index_t, kWeighted, 1>(p, col, w, x, begin, end, h, acc);
  }
#endif
  for (int64_t k = 0; k < width; ++k) acc[k] = acc_t(0);
  for (int64_t e = begin; e < end; ++e) {
    const scalar_t* __restrict__ xr = x + int64_t(col[e]) * p.x_row_stride;
    if constexpr (kWeighted) {
      const acc_t we = acc_t(w[e * p.weight_edge_stride + h * p.weight_head_stride]);
      for (int64_t k = 0; k < width; ++k) acc[k] += we * acc_t(xr[k]);
    } else {
      for (int64_t k = 0; k < width; ++k) acc[k] += acc_t(xr[k]);
    }
  }
}

// Rows [row_begin, row_end) of spmm; scratch holds num_features opmath values.
template <typename scalar_t, typename index_t, bool kWeighted>
SCANGRAPH_INLINE void spmm_row_range(const SpmmParams& p, int64_t row_begin, int64_t row_end,
                                            opmath_t<scalar_t>* scratch) {
  using acc_t = opmath_t<scalar_t>;
  scalar_t* __restrict__ out = static_cast<scalar_t*>(p.out);
  const int64_t F = p.num_features;
  const bool stream = stream_output(out, p.num_rows * p.num_heads, F, sizeof(scalar_t));
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t begin = p.rowptr[row], end = p.rowptr[row + 1];
    const acc_t scale = (p.reduce == Reduce::Mean && end > begin) ? acc_t(1) / acc_t(end - begin) : acc_t(1);
    for (int64_t h = 0; h < p.num_heads; ++h) {
      scalar_t* __restrict__ o = out + (row * p.num_heads + h) * F;
      for (int64_t f0 = 0, width = 0; f0 < F; f0 += width) {
        // Tiles of 32, then 16 and 8, so small F also stays in registers.
        const int64_t left = F - f0;
        width = left >= 32 ? 32 : left >= 16 ? 16 : left >= 8 ? 8 : left;
        accumulate_edges<scalar_t, index_t, kWeighted>(p, begin, end, h, f0, width, scratch);
#if defined(__x86_64__)
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (stream) {  // width is a multiple of 8 here, and o + f0 32-byte aligned
            for (int64_t k = 0; k < width; k += 8) stream_store8(o + f0 + k, scratch + k, scale);
            continue;
          }
        }
#endif
        for (int64_t k = 0; k < width; ++k) o[f0 + k] = scalar_t(scratch[k] * scale);
      }
    }
  }
  if (stream) stream_fence();  // streamed stores are weakly ordered: drain before the join
}

template <typename scalar_t, typename index_t, bool kWeighted>
void spmm_row_range_baseline(const SpmmParams& p, int64_t r0, int64_t r1,
                             opmath_t<scalar_t>* scratch) {
  spmm_row_range<scalar_t, index_t, kWeighted>(p, r0, r1, scratch);
}

#if SCANGRAPH_X86
template <typename scalar_t, typename index_t, bool kWeighted>
__attribute__((target("avx2"))) void spmm_row_range_avx2(const SpmmParams& p, int64_t r0, int64_t r1,
                                                          opmath_t<scalar_t>* scratch) {
  spmm_row_range<scalar_t, index_t, kWeighted>(p, r0, r1, scratch);
}
#endif

template <typename scalar_t, typename index_t, bool kWeighted>
void spmm_rows(const SpmmParams& p) {
  using acc_t = opmath_t<scalar_t>;
  auto* range = &spmm_row_range_baseline<scalar_t, index_t, kWeighted>;
#if SCANGRAPH_X86
  if (cpu::has_avx2()) range = &spmm_row_range_avx2<scalar_t, index_t, kWeighted>;
#endif
  for_each_row_chunk(p.rowptr, p.num_rows, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> scratch(kFeatureTile);
    range(p, r0, r1, scratch.data());
  });
}

#if SCANGRAPH_FLOAT8_TILE
// kVectors x 8 fp32 features of extreme_edges, with the running best and the winner's offset
// in the row (int32: a row holds fewer than 2^31 edges) in registers.
template <typename index_t, int kVectors, typename WeightOf>
SCANGRAPH_INLINE void extreme_float8(const SpmmParams& p, const index_t* __restrict__ col,
                                            const float* __restrict__ x, int64_t begin, int64_t end,
                                            const WeightOf& weight_of, float sign,
                                            float* __restrict__ best, int64_t* __restrict__ arg) {
  typedef int32_t int8v __attribute__((vector_size(32)));
  float8 b[kVectors];
  int8v a[kVectors];
  {
    const float8* xr = reinterpret_cast<const float8*>(x + int64_t(col[begin]) * p.x_row_stride);
    const float we = weight_of(begin);
    for (int v = 0; v < kVectors; ++v) { b[v] = we * xr[v]; a[v] = int8v{}; }
  }
  for (int64_t e = begin + 1; e < end; ++e) {
    const float8* xr = reinterpret_cast<const float8*>(x + int64_t(col[e]) * p.x_row_stride);
    const float we = weight_of(e);
    const int32_t offset = int32_t(e - begin);
    for (int v = 0; v < kVectors; ++v) {
      const float8 m = we * xr[v];
      const int8v better = m > b[v];
      b[v] = better ? m : b[v];
      a[v] = better ? offset : a[v];
    }
  }
  for (int v = 0; v < kVectors; ++v)
    for (int k = 0; k < 8; ++k) { best[v * 8 + k] = b[v][k] * sign; arg[v * 8 + k] = begin + a[v][k]; }
}
#endif

// Max / min of features [f0, f0 + width) of one (row, head) over edges [begin, end), begin < end.
// Min is max of the negated messages (negation is exact and keeps ties). The first edge seeds
// the running best and later edges replace it only when strictly better, so the first edge in
// CSR order (the lowest column) wins ties. Writes best * sign and the winning edge ids.
template <typename scalar_t, typename index_t, bool kWeighted>
SCANGRAPH_INLINE void extreme_edges(const SpmmParams& p, int64_t begin, int64_t end, int64_t h,
                                           int64_t f0, int64_t width, opmath_t<scalar_t> sign,
                                           opmath_t<scalar_t>* __restrict__ best,
                                           int64_t* __restrict__ arg) {
  using acc_t = opmath_t<scalar_t>;
  const index_t* __restrict__ col = static_cast<const index_t*>(p.col);
  const scalar_t* __restrict__ w = static_cast<const scalar_t*>(p.weight);
  const scalar_t* __restrict__ x = static_cast<const scalar_t*>(p.x) + h * p.x_head_stride + f0;
  auto weight_of = [&](int64_t e) {
    if constexpr (kWeighted) return sign * acc_t(w[e * p.weight_edge_stride + h * p.weight_head_stride]);
    else return sign;
  };
#if SCANGRAPH_FLOAT8_TILE
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (width == 32) return extreme_float8<index_t, 4>(p, col, x, begin, end, weight_of, sign, best, arg);
    if (width == 16) return extreme_float8<index_t, 2>(p, col, x, begin, end, weight_of, sign, best, arg);
    if (width == 8) return extreme_float8<index_t, 1>(p, col, x, begin, end, weight_of, sign, best, arg);
  }
#endif
  {
    const scalar_t* xr = x + int64_t(col[begin]) * p.x_row_stride;
    const acc_t we = weight_of(begin);
    for (int64_t k = 0; k < width; ++k) { best[k] = we * acc_t(xr[k]); arg[k] = begin; }
  }
  for (int64_t e = begin + 1; e < end; ++e) {
    const scalar_t* xr = x + int64_t(col[e]) * p.x_row_stride;
    const acc_t we = weight_of(e);
    for (int64_t k = 0; k < width; ++k) {
      const acc_t m = we * acc_t(xr[k]);
      if (m > best[k]) { best[k] = m; arg[k] = e; }
    }
  }
  for (int64_t k = 0; k < width; ++k) best[k] *= sign;
}

template <typename scalar_t, typename index_t, bool kWeighted>
SCANGRAPH_INLINE void spmm_extreme_row_range(const SpmmParams& p, int64_t row_begin, int64_t row_end,
                                                    opmath_t<scalar_t>* best) {
  using acc_t = opmath_t<scalar_t>;
  scalar_t* __restrict__ out = static_cast<scalar_t*>(p.out);
  const acc_t sign = p.reduce == Reduce::Max ? acc_t(1) : acc_t(-1);
  const int64_t F = p.num_features;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t begin = p.rowptr[row], end = p.rowptr[row + 1];
    for (int64_t h = 0; h < p.num_heads; ++h) {
      scalar_t* __restrict__ o = out + (row * p.num_heads + h) * F;
      int64_t* __restrict__ arg = p.arg + (row * p.num_heads + h) * F;
      if (begin == end) {
        std::fill(o, o + F, scalar_t(0));
        std::fill(arg, arg + F, int64_t(-1));
        continue;
      }
      for (int64_t f0 = 0, width = 0; f0 < F; f0 += width) {
        const int64_t left = F - f0;
        width = left >= 32 ? 32 : left >= 16 ? 16 : left >= 8 ? 8 : left;
        extreme_edges<scalar_t, index_t, kWeighted>(p, begin, end, h, f0, width, sign, best, arg + f0);
        for (int64_t k = 0; k < width; ++k) o[f0 + k] = scalar_t(best[k]);
      }
    }
  }
}

template <typename scalar_t, typename index_t, bool kWeighted>
void spmm_extreme_range_baseline(const SpmmParams& p, int64_t r0, int64_t r1,
                                 opmath_t<scalar_t>* best) {
  spmm_extreme_row_range<scalar_t, index_t, kWeighted>(p, r0, r1, best);
}

#if SCANGRAPH_X86
template <typename scalar_t, typename index_t, bool kWeighted>
__attribute__((target("avx2"))) void spmm_extreme_range_avx2(const SpmmParams& p, int64_t r0, int64_t r1,
                                                             opmath_t<scalar_t>* best) {
  spmm_extreme_row_range<scalar_t, index_t, kWeighted>(p, r0, r1, best);
}
#endif

template <typename scalar_t, typename index_t, bool kWeighted>
void spmm_extreme_rows(const SpmmParams& p) {
  using acc_t = opmath_t<scalar_t>;
  auto* range = &spmm_extreme_range_baseline<scalar_t, index_t, kWeighted>;
#if SCANGRAPH_X86
  if (cpu::has_avx2()) range = &spmm_extreme_range_avx2<scalar_t, index_t, kWeighted>;
#endif
  for_each_row_chunk(p.rowptr, p.num_rows, [&](int64_t r0, int64_t r1) {
    acc_t best[32];
    range(p, r0, r1, best);
  });
}

template <typename scalar_t, typename index_t>
void spmm_arg_backward_rows(const SpmmArgBackwardParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const index_t* col = static_cast<const index_t*>(p.col);
  const index_t* col_t = static_cast<const index_t*>(p.col_t);
  const scalar_t* w = static_cast<const scalar_t*>(p.weight);
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const scalar_t* grad = static_cast<const scalar_t*>(p.grad);
  scalar_t* dx = static_cast<scalar_t*>(p.dx);
  const int64_t F = p.num_features, H = p.num_heads;
  // dx, when the features give every thread a slice of at least a cache line and are at most
  // kSliceMaxFeatures: each task owns slice [f0, f1) of one head and walks the destination rows
  // i in order, adding grad[i, f] to the winner's source row. Every (j, f) sums its terms in
  // increasing i, as the transpose walk below does, so the two paths agree bit for bit; this
  // one reads arg and grad once per row instead of once per edge (E / N times less), and the
  // scattered writes of different tasks fall on different cache lines. Measured (2-core VM,
  // fwd+bwd of max, bench/results/cpu-2026-11-29-*max*): 1.7-1.9x faster at F = 32 on
  // email-Enron and as-22july06, 4.9x on R-MAT 1M / 16M, 1.26x on as-22july06 at F = 128, even
  // on email-Enron at F = 128; but 10-15 % slower at F = 512, where the walk streams 6 KB per
  // edge and the slice tasks' writes, one float per random line, cost more.
  constexpr int64_t kSlice = 64 / int64_t(sizeof(acc_t)), kSliceMaxFeatures = 128;
  const int64_t slices = (F + kSlice - 1) / kSlice;
  if (F <= kSliceMaxFeatures && H * slices >= num_threads() && p.num_src > 0) {
    std::vector<acc_t> wide;
    acc_t* sum = reinterpret_cast<acc_t*>(dx);
    if constexpr (!std::is_same_v<acc_t, scalar_t>) {
      wide.assign(p.num_src * H * F, acc_t(0));
      sum = wide.data();
    } else {
      std::fill(dx, dx + p.num_src * H * F, scalar_t(0));
    }
    parallel_for(0, H * slices, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t h = t / slices, f0 = (t % slices) * kSlice, f1 = std::min(F, f0 + kSlice);
        for (int64_t i = 0; i < p.num_rows; ++i) {
          const int64_t* arg = p.arg + (i * H + h) * F;
          const scalar_t* g = grad + (i * H + h) * F;
          const int64_t begin = p.rowptr[i], end = p.rowptr[i + 1];
          for (int64_t f = f0; f < f1; ++f) {
            const int64_t e = arg[f];
            if (e < begin || e >= end) continue;  // an empty row (-1); as the transpose walk, only
                                                  // an edge of row i counts
            const acc_t we = w ? acc_t(w[e * p.weight_edge_stride + h * p.weight_head_stride]) : acc_t(1);
            sum[(int64_t(col[e]) * H + h) * F + f] += we * acc_t(g[f]);
          }
        }
      }
    });
    if constexpr (!std::is_same_v<acc_t, scalar_t>) {
      parallel_for(0, p.num_src * H * F, 4096, [&](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) dx[k] = scalar_t(wide[k]);
      });
    }
  } else {
  // dx: source j owns its row of the transpose, so it sums its winning out-edges alone.
  for_each_row_chunk(p.rowptr_t, p.num_src, [&](int64_t j0, int64_t j1) {
    std::vector<acc_t> sum(F);
    for (int64_t j = j0; j < j1; ++j) {
      for (int64_t h = 0; h < H; ++h) {
        std::fill(sum.begin(), sum.end(), acc_t(0));
        for (int64_t k = p.rowptr_t[j]; k < p.rowptr_t[j + 1]; ++k) {
          const int64_t e = p.perm_t[k], i = int64_t(col_t[k]);
          const acc_t we = w ? acc_t(w[e * p.weight_edge_stride + h * p.weight_head_stride]) : acc_t(1);
          const int64_t* arg = p.arg + (i * H + h) * F;
          const scalar_t* g = grad + (i * H + h) * F;
          for (int64_t f = 0; f < F; ++f)
            if (arg[f] == e) sum[f] += we * acc_t(g[f]);
        }
        scalar_t* o = dx + (j * H + h) * F;
        for (int64_t f = 0; f < F; ++f) o[f] = scalar_t(sum[f]);
      }
    }
  });
  }
  if (!p.dweight) return;
  scalar_t* dweight = static_cast<scalar_t*>(p.dweight);
  for_each_row_chunk(p.rowptr, p.num_rows, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      for (int64_t e = p.rowptr[i]; e < p.rowptr[i + 1]; ++e) {
        for (int64_t h = 0; h < H; ++h) {
          const int64_t* arg = p.arg + (i * H + h) * F;
          const scalar_t* g = grad + (i * H + h) * F;
          const scalar_t* xr = x + int64_t(col[e]) * p.x_row_stride + h * p.x_head_stride;
          acc_t dot = 0;
          for (int64_t f = 0; f < F; ++f)
            if (arg[f] == e) dot += acc_t(g[f]) * acc_t(xr[f]);
          dweight[e * H + h] = scalar_t(dot);
        }
      }
    }
  });
}

template <typename acc_t>
inline acc_t leaky_relu(acc_t v, acc_t slope) { return v > acc_t(0) ? v : v * slope; }

// GAT forward: one pass per row with an online softmax for each head; when a head's running
// max grows, its sums so far are rescaled by exp(old max - new max). Edges outermost, heads
// inside: each gathered row x[j] (all heads, contiguous) is read once, not once per head. With
// dropout, an (edge, head) weighs its dropout factor in the sum (a dropped one is not read) and
// 1 in the denominator.
template <typename scalar_t, typename index_t>
void gat_rows(const GatParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const index_t* col = static_cast<const index_t*>(p.col);
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const scalar_t* a_src = static_cast<const scalar_t*>(p.alpha_src);
  const scalar_t* a_dst = static_cast<const scalar_t*>(p.alpha_dst);
  scalar_t* out = static_cast<scalar_t*>(p.out);
  acc_t* row_max = static_cast<acc_t*>(p.row_max);
  acc_t* row_sum = static_cast<acc_t*>(p.row_sum);
  const int64_t H = p.num_heads, F = p.num_features;
  const acc_t slope = acc_t(p.negative_slope);
  const uint64_t seed = p.dropout.rng ? uint64_t(p.dropout.rng[0]) : 0;
  const uint64_t offset = p.dropout.rng ? uint64_t(p.dropout.rng[1]) : 0;
  for_each_row_chunk(p.rowptr, p.num_rows, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> acc(H * F), m(H), c(H), ad(H);
    for (int64_t i = r0; i < r1; ++i) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t h = 0; h < H; ++h) {
        m[h] = -std::numeric_limits<acc_t>::infinity();
        c[h] = 0;
        ad[h] = acc_t(a_dst[i * H + h]);
      }
      for (int64_t e = p.rowptr[i]; e < p.rowptr[i + 1]; ++e) {
        const int64_t j = int64_t(col[e]);
        for (int64_t h = 0; h < H; ++h) {
          const acc_t score = leaky_relu(acc_t(a_src[j * H + h]) + ad[h], slope);
          acc_t* acc_h = acc.data() + h * F;
          // One exp per edge: a new max rescales the sums and weighs its own edge exp(0) = 1.
          acc_t w;
          if (score > m[h]) {
            const acc_t rescale = std::exp(m[h] - score);  // exp(-inf) = 0 on the first edge
            c[h] *= rescale;
            for (int64_t f = 0; f < F; ++f) acc_h[f] *= rescale;
            m[h] = score;
            w = acc_t(1);
          } else {  // a score of -inf (an alpha of -inf) weighs 0, even while the max is -inf too
            w = score == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : std::exp(score - m[h]);
          }
          c[h] += w;
          const acc_t kept = w * dropout_factor<acc_t>(p.dropout, seed, offset, uint64_t(e * H + h));
          if (kept == acc_t(0)) continue;
          const scalar_t* xr = x + (j * H + h) * F;
          for (int64_t f = 0; f < F; ++f) acc_h[f] += kept * acc_t(xr[f]);
        }
      }
      for (int64_t h = 0; h < H; ++h) {
        scalar_t* o = out + (i * H + h) * F;
        const acc_t inv = c[h] > acc_t(0) ? acc_t(1) / c[h] : acc_t(0);
        for (int64_t f = 0; f < F; ++f) o[f] = scalar_t(acc[h * F + f] * inv);
        row_max[i * H + h] = m[h];
        row_sum[i * H + h] = c[h];
      }
    }
  });
}

// GAT backward: dalpha_dst over the rows of the CSR; dx and dalpha_src over the rows of the
// transpose, each output owned by one thread.
template <typename scalar_t, typename index_t>
void gat_backward_rows(const GatBackwardParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const index_t* col = static_cast<const index_t*>(p.col);
  const index_t* col_t = static_cast<const index_t*>(p.col_t);
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const scalar_t* a_src = static_cast<const scalar_t*>(p.alpha_src);
  const scalar_t* a_dst = static_cast<const scalar_t*>(p.alpha_dst);
  const scalar_t* grad = static_cast<const scalar_t*>(p.grad);
  const acc_t* row_max = static_cast<const acc_t*>(p.row_max);
  const acc_t* row_sum = static_cast<const acc_t*>(p.row_sum);
  const acc_t* delta = static_cast<const acc_t*>(p.delta);
  const int64_t H = p.num_heads, F = p.num_features;
  const acc_t slope = acc_t(p.negative_slope);
  const uint64_t seed = p.dropout.rng ? uint64_t(p.dropout.rng[0]) : 0;
  const uint64_t offset = p.dropout.rng ? uint64_t(p.dropout.rng[1]) : 0;
  // k_ij p_ij and ds_ij of edge j -> i (CSR edge e), head h; k_ij its dropout factor.
  auto edge_terms = [&](int64_t i, int64_t j, int64_t e, int64_t h, acc_t& prob, acc_t& ds) {
    const acc_t raw = acc_t(a_src[j * H + h]) + acc_t(a_dst[i * H + h]);
    const acc_t p_ij = std::exp(leaky_relu(raw, slope) - row_max[i * H + h]) / row_sum[i * H + h];
    const acc_t k_ij = dropout_factor<acc_t>(p.dropout, seed, offset, uint64_t(e * H + h));
    acc_t dot = 0;
    if (k_ij != acc_t(0)) {
      const scalar_t* xr = x + (j * H + h) * F;
      const scalar_t* g = grad + (i * H + h) * F;
      for (int64_t f = 0; f < F; ++f) dot += acc_t(xr[f]) * acc_t(g[f]);
    }
    prob = k_ij * p_ij;
    ds = p_ij * (k_ij * dot - delta[i * H + h]) * (raw > acc_t(0) ? acc_t(1) : slope);
  };
  scalar_t* da_dst = static_cast<scalar_t*>(p.dalpha_dst);
  // Edges outermost, heads inside (as in the forward): each gathered row is read once.
  for_each_row_chunk(p.rowptr, p.num_rows, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> sum(H);
    for (int64_t i = r0; i < r1; ++i) {
      std::fill(sum.begin(), sum.end(), acc_t(0));
      acc_t prob, ds;
      for (int64_t e = p.rowptr[i]; e < p.rowptr[i + 1]; ++e)
        for (int64_t h = 0; h < H; ++h) {
          edge_terms(i, int64_t(col[e]), e, h, prob, ds);
          sum[h] += ds;
        }
      for (int64_t h = 0; h < H; ++h) da_dst[i * H + h] = scalar_t(sum[h]);
    }
  });
  scalar_t* dx = static_cast<scalar_t*>(p.dx);
  scalar_t* da_src = static_cast<scalar_t*>(p.dalpha_src);
  for_each_row_chunk(p.rowptr_t, p.num_src, [&](int64_t j0, int64_t j1) {
    std::vector<acc_t> acc(H * F), sum(H);
    for (int64_t j = j0; j < j1; ++j) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      std::fill(sum.begin(), sum.end(), acc_t(0));
      acc_t prob, ds;
      for (int64_t k = p.rowptr_t[j]; k < p.rowptr_t[j + 1]; ++k) {
        const int64_t i = int64_t(col_t[k]);
        for (int64_t h = 0; h < H; ++h) {
          edge_terms(i, j, p.perm_t[k], h, prob, ds);
          sum[h] += ds;
          const scalar_t* g = grad + (i * H + h) * F;
          acc_t* acc_h = acc.data() + h * F;
          for (int64_t f = 0; f < F; ++f) acc_h[f] += prob * acc_t(g[f]);
        }
      }
      for (int64_t h = 0; h < H; ++h) {
        da_src[j * H + h] = scalar_t(sum[h]);
        scalar_t* o = dx + (j * H + h) * F;
        for (int64_t f = 0; f < F; ++f) o[f] = scalar_t(acc[h * F + f]);
      }
    }
  });
}

// Sorted-merge intersection of rows a and b, calling emit(k) for each common column (a
// column repeated in both rows is emitted min(count_a, count_b) times).
template <typename index_t, typename Emit>
inline void intersect_rows(const int64_t* rowptr, const index_t* col, int64_t a, int64_t b, const Emit& emit) {
  int64_t i = rowptr[a], j = rowptr[b];
  const int64_t end_a = rowptr[a + 1], end_b = rowptr[b + 1];
  while (i < end_a && j < end_b) {
    const index_t u = col[i], v = col[j];
    if (u < v) ++i;
    else if (v < u) ++j;
    else { emit(u); ++i; ++j; }
  }
}

template <typename index_t>
void common_neighbors_pairs(const CommonNeighborParams& p) {
  const index_t* col = static_cast<const index_t*>(p.col);
  // Pairs cost deg(src) + deg(dst): parallel over pairs in chunks, each pair owned by one thread.
  parallel_for(0, p.num_pairs, 256, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      if (p.counts) {
        int64_t count = 0;
        intersect_rows(p.rowptr, col, p.src[q], p.dst[q], [&](index_t) { ++count; });
        p.counts[q] = count;
      } else {
        index_t* out = static_cast<index_t*>(p.neighbors) + p.offsets[q];
        intersect_rows(p.rowptr, col, p.src[q], p.dst[q], [&](index_t k) { *out++ = k; });
      }
    }
  });
}

template <typename scalar_t, typename index_t>
void sddmm_rows(const SddmmParams& p) {
  using acc_t = opmath_t<scalar_t>;
  const index_t* __restrict__ col = static_cast<const index_t*>(p.col);
  const scalar_t* __restrict__ a = static_cast<const scalar_t*>(p.a);
  const scalar_t* __restrict__ b = static_cast<const scalar_t*>(p.b);
  scalar_t* __restrict__ out = static_cast<scalar_t*>(p.out);
  const int64_t F = p.num_features;
  for_each_row_chunk(p.rowptr, p.num_rows, [&](int64_t r0, int64_t r1) {
   for (int64_t row = r0; row < r1; ++row) {
    for (int64_t e = p.rowptr[row]; e < p.rowptr[row + 1]; ++e) {
      for (int64_t h = 0; h < p.num_heads; ++h) {
        const scalar_t* __restrict__ ar = a + row * p.a_row_stride + h * p.a_head_stride;
        const scalar_t* __restrict__ br = b + int64_t(col[e]) * p.b_row_stride + h * p.b_head_stride;
        acc_t dot = 0;
        for (int64_t f = 0; f < F; ++f) dot += acc_t(ar[f]) * acc_t(br[f]);
        out[e * p.num_heads + h] = scalar_t(dot);
      }
    }
   }
  });
}

KernelCall<SpmmParams> run_spmm(const Tensor& rowptr, const Tensor& col,
                                const std::optional<Tensor>& weight, const Tensor& x,
                                StringArg reduce) {
  KernelCall<SpmmParams> call = prepare_spmm(rowptr, col, weight, x, reduce);
  const SpmmParams& p = call.params;
  validate_csr(rowptr, col, x.size(0), "spmm");
  dispatch_float(x.scalar_type(), "spmm_cpu", [&](auto element) {
    using scalar_t = element_t<decltype(element)>;
    const bool weighted = p.weight != nullptr;
    if (p.reduce == Reduce::Max || p.reduce == Reduce::Min) {
      dispatch_index(p.col_is_int32, [&](auto index) {
        using index_t = decltype(index);
        weighted ? spmm_extreme_rows<scalar_t, index_t, true>(p) : spmm_extreme_rows<scalar_t, index_t, false>(p);
      });
      return;
    }
    dispatch_index(p.col_is_int32, [&](auto index) {
      using index_t = decltype(index);
      weighted ? spmm_rows<scalar_t, index_t, true>(p) : spmm_rows<scalar_t, index_t, false>(p);
    });
  });
  return call;
}

Tensor spmm_cpu(const Tensor& rowptr, const Tensor& col, const std::optional<Tensor>& weight, const Tensor& x,
                StringArg reduce, const std::optional<Tensor>& /*rowptr_t*/, const std::optional<Tensor>& /*col_t*/,
                const std::optional<Tensor>& /*perm_t*/) {
  check_reduce_for("spmm", reduce, /*extreme=*/false);
  return run_spmm(rowptr, col, weight, x, reduce).out;
}

std::tuple<Tensor, Tensor> spmm_arg_cpu(
    const Tensor& rowptr, const Tensor& col, const std::optional<Tensor>& weight,
    const Tensor& x, StringArg reduce, const std::optional<Tensor>& /*rowptr_t*/,
    const std::optional<Tensor>& /*col_t*/, const std::optional<Tensor>& /*perm_t*/) {
  check_reduce_for("spmm_arg", reduce, /*extreme=*/true);
  KernelCall<SpmmParams> call = run_spmm(rowptr, col, weight, x, reduce);
  return {call.out, call.out2};
}

std::tuple<Tensor, Tensor> spmm_arg_backward_cpu(
    const Tensor& rowptr, const Tensor& col, const Tensor& rowptr_t, const Tensor& col_t,
    const Tensor& perm_t, const std::optional<Tensor>& weight, const Tensor& x,
    const Tensor& grad, const Tensor& arg, bool weight_grad) {
  const KernelCall<SpmmArgBackwardParams> call =
      prepare_spmm_arg_backward(rowptr, col, rowptr_t, col_t, perm_t, weight, x, grad, arg, weight_grad);
  const SpmmArgBackwardParams& p = call.params;
  validate_csr(rowptr, col, x.size(0), "spmm_arg_backward");
  validate_csr(rowptr_t, col_t, rowptr.numel() - 1, "spmm_arg_backward (transpose)");
  dispatch_float(x.scalar_type(), "spmm_arg_backward_cpu", [&](auto element) {
    using scalar_t = element_t<decltype(element)>;
    dispatch_index(p.col_is_int32, [&](auto index) { spmm_arg_backward_rows<scalar_t, decltype(index)>(p); });
  });
  return {call.out, call.out2};
}

std::tuple<Tensor, Tensor, Tensor> gat_aggregate_cpu(
    const Tensor& rowptr, const Tensor& col, const Tensor& x, const Tensor& alpha_src,
    const Tensor& alpha_dst, double negative_slope, const std::optional<Tensor>& /*rowptr_t*/,
    const std::optional<Tensor>& /*col_t*/, const std::optional<Tensor>& /*perm_t*/, double dropout,
    const std::optional<Tensor>& rng) {
  const KernelCall<GatParams> call = prepare_gat(rowptr, col, x, alpha_src, alpha_dst, negative_slope, dropout, rng);
  validate_csr(rowptr, col, x.size(0), "gat_aggregate");
  dispatch_float(x.scalar_type(), "gat_cpu", [&](auto element) {
    using scalar_t = element_t<decltype(element)>;
    dispatch_index(call.params.col_is_int32, [&](auto index) { gat_rows<scalar_t, decltype(index)>(call.params); });
  });
  return {call.out, call.out2, call.owned.back()};
}

std::tuple<Tensor, Tensor, Tensor> gat_aggregate_backward_cpu(
    const Tensor& rowptr, const Tensor& col, const Tensor& rowptr_t, const Tensor& col_t,
    const Tensor& perm_t, const Tensor& x, const Tensor& alpha_src, const Tensor& alpha_dst,
    const Tensor& row_max, const Tensor& row_sum, const Tensor& delta, const Tensor& grad,
    double negative_slope, double dropout, const std::optional<Tensor>& rng) {
  const KernelCall<GatBackwardParams> call =
      prepare_gat_backward(rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, row_max, row_sum, delta,
                           grad, negative_slope, dropout, rng);
  validate_csr(rowptr, col, x.size(0), "gat_aggregate_backward");
  validate_csr(rowptr_t, col_t, rowptr.numel() - 1, "gat_aggregate_backward (transpose)");
  dispatch_float(x.scalar_type(), "gat_backward_cpu", [&](auto element) {
    using scalar_t = element_t<decltype(element)>;
    dispatch_index(call.params.col_is_int32,
                   [&](auto index) { gat_backward_rows<scalar_t, decltype(index)>(call.params); });
  });
  return {call.out, call.out2, call.owned.back()};
}

std::tuple<Tensor, Tensor> common_neighbors_cpu(const Tensor& rowptr, const Tensor& col, const Tensor& src,
                                                const Tensor& dst) {
  CommonNeighborParams p = prepare_common_neighbors(rowptr, col, src, dst);
  const int64_t num_nodes = rowptr.numel() - 1;
  validate_csr(rowptr, col, num_nodes, "common_neighbors");
  for (const Tensor* t : {&src, &dst}) {
    const int64_t* v = t->const_data_ptr<int64_t>();
    for (int64_t q = 0; q < p.num_pairs; ++q)
      SCANGRAPH_CHECK(v[q] >= 0 && v[q] < num_nodes, "common_neighbors: pair ", q, " names node ", v[q],
                      ", out of range for ", num_nodes, " nodes");
  }
  // Two passes: the counts, into ptr[1:], summed in place into offsets; then the neighbours.
  Tensor ptr = empty_output({p.num_pairs + 1}, ScalarType::Long, src);
  int64_t* offsets = ptr.mutable_data_ptr<int64_t>();
  offsets[0] = 0;
  p.counts = offsets + 1;
  auto run = [&] { dispatch_index(p.col_is_int32, [&](auto index) { common_neighbors_pairs<decltype(index)>(p); }); };
  run();
  for (int64_t q = 0; q < p.num_pairs; ++q) offsets[q + 1] += offsets[q];
  Tensor neighbors = empty_output({offsets[p.num_pairs]}, col.scalar_type(), col);
  p.counts = nullptr;
  p.offsets = offsets;
  p.neighbors = neighbors.mutable_data_ptr();
  run();
  return {ptr, neighbors};
}

Tensor sddmm_cpu(const Tensor& rowptr, const Tensor& col, const Tensor& a, const Tensor& b,
                 const std::optional<Tensor>& /*rowptr_t*/, const std::optional<Tensor>& /*col_t*/,
                 const std::optional<Tensor>& /*perm_t*/) {
  const KernelCall<SddmmParams> call = prepare_sddmm(rowptr, col, a, b);
  const SddmmParams& p = call.params;
  validate_csr(rowptr, col, b.size(0), "sddmm");
  dispatch_float(a.scalar_type(), "sddmm_cpu", [&](auto element) {
    using scalar_t = element_t<decltype(element)>;
    dispatch_index(p.col_is_int32, [&](auto index) { sddmm_rows<scalar_t, decltype(index)>(p); });
  });
  return call.out;
}

}  // namespace

SCANGRAPH_CPU_IMPLS(m) {
  SCANGRAPH_IMPL(m, "spmm", &spmm_cpu);
  SCANGRAPH_IMPL(m, "spmm_arg", &spmm_arg_cpu);
  SCANGRAPH_IMPL(m, "spmm_arg_backward", &spmm_arg_backward_cpu);
  SCANGRAPH_IMPL(m, "sddmm", &sddmm_cpu);
  SCANGRAPH_IMPL(m, "common_neighbors", &common_neighbors_cpu);
  SCANGRAPH_IMPL(m, "gat_aggregate", &gat_aggregate_cpu);
  SCANGRAPH_IMPL(m, "gat_aggregate_backward", &gat_aggregate_backward_cpu);
}

}  // namespace scangraph
