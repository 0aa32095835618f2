// Torch-free parameter structs of the causal depthwise convolution of Mamba's block (the
// causal-conv1d package's causal_conv1d_fn / causal_conv1d_update; docs/causal_conv1d.md).
//
// Per batch b, channel d and position l, with width W:
//   pre_l = bias[d] + sum_{j < W} weight[d, j] * x(l - (W - 1) + j)
//   out_l = silu(pre_l) (silu optional)
// x(p) for p < 0 is initial_states[b, d, W - 1 + p] (0 without initial states). With seq_idx
// (batch, L) a tap reads x(p) only when seq_idx[b, p] == seq_idx[b, l], and positions before 0
// are 0: each packed sequence starts from zeros.
//
// Layouts are contiguous (the glue copies strided inputs once): x, out, grad_out, dx (batch, dim,
// L) in the element type T (x's); initial_states, dinitial_states (batch, dim, W - 1) T; weight
// (dim, W) and bias (dim,) in acc, float (double for double x), whatever their own dtype.
#pragma once
#include <cstdint>

namespace scangraph {

constexpr int64_t kMaxConvWidth = 4;  // the causal-conv1d package's widths: 2, 3, 4 (1 too here)

struct CausalConv1dParams {
  int64_t batch, dim, length, width;
  bool silu;
  const void* x;
  const void* weight;
  const void* bias;            // or nullptr
  const int32_t* seq_idx;      // or nullptr
  const void* initial_states;  // or nullptr
  void* out;
};

// The backward: dx, dinitial_states in T; the weight and bias gradients as partial sums per
// (batch, channel, block of kConvGradBlock positions), (batch, dim, blocks, W + 1) acc (the
// last entry is bias's), summed by the kernels over batch and blocks in a fixed order into
// dweight (dim, W) and dbias (dim,) acc: no atomics, the same bits on every run.
constexpr int64_t kConvGradBlock = 256;

inline int64_t conv_grad_blocks(int64_t length) { return (length + kConvGradBlock - 1) / kConvGradBlock; }

struct CausalConv1dBackwardParams {
  CausalConv1dParams fwd;
  const void* grad_out;
  void* dx;
  void* dinitial_states;  // or nullptr without initial states
  void* partial;          // (batch, dim, blocks, W + 1) acc
  void* dweight;          // (dim, W) acc
  void* dbias;            // (dim,) acc, or nullptr without bias
};

// One decoding call: x, out (batch, dim, seqlen) T; conv_state (slots, dim, state_len) T, updated
// in place, state_len >= W - 1. Without cache_seqlens the state holds the last state_len inputs,
// oldest first, and shifts left by seqlen; with cache_seqlens (batch,) it is a circular buffer
// whose next write goes to index cache_seqlens[b] % state_len. conv_state_indices (batch,) picks
// row b's slot (default: b); a negative slot is padding: out is 0 and no state is touched.
struct CausalConv1dUpdateParams {
  int64_t batch, dim, seqlen, width, state_len, slots;
  bool silu;
  const void* x;
  void* conv_state;
  const void* weight;
  const void* bias;                   // or nullptr
  const int32_t* cache_seqlens;       // or nullptr
  const int32_t* conv_state_indices;  // or nullptr
  void* out;
};

}  // namespace scangraph
