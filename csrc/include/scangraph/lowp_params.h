// Torch-free parameter structs and scalar math of the low-precision family (quantize, qlinear,
// qspmm), shared by the CPU kernels and the CUDA kernels (host and device).
//
// Symmetric quantization (docs/lowp.md): scale = absmax / qmax with qmax = 127 (8
// bits) or 7 (4 bits), q = clamp(round_half_even(x / scale), -qmax, qmax), and a zero channel
// has scale 0 and q = 0. Every backend computes x / scale as one IEEE fp32 division (not a
// multiply by the reciprocal) so all of them agree with the reference bit for bit.
#pragma once
#include <cstdint>

#include "scangraph/host_device.h"
#include "scangraph/index_type.h"

namespace scangraph {

SCANGRAPH_HOST_DEVICE int quant_max(int bits) { return bits == 4 ? 7 : 127; }

// Round half to even of |v| < 2^22. On the host with fp32 arithmetic alone: adding 1.5 * 2^23
// leaves no fraction bits, so the FPU's round-to-nearest-even rounds (it vectorises, unlike
// nearbyint on baseline x86-64; no -ffast-math anywhere, so (v + m) - m is not folded).
// Triton uses the same trick; CUDA has rintf.
SCANGRAPH_HOST_DEVICE float round_half_even(float v) {
#if defined(__CUDA_ARCH__)
  return rintf(v);
#else
  const float magic = 12582912.0f;  // 1.5 * 2^23
  return (v + magic) - magic;
#endif
}

SCANGRAPH_HOST_DEVICE int quantize_value(float x, float scale, int qmax) {
  if (!(scale > 0.0f)) return 0;
  float q = round_half_even(x / scale);
  q = q > float(qmax) ? float(qmax) : q;
  q = q < float(-qmax) ? float(-qmax) : q;
  return int(q);
}

// Two's-complement nibble -> int in [-8, 7].
SCANGRAPH_HOST_DEVICE int unpack_nibble(uint8_t byte, int high) {
  const int v = high ? (byte >> 4) : (byte & 0xF);
  return (v ^ 8) - 8;
}

enum class Activation : int8_t { None, Relu, Gelu, Silu };

// quantize: x is viewed as (outer, channels, inner) with one scale per channel: per-row of a
// 2-D tensor is (1, rows, cols), per-column (rows, cols, 1), per-tensor (1, 1, numel). The
// output is row-major over the original shape with last dimension `last_dim`; 4-bit values
// are packed along it (element 2i in the low nibble of byte i, 2i+1 in the high one, odd
// lengths padded with 0), so a row of the output holds ceil(last_dim / 2) bytes.
struct QuantizeParams {
  const void* x;          // contiguous, float / double / half / bfloat16
  int8_t* data;           // int8 (8 bits) or packed uint8 (4 bits)
  float* scale;           // (channels,)
  int64_t outer, channels, inner;
  int64_t last_dim;       // length of the packed dimension
  int bits;
};

// qlinear: out[m, n] = act(acc[m, n] * sx[m] * sw[n] + bias[n]) with
//   acc[m, n] = sum_k qx[m, k] * qw[n, k] in int32, qx the per-row 8-bit quantization of x
// computed inside the kernel. With int32 output, out = acc (no epilogue): the debug path that
// exposes the exact accumulator.
struct QLinearParams {
  const void* x;          // (M, K) with unit inner stride
  const int8_t* w;        // (N, K) int8, or (N, ceil(K / 2)) packed int4
  const float* w_scale;   // (N,)
  const void* bias;       // (N,) float32 (the glue converts it), or nullptr
  void* out;              // contiguous (M, N)
  int64_t M, N, K;
  int64_t x_row_stride;
  int64_t w_row_stride;   // bytes between weight rows
  int w_bits;
  Activation activation;
  bool int_output;        // out is int32 acc
};

// qspmm over CSR (rows = destinations): out[i, f] = reduce over edges e = (j -> i) of
//   w[e] * x_scale[j] * xq[j, f], accumulated in fp32; mean divides by the degree, empty rows 0.
struct QSpmmParams {
  const int64_t* rowptr;
  const void* col;        // int32 or int64
  const float* weight;    // (E,) or nullptr
  const int8_t* x;        // (num_src, F) int8, rows x_row_stride apart
  const float* x_scale;   // (num_src,)
  float* out;             // contiguous (num_rows, F)
  int64_t num_rows, num_features, x_row_stride;
  bool col_is_int32;
  int reduce;             // 0 sum, 1 mean, 2 max, 3 min
};

// |acc| <= K * 127 * 127 must stay below 2^31.
constexpr int64_t kMaxExactK = 133000;

}  // namespace scangraph
