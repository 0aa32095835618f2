// CUDA kernels of the low-precision family, torch-free (raw pointers + strides).
//
// quantize: one block per channel reduces its absmax, then a grid-stride pass writes the
//   quantized (and for 4 bits packed) bytes, one byte per thread.
// qlinear: int8 tensor cores through WMMA (m16n16k16, s8 x s8 -> s32). A block of 4 warps owns
//   a 64 x 64 output tile: it reduces the absmax of its 64 rows of x, then walks K 32 at a time,
//   quantizing its x tile and unpacking (int4) its weight tile into shared memory, and each warp
//   accumulates a 32 x 32 sub-tile in int32 fragments. The epilogue goes through shared memory so
//   every output element is written once, coalesced. Every block re-quantizes its rows' x tiles
//   (once per 64 output columns): cheap next to the product for GNN widths, and x never exists
//   in int8 in global memory.
// qspmm: one warp per destination row (as spmm); each lane owns features lane + 32 t.
// All integer sums are exact; the float epilogue uses explicitly rounded operations
// (__fmul_rn / __fadd_rn) so nvcc does not contract it into FMAs: it matches the reference's
// ((acc * sx) * sw) + bias to the bit before the activation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "lowp.h"
#include "scangraph/lowp_params.h"
#include "launch.cuh"
#include "numeric.cuh"

namespace scangraph {
namespace lowp_cuda {

constexpr int kWarp = 32;

using numeric::from_float;
using numeric::to_float;

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// ---- quantize -------------------------------------------------------------------------------------
constexpr int kQuantThreads = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(kQuantThreads) absmax_scale_kernel(QuantizeParams p) {
  __shared__ float partial[kQuantThreads / kWarp];
  const int64_t c = blockIdx.x;
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const int64_t total = p.outer * p.inner;
  float m = 0.0f;
  for (int64_t t = threadIdx.x; t < total; t += blockDim.x) {
    const int64_t o = t / p.inner, i = t % p.inner;
    m = fmaxf(m, fabsf(to_float(x[(o * p.channels + c) * p.inner + i])));
  }
  m = warp_max(m);
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = m;
  __syncthreads();
  if (threadIdx.x < kWarp) {
    m = threadIdx.x < kQuantThreads / kWarp ? partial[threadIdx.x] : 0.0f;
    m = warp_max(m);
    if (threadIdx.x == 0) p.scale[c] = __fdiv_rn(m, float(quant_max(p.bits)));
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kQuantThreads) quantize_values_kernel(QuantizeParams p, int64_t rows,
                                                                        int64_t row_bytes) {
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const int qmax = quant_max(p.bits);
  const int64_t total = rows * row_bytes;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / row_bytes, b = idx % row_bytes;
    auto q_at = [&](int64_t j) {
      const int64_t flat = r * p.last_dim + j;
      return quantize_value(to_float(x[flat]), p.scale[(flat / p.inner) % p.channels], qmax);
    };
    if (p.bits == 8) {
      p.data[idx] = static_cast<int8_t>(q_at(b));
    } else {
      const int lo = q_at(2 * b), hi = 2 * b + 1 < p.last_dim ? q_at(2 * b + 1) : 0;
      p.data[idx] = static_cast<int8_t>((lo & 0xF) | ((hi & 0xF) << 4));
    }
  }
}

template <typename scalar_t>
void launch_quantize(const QuantizeParams& p, cudaStream_t stream) {
  if (p.channels == 0) return;
  launch_kernel<absmax_scale_kernel<scalar_t>>(unsigned(p.channels), kQuantThreads, 0, stream, p);  // empty channels: 0
  if (p.last_dim == 0) return;
  const int64_t rows = p.outer * p.channels * p.inner / p.last_dim;
  const int64_t row_bytes = p.bits == 4 ? (p.last_dim + 1) / 2 : p.last_dim;
  const int64_t total = rows * row_bytes;
  if (total == 0) return;
  // Grid-stride: enough blocks to fill the device, capped so the grid size stays an int.
  const int64_t blocks = (total + kQuantThreads - 1) / kQuantThreads;
  launch_kernel<quantize_values_kernel<scalar_t>>(unsigned(blocks < 65536 ? blocks : 65536), kQuantThreads, 0, stream, p, rows, row_bytes);
}

// ---- qlinear ---------------------------------------------------------------------------------------
constexpr int kTileM = 64, kTileN = 64, kTileK = 32;
constexpr int kLinearThreads = 128;  // 4 warps in a 2 x 2 grid of 32 x 32 sub-tiles
constexpr int kFrag = 16;            // WMMA int8 shape m16n16k16
// Shared tiles are [k slice of 16][row][32 bytes]: 16 values + 16 bytes of padding, so every
// fragment pointer is 32-byte aligned (WMMA's requirement) and ldm = 32 is a multiple of 16.
constexpr int kSliceLd = 32;
constexpr int kAccLd = kTileN + 8;   // int32 staging rows: a multiple of 4, 16-row steps stay 32-byte aligned

__device__ __forceinline__ float activate(float v, Activation act) {
  switch (act) {
    case Activation::Relu: return v > 0.0f ? v : 0.0f;
    case Activation::Gelu: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case Activation::Silu: return v / (1.0f + expf(-v));
    default: return v;
  }
}

template <typename scalar_t, typename out_t, bool kInt4>
__global__ void __launch_bounds__(kLinearThreads) qlinear_wmma_kernel(QLinearParams p) {
  using namespace nvcuda;
  __shared__ __align__(32) int8_t a_tile[kTileK / kFrag][kTileM][kSliceLd];
  __shared__ __align__(32) int8_t b_tile[kTileK / kFrag][kTileN][kSliceLd];
  __shared__ __align__(32) int32_t acc_tile[kTileM][kAccLd];
  __shared__ float row_scale[kTileM];
  const int64_t m0 = int64_t(blockIdx.x) * kTileM, n0 = int64_t(blockIdx.y) * kTileN;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const scalar_t* x = static_cast<const scalar_t*>(p.x);

  // Per-row scale of x: absmax over all of K (the tile walk below needs it before the first tile).
  for (int r = warp; r < kTileM; r += kLinearThreads / kWarp) {
    const int64_t m = m0 + r;
    float amax = 0.0f;
    if (m < p.M)
      for (int64_t k = lane; k < p.K; k += kWarp) amax = fmaxf(amax, fabsf(to_float(x[m * p.x_row_stride + k])));
    amax = warp_max(amax);
    if (lane == 0) row_scale[r] = __fdiv_rn(amax, 127.0f);
  }
  __syncthreads();

  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, int> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0);

  for (int64_t k0 = 0; k0 < p.K; k0 += kTileK) {
    // Consecutive threads take consecutive k of one row: coalesced reads of x and w.
    for (int e = threadIdx.x; e < kTileM * kTileK; e += kLinearThreads) {
      const int r = e / kTileK, kk = e % kTileK;
      const int64_t m = m0 + r, k = k0 + kk;
      int q = 0;
      if (m < p.M && k < p.K) q = quantize_value(to_float(x[m * p.x_row_stride + k]), row_scale[r], 127);
      a_tile[kk / kFrag][r][kk % kFrag] = static_cast<int8_t>(q);
    }
    for (int e = threadIdx.x; e < kTileN * kTileK; e += kLinearThreads) {
      const int c = e / kTileK, kk = e % kTileK;
      const int64_t n = n0 + c, k = k0 + kk;
      int v = 0;
      if (n < p.N && k < p.K) {
        const int8_t* wr = p.w + n * p.w_row_stride;
        v = kInt4 ? unpack_nibble(static_cast<uint8_t>(wr[k >> 1]), int(k & 1)) : int(wr[k]);
      }
      b_tile[kk / kFrag][c][kk % kFrag] = static_cast<int8_t>(v);
    }
    __syncthreads();
#pragma unroll
    for (int s = 0; s < kTileK / kFrag; ++s) {
      wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, signed char, wmma::row_major> a_frag[2];
      wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, signed char, wmma::col_major> b_frag[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a_frag[i], &a_tile[s][wm + kFrag * i][0], kSliceLd);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b_frag[j], &b_tile[s][wn + kFrag * j][0], kSliceLd);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a_frag[i], b_frag[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&acc_tile[wm + kFrag * i][wn + kFrag * j], acc[i][j], kAccLd, wmma::mem_row_major);
  __syncthreads();

  out_t* out = static_cast<out_t*>(p.out);
  const float* bias = static_cast<const float*>(p.bias);
  for (int e = threadIdx.x; e < kTileM * kTileN; e += kLinearThreads) {
    const int r = e / kTileN, c = e % kTileN;
    const int64_t m = m0 + r, n = n0 + c;
    if (m >= p.M || n >= p.N) continue;
    const int32_t a = acc_tile[r][c];
    if constexpr (std::is_same<out_t, int32_t>::value) {
      out[m * p.N + n] = a;
    } else {
      float v = __fmul_rn(__fmul_rn(float(a), row_scale[r]), p.w_scale[n]);
      if (bias) v = __fadd_rn(v, bias[n]);
      out[m * p.N + n] = from_float<out_t>(activate(v, p.activation));
    }
  }
}

template <typename scalar_t, typename out_t>
void launch_qlinear(const QLinearParams& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return;
  const dim3 grid(unsigned((p.M + kTileM - 1) / kTileM), unsigned((p.N + kTileN - 1) / kTileN));
  if (p.w_bits == 4) launch_kernel<qlinear_wmma_kernel<scalar_t, out_t, true>>(grid, kLinearThreads, 0, stream, p);
  else launch_kernel<qlinear_wmma_kernel<scalar_t, out_t, false>>(grid, kLinearThreads, 0, stream, p);
}

template <typename scalar_t>
void dispatch_qlinear_out(const QLinearParams& p, LowpType out_type, cudaStream_t stream) {
  switch (out_type) {
    case LowpType::Int32: launch_qlinear<scalar_t, int32_t>(p, stream); break;
    case LowpType::Half: launch_qlinear<scalar_t, __half>(p, stream); break;
    case LowpType::BFloat16: launch_qlinear<scalar_t, __nv_bfloat16>(p, stream); break;
    default: launch_qlinear<scalar_t, float>(p, stream); break;
  }
}

// ---- qspmm -----------------------------------------------------------------------------------------
constexpr int kSpmmWarps = 8;          // warps (rows) per block, as the fp32 spmm kernel
constexpr int kFeaturesPerLane = 4;    // F is walked in tiles of 128 features per warp

template <typename index_t>
__global__ void __launch_bounds__(kSpmmWarps * kWarp) qspmm_kernel(QSpmmParams p) {
  const int64_t row = int64_t(blockIdx.x) * kSpmmWarps + threadIdx.x / kWarp;
  if (row >= p.num_rows) return;
  const int lane = threadIdx.x % kWarp;
  const index_t* col = static_cast<const index_t*>(p.col);
  const int64_t begin = p.rowptr[row], end = p.rowptr[row + 1], F = p.num_features;
  const bool extreme = p.reduce >= 2;
  const float sign = p.reduce == 3 ? -1.0f : 1.0f;  // min = -max of the negated messages
  float* out = p.out + row * F;
  for (int64_t f0 = 0; f0 < F; f0 += kWarp * kFeaturesPerLane) {
    float acc[kFeaturesPerLane];
#pragma unroll
    for (int t = 0; t < kFeaturesPerLane; ++t) acc[t] = extreme ? -CUDART_INF_F : 0.0f;
    for (int64_t e = begin; e < end; ++e) {
      const int64_t j = int64_t(col[e]);
      const float coef = sign * (p.weight ? p.weight[e] : 1.0f) * p.x_scale[j];
      const int8_t* xr = p.x + j * p.x_row_stride;
#pragma unroll
      for (int t = 0; t < kFeaturesPerLane; ++t) {
        const int64_t f = f0 + lane + kWarp * t;
        if (f < F) {
          const float m = coef * float(xr[f]);
          acc[t] = extreme ? fmaxf(acc[t], m) : acc[t] + m;
        }
      }
    }
    const float scale = p.reduce == 1 ? (end > begin ? 1.0f / float(end - begin) : 1.0f) : sign;
#pragma unroll
    for (int t = 0; t < kFeaturesPerLane; ++t) {
      const int64_t f = f0 + lane + kWarp * t;
      if (f < F) out[f] = end > begin ? acc[t] * scale : 0.0f;
    }
  }
}

}  // namespace lowp_cuda

void quantize_cuda(const QuantizeParams& p, LowpType x_type, cudaStream_t stream) {
  switch (x_type) {
    case LowpType::Double: lowp_cuda::launch_quantize<double>(p, stream); break;
    case LowpType::Half: lowp_cuda::launch_quantize<__half>(p, stream); break;
    case LowpType::BFloat16: lowp_cuda::launch_quantize<__nv_bfloat16>(p, stream); break;
    default: lowp_cuda::launch_quantize<float>(p, stream); break;
  }
}

void qlinear_cuda(const QLinearParams& p, LowpType x_type, LowpType out_type, cudaStream_t stream) {
  switch (x_type) {
    case LowpType::Double: lowp_cuda::dispatch_qlinear_out<double>(p, out_type, stream); break;
    case LowpType::Half: lowp_cuda::dispatch_qlinear_out<__half>(p, out_type, stream); break;
    case LowpType::BFloat16: lowp_cuda::dispatch_qlinear_out<__nv_bfloat16>(p, out_type, stream); break;
    default: lowp_cuda::dispatch_qlinear_out<float>(p, out_type, stream); break;
  }
}

void qspmm_cuda(const QSpmmParams& p, cudaStream_t stream) {
  if (p.num_rows == 0 || p.num_features == 0) return;
  const unsigned blocks = unsigned((p.num_rows + lowp_cuda::kSpmmWarps - 1) / lowp_cuda::kSpmmWarps);
  const unsigned threads = lowp_cuda::kSpmmWarps * lowp_cuda::kWarp;
  dispatch_index(p.col_is_int32, [&](auto index) {
    launch_kernel<lowp_cuda::qspmm_kernel<decltype(index)>>(blocks, threads, 0, stream, p);
  });
}

}  // namespace scangraph
