// CUDA kernels of the causal depthwise convolution (docs/causal_conv1d.md; the math and layouts
// in scangraph/causal_conv1d_params.h). Torch-free: the CPU emulation compiles this file as is.
//
// The work is element-wise in (batch, channel, position), so the launch gives every output one
// thread: batch * dim * L threads, blocks of kConvThreads consecutive positions of one row
// (coalesced loads; a tap's neighbours come from L1). At Mamba's shapes (batch 8, dim 3072,
// L 2048) that is 1.5M warps against the 8448 an H100 / H200 holds. A thread reads W inputs
// for its output; the backward recomputes the pre-activation at the W outputs its input feeds
// (W (W + 1) loads, W <= 4) rather than storing it.
//
// The backward's weight and bias gradients: each block of kConvGradBlock positions sums its
// threads' terms (a fixed butterfly per warp, then the warps in order) into one partial per
// (row, block); a second kernel sums a channel's partials in (batch, block) order. No atomics.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "launch.cuh"
#include "numeric.cuh"
#include "scangraph/causal_conv1d_params.h"

namespace scangraph {
namespace conv_cuda {

using numeric::Acc;
using numeric::exp_acc;
using numeric::from_acc;
using numeric::to_acc;

constexpr int kConvThreads = int(kConvGradBlock);  // a backward block is one gradient block
constexpr int kWarp = 32;
constexpr int kConvWarps = kConvThreads / kWarp;

// One (batch, channel) row: its inputs, the taps' masks and its weights.
template <typename T>
struct Row {
  using acc_t = typename Acc<T>::type;
  const T* x;
  const T* init;       // (W - 1) initial inputs, or nullptr
  const int32_t* seq;  // the row's seq_idx, or nullptr
  acc_t w[kMaxConvWidth];
  acc_t bias;
  int64_t length;
  int width;

  __device__ Row(const CausalConv1dParams& p, int64_t row) : length(p.length), width(int(p.width)) {
    const int64_t b = row / p.dim, d = row % p.dim;
    x = static_cast<const T*>(p.x) + row * p.length;
    init = p.initial_states ? static_cast<const T*>(p.initial_states) + row * (p.width - 1) : nullptr;
    seq = p.seq_idx ? p.seq_idx + b * p.length : nullptr;
#pragma unroll
    for (int j = 0; j < kMaxConvWidth; ++j)
      w[j] = j < width ? static_cast<const acc_t*>(p.weight)[d * width + j] : acc_t(0);
    bias = p.bias ? static_cast<const acc_t*>(p.bias)[d] : acc_t(0);
  }
  // x(pos) as the output at l reads it: masked across sequences, initial states before 0.
  __device__ acc_t input(int64_t l, int64_t pos) const {
    if (pos < 0) return init ? to_acc(init[width - 1 + pos]) : acc_t(0);
    if (seq && seq[pos] != seq[l]) return acc_t(0);
    return to_acc(x[pos]);
  }
  __device__ acc_t pre(int64_t l) const {
    acc_t s = bias;
#pragma unroll
    for (int j = 0; j < kMaxConvWidth; ++j)
      if (j < width) s += w[j] * input(l, l - (width - 1) + j);
    return s;
  }
};

template <typename acc_t> __device__ __forceinline__ acc_t silu(acc_t v) { return v / (acc_t(1) + exp_acc(-v)); }
template <typename acc_t> __device__ __forceinline__ acc_t silu_grad(acc_t v) {
  const acc_t s = acc_t(1) / (acc_t(1) + exp_acc(-v));
  return s * (acc_t(1) + v * (acc_t(1) - s));
}

// The same bits in every lane: a fixed butterfly.
template <typename acc_t> __device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Block x: (row, tile of kConvThreads positions), flattened (rows exceed grid.y's 65535).
template <typename T>
__global__ void __launch_bounds__(kConvThreads) conv_forward_kernel(const CausalConv1dParams p, int64_t tiles) {
  using acc_t = typename Acc<T>::type;
  const int64_t row = blockIdx.x / tiles, l = (blockIdx.x % tiles) * kConvThreads + threadIdx.x;
  if (l >= p.length) return;
  const Row<T> r(p, row);
  const acc_t v = r.pre(l);
  static_cast<T*>(p.out)[row * p.length + l] = from_acc<T>(p.silu ? silu(v) : v);
}

template <typename T>
__device__ __forceinline__ typename Acc<T>::type grad_pre(const Row<T>& r, const T* grad_out, bool act, int64_t l) {
  const auto go = to_acc(grad_out[l]);
  return act ? go * silu_grad(r.pre(l)) : go;
}

// Block x: (row, gradient block); thread: one position t. dx(t), the initial states' gradients
// (the row's first thread; one block per row when L = 0), and the block's partial of dweight /
// dbias.
template <typename T>
__global__ void __launch_bounds__(kConvThreads) conv_backward_kernel(const CausalConv1dBackwardParams q,
                                                                     int64_t blocks) {
  using acc_t = typename Acc<T>::type;
  __shared__ acc_t warp_sums[kConvWarps][kMaxConvWidth + 1];
  const CausalConv1dParams& p = q.fwd;
  const int64_t row = blockIdx.x / blocks, blk = blockIdx.x % blocks, t = blk * kConvThreads + threadIdx.x;
  const int W = int(p.width);
  const int64_t L = p.length;
  const Row<T> r(p, row);
  const T* grad_out = static_cast<const T*>(q.grad_out) + row * L;
  acc_t terms[kMaxConvWidth + 1] = {};
  if (t < L) {
    // x(t) feeds the outputs l = t + W - 1 - j through tap j, within its sequence.
    acc_t dx = 0;
#pragma unroll
    for (int j = 0; j < kMaxConvWidth; ++j) {
      const int64_t l = t + W - 1 - j;
      if (j < W && l < L && !(r.seq && r.seq[l] != r.seq[t])) dx += r.w[j] * grad_pre(r, grad_out, p.silu, l);
    }
    static_cast<T*>(q.dx)[row * L + t] = from_acc<T>(dx);
    const acc_t g = grad_pre(r, grad_out, p.silu, t);
#pragma unroll
    for (int j = 0; j < kMaxConvWidth; ++j)
      if (j < W) terms[j] = g * r.input(t, t - (W - 1) + j);
    terms[W] = g;
  }
  if (t == 0 && q.dinitial_states) {  // initial input i is x(i - (W - 1)), read by outputs l = i - j
    T* dinit = static_cast<T*>(q.dinitial_states) + row * (W - 1);
    for (int i = 0; i < W - 1; ++i) {
      acc_t s = 0;
      for (int j = 0; j <= i; ++j)
        if (i - j < L) s += r.w[j] * grad_pre(r, grad_out, p.silu, i - j);
      dinit[i] = from_acc<T>(s);
    }
  }
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
#pragma unroll
  for (int j = 0; j <= kMaxConvWidth; ++j) {
    const acc_t s = warp_sum(terms[j]);
    if (lane == 0) warp_sums[warp][j] = s;
  }
  __syncthreads();
  if (threadIdx.x <= W && blk * kConvThreads < L) {  // L = 0: a block for dinit alone, no partial
    acc_t s = 0;
    for (int k = 0; k < kConvWarps; ++k) s += warp_sums[k][threadIdx.x];
    static_cast<acc_t*>(q.partial)[(row * blocks + blk) * (W + 1) + threadIdx.x] = s;
  }
}

// Thread: one (channel, tap) of dweight, or the channel's dbias (tap W); sums the partials in
// (batch, block) order.
template <typename T>
__global__ void __launch_bounds__(256) conv_weight_grad_kernel(const CausalConv1dBackwardParams q, int64_t blocks) {
  using acc_t = typename Acc<T>::type;
  const CausalConv1dParams& p = q.fwd;
  const int64_t W = p.width, item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= p.dim * (W + 1)) return;
  const int64_t d = item / (W + 1), j = item % (W + 1);
  const acc_t* partial = static_cast<const acc_t*>(q.partial);
  acc_t s = 0;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t blk = 0; blk < blocks; ++blk) s += partial[((b * p.dim + d) * blocks + blk) * (W + 1) + j];
  if (j < W) {
    static_cast<acc_t*>(q.dweight)[d * W + j] = s;
  } else if (q.dbias) {
    static_cast<acc_t*>(q.dbias)[d] = s;
  }
}

// Thread: one (batch, channel) row, walking its seqlen new inputs (decoding: seqlen is 1 to a
// few; batch * dim rows fill the GPU at serving batch sizes).
template <typename T>
__global__ void __launch_bounds__(256) conv_update_kernel(const CausalConv1dUpdateParams p) {
  using acc_t = typename Acc<T>::type;
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= p.batch * p.dim) return;
  const int64_t b = row / p.dim, d = row % p.dim, n = p.seqlen, S = p.state_len;
  const int W = int(p.width);
  const T* x = static_cast<const T*>(p.x) + row * n;
  T* out = static_cast<T*>(p.out) + row * n;
  const int64_t slot = p.conv_state_indices ? p.conv_state_indices[b] : b;
  if (slot < 0) {  // a padding row
    for (int64_t i = 0; i < n; ++i) out[i] = from_acc<T>(acc_t(0));
    return;
  }
  T* state = static_cast<T*>(p.conv_state) + (slot * p.dim + d) * S;
  const acc_t* w = static_cast<const acc_t*>(p.weight) + d * W;
  const acc_t bias = p.bias ? static_cast<const acc_t*>(p.bias)[d] : acc_t(0);
  // The window: the last W - 1 inputs before this call, oldest first, then each new x.
  acc_t window[kMaxConvWidth] = {};
  // The write index in [0, S), also for a negative cache_seqlens (as torch.remainder).
  const int64_t head = p.cache_seqlens && S > 0 ? (p.cache_seqlens[b] % S + S) % S : 0;
  for (int i = 0; i < W - 1; ++i)
    window[i] = to_acc(state[p.cache_seqlens ? (head - (W - 1) + i + S) % S : S - (W - 1) + i]);
  for (int64_t i = 0; i < n; ++i) {
    window[W - 1] = to_acc(x[i]);
    acc_t s = bias;
    for (int j = 0; j < W; ++j) s += w[j] * window[j];
    out[i] = from_acc<T>(p.silu ? silu(s) : s);
    for (int j = 0; j + 1 < W; ++j) window[j] = window[j + 1];
  }
  if (S == 0) return;
  if (p.cache_seqlens) {  // x goes in at the head, in order (a later input wins a slot)
    for (int64_t i = 0; i < n; ++i) state[(head + i) % S] = x[i];
  } else {  // shift left by n, x fills the end
    for (int64_t i = 0; i < S; ++i) state[i] = i + n < S ? state[i + n] : x[i + n - S];
  }
}

inline unsigned blocks_for(int64_t items, int64_t per_block) { return unsigned((items + per_block - 1) / per_block); }

template <typename T>
void launch_causal_conv1d(const CausalConv1dParams& p, cudaStream_t stream) {
  const int64_t tiles = (p.length + kConvThreads - 1) / kConvThreads;
  if (p.batch * p.dim * tiles == 0) return;
  launch_kernel<conv_forward_kernel<T>>(unsigned(p.batch * p.dim * tiles), kConvThreads, 0, stream, p, tiles);
}

template <typename T>
void launch_causal_conv1d_backward(const CausalConv1dBackwardParams& q, cudaStream_t stream) {
  const CausalConv1dParams& p = q.fwd;
  const int64_t blocks = conv_grad_blocks(p.length), launched = blocks > 0 ? blocks : 1;
  if (p.batch * p.dim > 0)
    launch_kernel<conv_backward_kernel<T>>(unsigned(p.batch * p.dim * launched), kConvThreads, 0, stream, q,
                                           launched);
  // Runs for L = 0 or batch 0 too: the gradients are then sums over nothing, zeros.
  const int64_t items = p.dim * (p.width + 1);
  if (items > 0) launch_kernel<conv_weight_grad_kernel<T>>(blocks_for(items, 256), 256, 0, stream, q, blocks);
}

template <typename T>
void launch_causal_conv1d_update(const CausalConv1dUpdateParams& p, cudaStream_t stream) {
  const int64_t rows = p.batch * p.dim;
  if (rows > 0) launch_kernel<conv_update_kernel<T>>(blocks_for(rows, 256), 256, 0, stream, p);
}

}  // namespace conv_cuda

template <typename T>
void causal_conv1d_cuda(const CausalConv1dParams& p, cudaStream_t stream) {
  conv_cuda::launch_causal_conv1d<T>(p, stream);
}
template <typename T>
void causal_conv1d_backward_cuda(const CausalConv1dBackwardParams& q, cudaStream_t stream) {
  conv_cuda::launch_causal_conv1d_backward<T>(q, stream);
}
template <typename T>
void causal_conv1d_update_cuda(const CausalConv1dUpdateParams& p, cudaStream_t stream) {
  conv_cuda::launch_causal_conv1d_update<T>(p, stream);
}

}  // namespace scangraph

#define SCANGRAPH_INSTANTIATE_CONV(T)                                                                      \
  template void scangraph::causal_conv1d_cuda<T>(const scangraph::CausalConv1dParams&, cudaStream_t);       \
  template void scangraph::causal_conv1d_backward_cuda<T>(const scangraph::CausalConv1dBackwardParams&,     \
                                                          cudaStream_t);                                  \
  template void scangraph::causal_conv1d_update_cuda<T>(const scangraph::CausalConv1dUpdateParams&, cudaStream_t);
