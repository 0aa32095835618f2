// CPU kernels of the causal depthwise convolution (docs/causal_conv1d.md): forward, backward and
// the decoding update. Work is split over (batch, channel) rows; a row's W <= 4 weights stay in
// registers and its positions are walked once. The backward's weight and bias gradients go
// through the partials of causal_conv1d_params.h, summed per channel in (batch, block) order:
// the same summation order over (batch, block) as the CUDA kernels, for any thread count.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "glue/causal_conv1d_args.h"

namespace scangraph {
namespace {

// One (batch, channel) row of the convolution: its inputs, the taps' masks and the activation.
template <typename T>
struct ConvRow {
  using acc_t = opmath_t<T>;
  const T* x;
  const T* init;        // (W - 1) initial inputs, or nullptr
  const int32_t* seq;   // the row's seq_idx, or nullptr
  acc_t w[kMaxConvWidth];
  acc_t bias;
  int64_t length, width;

  ConvRow(const CausalConv1dParams& p, int64_t row) : length(p.length), width(p.width) {
    const int64_t b = row / p.dim, d = row % p.dim;
    x = static_cast<const T*>(p.x) + row * p.length;
    init = p.initial_states ? static_cast<const T*>(p.initial_states) + row * (p.width - 1) : nullptr;
    seq = p.seq_idx ? p.seq_idx + b * p.length : nullptr;
    for (int64_t j = 0; j < p.width; ++j) w[j] = static_cast<const acc_t*>(p.weight)[d * p.width + j];
    bias = p.bias ? static_cast<const acc_t*>(p.bias)[d] : acc_t(0);
  }
  // x(pos) as the output at l reads it: masked across sequences, initial states before 0.
  acc_t input(int64_t l, int64_t pos) const {
    if (pos < 0) return init ? acc_t(init[width - 1 + pos]) : acc_t(0);
    if (seq && seq[pos] != seq[l]) return acc_t(0);
    return acc_t(x[pos]);
  }
  acc_t pre(int64_t l) const {
    acc_t s = bias;
    for (int64_t j = 0; j < width; ++j) s += w[j] * input(l, l - (width - 1) + j);
    return s;
  }
};

template <typename acc_t> acc_t silu(acc_t v) { return v / (acc_t(1) + std::exp(-v)); }
template <typename acc_t> acc_t silu_grad(acc_t v) {
  const acc_t s = acc_t(1) / (acc_t(1) + std::exp(-v));
  return s * (acc_t(1) + v * (acc_t(1) - s));
}

// The pre-activations of a row. The positions whose taps all read x of the row (l >= W - 1, no
// seq_idx) take no masks and W is a constant, so their loop vectorises; the others go through
// ConvRow::pre.
template <int W, typename T>
void row_pre(const ConvRow<T>& c, opmath_t<T>* pre) {
  using acc_t = opmath_t<T>;
  const int64_t edge = c.seq ? c.length : std::min<int64_t>(c.length, W - 1);
  for (int64_t l = 0; l < edge; ++l) pre[l] = c.pre(l);
  for (int64_t l = edge; l < c.length; ++l) {
    acc_t s = c.bias;
    for (int j = 0; j < W; ++j) s += c.w[j] * acc_t(c.x[l - (W - 1) + j]);
    pre[l] = s;
  }
}

// Calls f(std::integral_constant<int, W>) for the run-time width W in [1, kMaxConvWidth].
template <typename F>
void with_width(int64_t width, F&& f) {
  switch (width) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    default: return f(std::integral_constant<int, 4>{});
  }
}

template <typename T>
void conv_forward(const CausalConv1dParams& p) {
  using acc_t = opmath_t<T>;
  parallel_for(0, p.batch * p.dim, 1, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> pre(p.length);
    for (int64_t row = r0; row < r1; ++row) {
      const ConvRow<T> c(p, row);
      with_width(p.width, [&](auto w) { row_pre<decltype(w)::value>(c, pre.data()); });
      T* out = static_cast<T*>(p.out) + row * p.length;
      if (p.silu) {
        for (int64_t l = 0; l < p.length; ++l) out[l] = T(silu(pre[l]));
      } else {
        for (int64_t l = 0; l < p.length; ++l) out[l] = T(pre[l]);
      }
    }
  });
}

// One row's dx and its partials of dweight / dbias from g, the gradient of its pre-activation.
// Away from the row's ends and without seq_idx no tap is masked.
template <int W, typename T>
void row_backward(const ConvRow<T>& c, const opmath_t<T>* g, T* dx, opmath_t<T>* partial,
                  int64_t blocks) {
  using acc_t = opmath_t<T>;
  const int64_t L = c.length;
  // x(t) feeds the outputs l = t + W - 1 - j through tap j, within its sequence.
  const int64_t inner_end = c.seq ? 0 : std::max<int64_t>(L - (W - 1), 0);
  for (int64_t t = 0; t < inner_end; ++t) {
    acc_t s = 0;
    for (int j = 0; j < W; ++j) s += c.w[j] * g[t + W - 1 - j];
    dx[t] = T(s);
  }
  for (int64_t t = inner_end; t < L; ++t) {
    acc_t s = 0;
    for (int j = 0; j < W; ++j) {
      const int64_t l = t + W - 1 - j;
      if (l < L && !(c.seq && c.seq[l] != c.seq[t])) s += c.w[j] * g[l];
    }
    dx[t] = T(s);
  }
  const int64_t inner_begin = c.seq ? L : std::min<int64_t>(L, W - 1);
  for (int64_t blk = 0; blk < blocks; ++blk) {
    acc_t sums[kMaxConvWidth + 1] = {};
    const int64_t end = std::min(L, (blk + 1) * kConvGradBlock);
    for (int64_t l = blk * kConvGradBlock; l < end; ++l) {
      if (l >= inner_begin) {
        for (int j = 0; j < W; ++j) sums[j] += g[l] * acc_t(c.x[l - (W - 1) + j]);
      } else {
        for (int j = 0; j < W; ++j) sums[j] += g[l] * c.input(l, l - (W - 1) + j);
      }
      sums[W] += g[l];
    }
    for (int j = 0; j <= W; ++j) partial[blk * (W + 1) + j] = sums[j];
  }
}

template <typename T>
void conv_backward(const CausalConv1dBackwardParams& q) {
  using acc_t = opmath_t<T>;
  const CausalConv1dParams& p = q.fwd;
  const int64_t W = p.width, L = p.length, blocks = conv_grad_blocks(L);
  acc_t* partial = static_cast<acc_t*>(q.partial);
  parallel_for(0, p.batch * p.dim, 1, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> g(L);  // the gradient of the pre-activation
    for (int64_t row = r0; row < r1; ++row) {
      const ConvRow<T> c(p, row);
      const T* grad_out = static_cast<const T*>(q.grad_out) + row * L;
      if (p.silu) {
        with_width(W, [&](auto w) { row_pre<decltype(w)::value>(c, g.data()); });
        for (int64_t l = 0; l < L; ++l) g[l] = acc_t(grad_out[l]) * silu_grad(g[l]);
      } else {
        for (int64_t l = 0; l < L; ++l) g[l] = acc_t(grad_out[l]);
      }
      with_width(W, [&](auto w) {
        row_backward<decltype(w)::value>(c, g.data(), static_cast<T*>(q.dx) + row * L,
                                         partial + row * blocks * (W + 1), blocks);
      });
      if (q.dinitial_states) {  // initial input i is x(i - (W - 1)), read by outputs l = i - j
        T* dinit = static_cast<T*>(q.dinitial_states) + row * (W - 1);
        for (int64_t i = 0; i < W - 1; ++i) {
          acc_t s = 0;
          for (int64_t j = 0; j <= i; ++j)
            if (i - j < L) s += c.w[j] * g[i - j];
          dinit[i] = T(s);
        }
      }
    }
  });
  parallel_for(0, p.dim, 16, [&](int64_t d0, int64_t d1) {
    for (int64_t d = d0; d < d1; ++d) {
      acc_t sums[kMaxConvWidth + 1] = {};
      for (int64_t b = 0; b < p.batch; ++b)
        for (int64_t blk = 0; blk < blocks; ++blk)
          for (int64_t j = 0; j <= W; ++j) sums[j] += partial[((b * p.dim + d) * blocks + blk) * (W + 1) + j];
      for (int64_t j = 0; j < W; ++j) static_cast<acc_t*>(q.dweight)[d * W + j] = sums[j];
      if (q.dbias) static_cast<acc_t*>(q.dbias)[d] = sums[W];
    }
  });
}

template <typename T>
void conv_update(const CausalConv1dUpdateParams& p) {
  using acc_t = opmath_t<T>;
  const int64_t W = p.width, S = p.state_len, n = p.seqlen;
  parallel_for(0, p.batch * p.dim, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t b = row / p.dim, d = row % p.dim;
      const T* x = static_cast<const T*>(p.x) + row * n;
      T* out = static_cast<T*>(p.out) + row * n;
      const int64_t slot = p.conv_state_indices ? p.conv_state_indices[b] : b;
      if (slot < 0) {  // a padding row
        for (int64_t i = 0; i < n; ++i) out[i] = T(0);
        continue;
      }
      T* state = static_cast<T*>(p.conv_state) + (slot * p.dim + d) * S;
      const acc_t* w = static_cast<const acc_t*>(p.weight) + d * W;
      const acc_t bias = p.bias ? static_cast<const acc_t*>(p.bias)[d] : acc_t(0);
      // The window: the last W - 1 inputs before this call, oldest first, then each new x.
      acc_t window[kMaxConvWidth] = {};
      // The write index in [0, S), also for a negative cache_seqlens (as torch.remainder).
      const int64_t head = p.cache_seqlens && S > 0 ? (p.cache_seqlens[b] % S + S) % S : 0;
      for (int64_t i = 0; i < W - 1; ++i) {
        const int64_t at = p.cache_seqlens ? (head - (W - 1) + i + S) % S : S - (W - 1) + i;
        window[i] = acc_t(state[at]);
      }
      for (int64_t i = 0; i < n; ++i) {
        window[W - 1] = acc_t(x[i]);
        acc_t s = bias;
        for (int64_t j = 0; j < W; ++j) s += w[j] * window[j];
        out[i] = T(p.silu ? silu(s) : s);
        for (int64_t j = 0; j + 1 < W; ++j) window[j] = window[j + 1];
      }
      if (S == 0) continue;
      if (p.cache_seqlens) {  // x goes in at the head, in order (a later input wins a slot)
        for (int64_t i = 0; i < n; ++i) state[(head + i) % S] = x[i];
      } else {  // shift left by n, x fills the end
        for (int64_t i = 0; i < S; ++i) {
          const int64_t from = i + n;  // index into (state, x)
          state[i] = from < S ? state[from] : x[from - S];
        }
      }
    }
  });
}

Tensor causal_conv1d_cpu(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                         const std::optional<Tensor>& seq_idx, const std::optional<Tensor>& initial_states, bool silu) {
  ConvCall call = prepare_causal_conv1d(x, weight, bias, seq_idx, initial_states, silu);
  dispatch_float(x.scalar_type(), "causal_conv1d_cpu",
                 [&](auto t) { conv_forward<element_t<decltype(t)>>(call.params); });
  return call.out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> causal_conv1d_backward_cpu(
    const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
    const std::optional<Tensor>& seq_idx, const std::optional<Tensor>& initial_states,
    const Tensor& grad_out, bool silu) {
  ConvBackwardCall call = prepare_causal_conv1d_backward(x, weight, bias, seq_idx, initial_states, grad_out, silu);
  dispatch_float(x.scalar_type(), "causal_conv1d_backward_cpu",
                 [&](auto t) { conv_backward<element_t<decltype(t)>>(call.params); });
  return conv_backward_results(call, weight, bias);
}

Tensor causal_conv1d_update_cpu(const Tensor& x, const Tensor& conv_state, const Tensor& weight,
                                const std::optional<Tensor>& bias, bool silu,
                                const std::optional<Tensor>& cache_seqlens,
                                const std::optional<Tensor>& conv_state_indices) {
  ConvUpdateCall call =
      prepare_causal_conv1d_update(x, conv_state, weight, bias, silu, cache_seqlens, conv_state_indices);
  dispatch_float(x.scalar_type(), "causal_conv1d_update_cpu",
                 [&](auto t) { conv_update<element_t<decltype(t)>>(call.params); });
  if (call.copy_back) copy_into(conv_state, call.state);
  return call.out;
}

}  // namespace

SCANGRAPH_CPU_IMPLS(m) {
  SCANGRAPH_IMPL(m, "causal_conv1d", &causal_conv1d_cpu);
  SCANGRAPH_IMPL(m, "causal_conv1d_backward", &causal_conv1d_backward_cpu);
  SCANGRAPH_IMPL(m, "causal_conv1d_update", &causal_conv1d_update_cpu);
}

}  // namespace scangraph
