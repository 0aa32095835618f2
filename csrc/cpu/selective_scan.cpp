// CPU kernels of the selective scan (Mamba's S6 recurrence, ALGORITHMS.md section 1): forward,
// backward and the one-step state update.
//
// The state of one (batch, channel) is a short vector over N held in 32-byte vectors (8 floats
// or 4 doubles); exp is computed once per (position, state) with a vectorised exp2 polynomial.
// Work is split over (batch, channel block), and positions are walked in chunks of kScanChunk:
// varying B / C of a chunk are transposed once to (position, N) and reused by every channel of
// the block. The backward walks the chunks in reverse, recomputing each chunk's states from its
// checkpoint, so it keeps no (batch, dim, L, N) tensor; its reductions over channels and batch
// go through fixed partitions (scan_partitions) and run in a fixed order: no atomics, the same
// bits for any thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "glue/selective_scan_args.h"

namespace scangraph {
namespace {

#if !defined(__GNUC__)
#error "csrc/cpu/selective_scan.cpp uses GCC / Clang vector extensions"
#endif

#if defined(__x86_64__)
#define SCANGRAPH_SCAN_AVX2 1
#else
#define SCANGRAPH_SCAN_AVX2 0
#endif
#define SCANGRAPH_INLINE inline __attribute__((always_inline))

typedef float float8 __attribute__((vector_size(32)));
typedef double double4 __attribute__((vector_size(32)));
typedef int32_t int8x __attribute__((vector_size(32)));

template <typename acc_t> struct Vec;
template <> struct Vec<float> { using type = float8; static constexpr int kWidth = 8; };
template <> struct Vec<double> { using type = double4; static constexpr int kWidth = 4; };

// 2^x for every lane: x = n + f with n an integer and |f| <= 1/2, 2^f from its degree-7 Taylor
// polynomial (relative error below 1e-8, under half an fp32 ulp), 2^n added to the exponent
// bits. Inputs below -125 give ~1e-38 instead of a denormal: the gate is then 0 in effect.
SCANGRAPH_INLINE float8 exp2_vec(float8 x) {
  x = x < -125.0f ? -125.0f : x;
  x = x > 125.0f ? 125.0f : x;
  const float8 shifter = float8{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float8 n = (x + shifter) - shifter;
  const float8 f = x - n;
  constexpr float c1 = 0.6931471805599453f, c2 = 0.2402265069591007f, c3 = 0.0555041086648216f,
                  c4 = 0.0096181291076285f, c5 = 0.0013333558146428f, c6 = 0.0001540353039338f,
                  c7 = 0.0000152527338040f;
  const float8 p = 1.0f + f * (c1 + f * (c2 + f * (c3 + f * (c4 + f * (c5 + f * (c6 + f * c7))))));
  const int8x bits = (int8x)p + (__builtin_convertvector(n, int8x) << 23);
  return (float8)bits;  // a vector cast reinterprets the bits
}

SCANGRAPH_INLINE double4 exp2_vec(double4 x) {
  double4 r;
  for (int i = 0; i < 4; ++i) r[i] = std::exp2(x[i]);
  return r;
}

template <typename V>
SCANGRAPH_INLINE auto hsum(V v) {
  auto s = v[0];
  for (unsigned i = 1; i < sizeof(V) / sizeof(s); ++i) s += v[i];
  return s;
}

// mamba_ssm's softplus: log1p(exp(x)), the identity above 20 (its derivative there is 1).
template <typename acc_t>
SCANGRAPH_INLINE acc_t softplus(acc_t x) { return x <= acc_t(20) ? std::log1p(std::exp(x)) : x; }
template <typename acc_t>
SCANGRAPH_INLINE acc_t softplus_grad(acc_t x) { return x <= acc_t(20) ? acc_t(1) / (acc_t(1) + std::exp(-x)) : acc_t(1); }
template <typename acc_t>
SCANGRAPH_INLINE acc_t sigmoid(acc_t x) { return acc_t(1) / (acc_t(1) + std::exp(-x)); }

constexpr double kLog2e = 1.4426950408889634;
constexpr int64_t kChannelBlock = 16;  // forward: channels sharing one transposed B / C chunk

// Where sequences start and end along the scan order (s = 0..L-1): seq_first[s] / seq_last[s]
// is the sequence whose first / last scan position is s, else -1. Without cu_seqlens there is
// one sequence per batch row, covering all of L.
struct SequenceMap {
  std::vector<int32_t> first, last;
  std::vector<int64_t> empty;  // sequences without positions (their last state is their first)
};

SequenceMap sequence_map(const SelectiveScanParams& p) {
  SequenceMap m;
  m.first.assign(p.length, -1);
  m.last.assign(p.length, -1);
  if (p.cu_seqlens == nullptr) {
    if (p.length > 0) {
      m.first[0] = 0;  // sequence id 0 stands for "this batch row's sequence"
      m.last[p.length - 1] = 0;
    } else {
      m.empty.push_back(0);
    }
    return m;
  }
  for (int64_t i = 0; i < p.num_sequences; ++i) {
    const int64_t begin = p.cu_seqlens[i], end = p.cu_seqlens[i + 1];
    if (begin == end) {
      m.empty.push_back(i);
      continue;
    }
    // scan positions of t in [begin, end): forward s = t; reverse s = L - 1 - t
    const int64_t s_first = p.reverse ? p.length - end : begin;
    const int64_t s_last = p.reverse ? p.length - 1 - begin : end - 1;
    m.first[s_first] = static_cast<int32_t>(i);
    m.last[s_last] = static_cast<int32_t>(i);
  }
  return m;
}

// Row of initial_state / last_state for sequence `seq` of batch row b.
SCANGRAPH_INLINE int64_t state_row(const SelectiveScanParams& p, int64_t b, int64_t seq) {
  return p.cu_seqlens == nullptr ? b : seq;
}

// Everything one (batch, channel) needs, as acc vectors of N padded to whole vectors.
template <typename scalar_t, typename acc_t>
struct Channel {
  using V = typename Vec<acc_t>::type;
  static constexpr int W = Vec<acc_t>::kWidth;
  const SelectiveScanParams& p;
  int64_t b, d, nv;          // nv: vectors per state
  const scalar_t* u;         // this channel's rows, indexed by position t
  const scalar_t* delta;
  const scalar_t* z;
  acc_t D, bias;
  std::vector<V> A2, A, Bf, Cf;   // A * log2(e), A, fixed B / C

  Channel(const SelectiveScanParams& params, int64_t b_, int64_t d_, int64_t nv_)
      : p(params), b(b_), d(d_), nv(nv_), A2(nv_), A(nv_), Bf(nv_), Cf(nv_) {
    const int64_t row = (b * p.dim + d) * p.length;
    u = static_cast<const scalar_t*>(p.u) + row;
    delta = static_cast<const scalar_t*>(p.delta) + row;
    z = p.z ? static_cast<const scalar_t*>(p.z) + row : nullptr;
    D = p.D ? static_cast<const acc_t*>(p.D)[d] : acc_t(0);
    bias = p.delta_bias ? static_cast<const acc_t*>(p.delta_bias)[d] : acc_t(0);
    load_padded(static_cast<const acc_t*>(p.A) + d * p.dstate, A.data());
    for (int64_t v = 0; v < nv; ++v) A2[v] = A[v] * acc_t(kLog2e);
    if (p.groups == 0) {
      load_padded(static_cast<const acc_t*>(p.B) + d * p.dstate, Bf.data());
      load_padded(static_cast<const acc_t*>(p.C) + d * p.dstate, Cf.data());
    }
  }

  void load_padded(const acc_t* src, V* dst) const {
    for (int64_t v = 0; v < nv; ++v) {
      V x = {};
      for (int i = 0; i < W; ++i) {
        const int64_t n = v * W + i;
        if (n < p.dstate) x[i] = src[n];
      }
      dst[v] = x;
    }
  }

  void store(const V* src, acc_t* dst) const {
    for (int64_t n = 0; n < p.dstate; ++n) dst[n] = src[n / W][n % W];
  }

  // The state a sequence starts from: its initial state, or 0.
  void initial(int64_t seq, V* h) const {
    if (p.initial_state) {
      load_padded(static_cast<const acc_t*>(p.initial_state) + state_row(p, b, seq) * p.dim * p.dstate +
                      d * p.dstate, h);
    } else {
      for (int64_t v = 0; v < nv; ++v) h[v] = V{};
    }
  }

  SCANGRAPH_INLINE int64_t position(int64_t s) const { return p.reverse ? p.length - 1 - s : s; }

  SCANGRAPH_INLINE acc_t step_delta(int64_t t, acc_t& raw) const {
    raw = acc_t(delta[t]) + bias;
    return p.delta_softplus ? softplus(raw) : raw;
  }
};

// B / C of one chunk for one (batch, group), transposed to (position in chunk, N padded).
template <typename scalar_t, typename acc_t>
void load_chunk_bc(const SelectiveScanParams& p, int64_t b, int64_t g, int64_t s0, int64_t len, int64_t nv,
                   std::vector<typename Vec<acc_t>::type>& Bc, std::vector<typename Vec<acc_t>::type>& Cc) {
  using V = typename Vec<acc_t>::type;
  constexpr int W = Vec<acc_t>::kWidth;
  const int64_t base = (b * p.groups + g) * p.dstate * p.length;
  const scalar_t* B = static_cast<const scalar_t*>(p.B) + base;
  const scalar_t* C = static_cast<const scalar_t*>(p.C) + base;
  std::fill(Bc.begin(), Bc.begin() + len * nv, V{});
  std::fill(Cc.begin(), Cc.begin() + len * nv, V{});
  for (int64_t n = 0; n < p.dstate; ++n) {
    const scalar_t* Bn = B + n * p.length;
    const scalar_t* Cn = C + n * p.length;
    for (int64_t j = 0; j < len; ++j) {
      const int64_t t = p.reverse ? p.length - 1 - (s0 + j) : s0 + j;
      Bc[j * nv + n / W][n % W] = acc_t(Bn[t]);
      Cc[j * nv + n / W][n % W] = acc_t(Cn[t]);
    }
  }
}

// ---- forward ----------------------------------------------------------------------------------
// One channel over the chunk [s0, s0 + len): h is its carried state (nv vectors), updated.
template <typename scalar_t, typename acc_t>
SCANGRAPH_INLINE void forward_chunk(const Channel<scalar_t, acc_t>& ch, const SequenceMap& seqs, int64_t s0,
                                    int64_t len, const typename Vec<acc_t>::type* Bc,
                                    const typename Vec<acc_t>::type* Cc, typename Vec<acc_t>::type* h,
                                    int64_t& seq, scalar_t* out, acc_t* last_state) {
  using V = typename Vec<acc_t>::type;
  const SelectiveScanParams& p = ch.p;
  const int64_t nv = ch.nv;
  const bool varying = p.groups != 0;
  for (int64_t j = 0; j < len; ++j) {
    const int64_t s = s0 + j, t = ch.position(s);
    if (seqs.first[s] >= 0) {
      seq = seqs.first[s];
      ch.initial(seq, h);
    }
    acc_t raw;
    const acc_t dt = ch.step_delta(t, raw);
    const acc_t ut = acc_t(ch.u[t]);
    const V dtv = V{} + dt, duv = V{} + dt * ut;
    const V* Bt = varying ? Bc + j * nv : ch.Bf.data();
    const V* Ct = varying ? Cc + j * nv : ch.Cf.data();
    V y = {};
    for (int64_t v = 0; v < nv; ++v) {
      const V a = exp2_vec(dtv * ch.A2[v]);
      h[v] = a * h[v] + duv * Bt[v];
      y += Ct[v] * h[v];
    }
    acc_t yt = hsum(y) + ch.D * ut;
    if (ch.z) {
      const acc_t zt = acc_t(ch.z[t]);
      yt *= zt * sigmoid(zt);
    }
    out[t] = scalar_t(yt);
    if (seqs.last[s] >= 0) {
      ch.store(h, last_state + state_row(p, ch.b, seq) * p.dim * p.dstate + ch.d * p.dstate);
    }
  }
}

template <typename scalar_t, typename acc_t>
void scan_forward_block(const SelectiveScanParams& p, const SequenceMap& seqs, int64_t b, int64_t g,
                        int64_t d0, int64_t d1) {
  using V = typename Vec<acc_t>::type;
  constexpr int W = Vec<acc_t>::kWidth;
  const int64_t nv = (p.dstate + W - 1) / W;
  std::vector<Channel<scalar_t, acc_t>> channels;
  channels.reserve(d1 - d0);
  for (int64_t d = d0; d < d1; ++d) channels.emplace_back(p, b, d, nv);
  std::vector<V> states((d1 - d0) * nv, V{}), Bc, Cc;
  std::vector<int64_t> seq(d1 - d0, 0);
  if (p.groups != 0) {
    Bc.resize(kScanChunk * nv);
    Cc.resize(kScanChunk * nv);
  }
  scalar_t* out = static_cast<scalar_t*>(p.out) + b * p.dim * p.length;
  acc_t* last_state = static_cast<acc_t*>(p.last_state);
  acc_t* checkpoints = static_cast<acc_t*>(p.checkpoints);
  for (int64_t c = 0; c < p.num_chunks; ++c) {
    const int64_t s0 = c * kScanChunk, len = std::min(kScanChunk, p.length - s0);
    if (p.groups != 0) load_chunk_bc<scalar_t, acc_t>(p, b, g, s0, len, nv, Bc, Cc);
    for (int64_t i = 0; i < d1 - d0; ++i) {
      const auto& ch = channels[i];
      V* h = states.data() + i * nv;
      ch.store(h, checkpoints + ((b * p.dim + ch.d) * p.num_chunks + c) * p.dstate);
      forward_chunk<scalar_t, acc_t>(ch, seqs, s0, len, Bc.data(), Cc.data(), h, seq[i],
                                     out + ch.d * p.length, last_state);
    }
  }
  for (int64_t empty : seqs.empty) {  // a sequence without positions ends where it started
    for (int64_t i = 0; i < d1 - d0; ++i) {
      std::vector<V> h0(nv);
      channels[i].initial(empty, h0.data());
      channels[i].store(h0.data(), last_state + state_row(p, b, empty) * p.dim * p.dstate +
                                        channels[i].d * p.dstate);
    }
  }
}

// Calls body(b, g, d0, d1) for every (batch, group, channel slice), in parallel; slices are
// `parts` contiguous near-equal parts of each group's channels.
template <typename Body>
void for_each_channel_slice(const SelectiveScanParams& p, int64_t parts, const Body& body) {
  const int64_t groups = std::max<int64_t>(p.groups, 1), per_group = p.dim / groups;
  at::parallel_for(0, p.batch * groups * parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t part = task % parts, g = (task / parts) % groups, b = task / (parts * groups);
      const int64_t d0 = g * per_group + part * per_group / parts;
      const int64_t d1 = g * per_group + (part + 1) * per_group / parts;
      if (d0 < d1) body(b, g, d0, d1, part);
    }
  });
}

template <typename scalar_t>
void scan_forward(const SelectiveScanParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const SequenceMap seqs = sequence_map(p);
  const int64_t per_group = p.dim / std::max<int64_t>(p.groups, 1);
  const int64_t parts = (per_group + kChannelBlock - 1) / kChannelBlock;
  for_each_channel_slice(p, parts, [&](int64_t b, int64_t g, int64_t d0, int64_t d1, int64_t) {
    scan_forward_block<scalar_t, acc_t>(p, seqs, b, g, d0, d1);
  });
}

// ---- backward ---------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
struct BackwardBuffers {
  using V = typename Vec<acc_t>::type;
  std::vector<V> h_prev, h_after, gate, Bc, Cc, dBc, dCc;
  std::vector<acc_t> dt, raw;
  BackwardBuffers(int64_t nv, bool varying)
      : h_prev(kScanChunk * nv), h_after(kScanChunk * nv), gate(kScanChunk * nv), dt(kScanChunk),
        raw(kScanChunk) {
    if (varying) {
      Bc.resize(kScanChunk * nv);
      Cc.resize(kScanChunk * nv);
      dBc.resize(kScanChunk * nv);
      dCc.resize(kScanChunk * nv);
    }
  }
};

// One channel over the chunk [s0, s0 + len), backwards. lam is the adjoint carried in from
// the following position (a_{s+1} lambda_{s+1}); sums accumulates dA, dB, dC (fixed), dD and
// ddelta_bias of this (batch, channel) in the param_partial layout.
template <typename scalar_t, typename acc_t>
void backward_chunk(const SelectiveScanBackwardParams& q, const Channel<scalar_t, acc_t>& ch,
                    const SequenceMap& seqs, int64_t c, int64_t s0, int64_t len,
                    BackwardBuffers<scalar_t, acc_t>& buf, typename Vec<acc_t>::type* lam_carry,
                    typename Vec<acc_t>::type* sums) {
  using V = typename Vec<acc_t>::type;
  const SelectiveScanParams& p = q.fwd;
  const int64_t nv = ch.nv, N = p.dstate;
  const bool varying = p.groups != 0;
  const int64_t row = (ch.b * p.dim + ch.d) * p.length;
  // Recompute the chunk's states from its checkpoint.
  std::vector<V> h(nv);
  ch.load_padded(static_cast<const acc_t*>(p.checkpoints) + ((ch.b * p.dim + ch.d) * p.num_chunks + c) * N,
                 h.data());
  for (int64_t j = 0; j < len; ++j) {
    const int64_t s = s0 + j, t = ch.position(s);
    if (seqs.first[s] >= 0) ch.initial(seqs.first[s], h.data());
    buf.dt[j] = ch.step_delta(t, buf.raw[j]);
    const V dtv = V{} + buf.dt[j], duv = V{} + buf.dt[j] * acc_t(ch.u[t]);
    const V* Bt = varying ? buf.Bc.data() + j * nv : ch.Bf.data();
    for (int64_t v = 0; v < nv; ++v) {
      const V a = exp2_vec(dtv * ch.A2[v]);
      buf.h_prev[j * nv + v] = h[v];
      buf.gate[j * nv + v] = a;
      h[v] = a * h[v] + duv * Bt[v];
      buf.h_after[j * nv + v] = h[v];
    }
  }
  const scalar_t* grad_out = static_cast<const scalar_t*>(q.grad_out) + row;
  const acc_t* grad_last = static_cast<const acc_t*>(q.grad_last_state);
  scalar_t* du = static_cast<scalar_t*>(q.du) + row;
  scalar_t* ddelta = static_cast<scalar_t*>(q.ddelta) + row;
  scalar_t* dz = q.dz ? static_cast<scalar_t*>(q.dz) + row : nullptr;
  V* dA = sums;
  V* dBf = sums + nv;
  V* dCf = sums + 2 * nv;
  acc_t& dD = sums[3 * nv][0];
  acc_t& dbias = sums[3 * nv][1];
  for (int64_t j = len - 1; j >= 0; --j) {
    const int64_t s = s0 + j, t = ch.position(s);
    if (seqs.last[s] >= 0) {  // the adjoint restarts at each sequence's end
      if (grad_last) {
        ch.load_padded(grad_last + state_row(p, ch.b, seqs.last[s]) * p.dim * N + ch.d * N, lam_carry);
      } else {
        for (int64_t v = 0; v < nv; ++v) lam_carry[v] = V{};
      }
    }
    const V* Bt = varying ? buf.Bc.data() + j * nv : ch.Bf.data();
    const V* Ct = varying ? buf.Cc.data() + j * nv : ch.Cf.data();
    const V* hp = buf.h_prev.data() + j * nv;
    const V* ha = buf.h_after.data() + j * nv;
    const V* a = buf.gate.data() + j * nv;
    const acc_t ut = acc_t(ch.u[t]), g = acc_t(grad_out[t]), dt = buf.dt[j];
    acc_t dy = g;
    if (ch.z) {
      V y = {};
      for (int64_t v = 0; v < nv; ++v) y += Ct[v] * ha[v];
      const acc_t yt = hsum(y) + ch.D * ut, zt = acc_t(ch.z[t]), sz = sigmoid(zt);
      dy = g * zt * sz;
      dz[t] = scalar_t(g * yt * sz * (acc_t(1) + zt * (acc_t(1) - sz)));
    }
    const V dyv = V{} + dy, dtv = V{} + dt, uv = V{} + ut, dtu = V{} + dt * ut;
    V du_sum = {}, dd_sum = {};
    for (int64_t v = 0; v < nv; ++v) {
      const V lam = lam_carry[v] + Ct[v] * dyv;
      const V lam_h_a = lam * hp[v] * a[v];
      du_sum += lam * Bt[v];
      dd_sum += lam_h_a * ch.A[v] + lam * Bt[v] * uv;
      dA[v] += lam_h_a * dtv;
      if (varying) {
        buf.dBc[j * nv + v] += lam * dtu;
        buf.dCc[j * nv + v] += dyv * ha[v];
      } else {
        dBf[v] += lam * dtu;
        dCf[v] += dyv * ha[v];
      }
      lam_carry[v] = a[v] * lam;
    }
    du[t] = scalar_t(dt * hsum(du_sum) + ch.D * dy);
    const acc_t ddt = hsum(dd_sum);
    const acc_t draw = p.delta_softplus ? ddt * softplus_grad(buf.raw[j]) : ddt;
    ddelta[t] = scalar_t(draw);
    dD += ut * dy;
    dbias += draw;
    if (seqs.first[s] >= 0 && q.dinitial_state) {  // d h0 = a_first lambda_first
      ch.store(lam_carry, static_cast<acc_t*>(q.dinitial_state) +
                              state_row(p, ch.b, seqs.first[s]) * p.dim * N + ch.d * N);
    }
  }
}

template <typename scalar_t, typename acc_t>
void scan_backward_slice(const SelectiveScanBackwardParams& q, const SequenceMap& seqs, int64_t b, int64_t g,
                         int64_t d0, int64_t d1, int64_t part) {
  using V = typename Vec<acc_t>::type;
  constexpr int W = Vec<acc_t>::kWidth;
  const SelectiveScanParams& p = q.fwd;
  const int64_t nv = (p.dstate + W - 1) / W, N = p.dstate, count = d1 - d0;
  const bool varying = p.groups != 0;
  std::vector<Channel<scalar_t, acc_t>> channels;
  channels.reserve(count);
  for (int64_t d = d0; d < d1; ++d) channels.emplace_back(p, b, d, nv);
  BackwardBuffers<scalar_t, acc_t> buf(nv, varying);
  std::vector<V> lam(count * nv, V{}), sums(count * (3 * nv + 1), V{});
  acc_t* bc_partial = varying ? static_cast<acc_t*>(q.bc_partial) +
                                    ((part * p.batch + b) * p.groups + g) * 2 * N * p.length
                              : nullptr;
  for (int64_t c = p.num_chunks - 1; c >= 0; --c) {
    const int64_t s0 = c * kScanChunk, len = std::min(kScanChunk, p.length - s0);
    if (varying) {
      load_chunk_bc<scalar_t, acc_t>(p, b, g, s0, len, nv, buf.Bc, buf.Cc);
      std::fill(buf.dBc.begin(), buf.dBc.end(), V{});
      std::fill(buf.dCc.begin(), buf.dCc.end(), V{});
    }
    for (int64_t i = 0; i < count; ++i) {  // in channel order: the partial sums' fixed order
      backward_chunk<scalar_t, acc_t>(q, channels[i], seqs, c, s0, len, buf, lam.data() + i * nv,
                                      sums.data() + i * (3 * nv + 1));
    }
    if (varying) {  // this partition owns these entries of the partial: plain stores
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t j = 0; j < len; ++j) {
          const int64_t t = p.reverse ? p.length - 1 - (s0 + j) : s0 + j;
          bc_partial[n * p.length + t] = buf.dBc[j * nv + n / W][n % W];
          bc_partial[(N + n) * p.length + t] = buf.dCc[j * nv + n / W][n % W];
        }
      }
    }
  }
  // Sequences without positions: their last state is their initial state.
  if (q.dinitial_state) {
    for (int64_t empty : seqs.empty) {
      for (int64_t i = 0; i < count; ++i) {
        acc_t* dst = static_cast<acc_t*>(q.dinitial_state) + state_row(p, b, empty) * p.dim * N +
                     channels[i].d * N;
        const acc_t* g_last = static_cast<const acc_t*>(q.grad_last_state);
        for (int64_t n = 0; n < N; ++n) {
          dst[n] = g_last ? g_last[state_row(p, b, empty) * p.dim * N + channels[i].d * N + n] : acc_t(0);
        }
      }
    }
  }
  acc_t* param_partial = static_cast<acc_t*>(q.param_partial);
  for (int64_t i = 0; i < count; ++i) {
    acc_t* dst = param_partial + (b * p.dim + channels[i].d) * (3 * N + 2);
    const V* s = sums.data() + i * (3 * nv + 1);
    channels[i].store(s, dst);
    channels[i].store(s + nv, dst + N);
    channels[i].store(s + 2 * nv, dst + 2 * N);
    dst[3 * N] = s[3 * nv][0];
    dst[3 * N + 1] = s[3 * nv][1];
  }
}

template <typename scalar_t>
void scan_backward(const SelectiveScanBackwardParams& q) {
  using acc_t = at::opmath_type<scalar_t>;
  const SelectiveScanParams& p = q.fwd;
  const SequenceMap seqs = sequence_map(p);
  const int64_t N = p.dstate;
  const bool varying = p.groups != 0;
  const int64_t per_group = p.dim / std::max<int64_t>(p.groups, 1);
  // Varying B / C: one task per partition (it owns a dB / dC partial); fixed: any slicing.
  const int64_t parts = varying ? scan_partitions(per_group) : (per_group + kChannelBlock - 1) / kChannelBlock;
  for_each_channel_slice(p, parts, [&](int64_t b, int64_t g, int64_t d0, int64_t d1, int64_t part) {
    scan_backward_slice<scalar_t, acc_t>(q, seqs, b, g, d0, d1, part);
  });
  // Fixed-order sums over the batch of the per-(b, d) partials.
  const acc_t* partial = static_cast<const acc_t*>(q.param_partial);
  at::parallel_for(0, p.dim, 16, [&](int64_t begin, int64_t end) {
    for (int64_t d = begin; d < end; ++d) {
      for (int64_t k = 0; k < 3 * N + 2; ++k) {
        acc_t total = 0;
        for (int64_t b = 0; b < p.batch; ++b) total += partial[(b * p.dim + d) * (3 * N + 2) + k];
        if (k < N) {
          static_cast<acc_t*>(q.dA)[d * N + k] = total;
        } else if (k < 3 * N) {
          if (!varying) static_cast<acc_t*>(k < 2 * N ? q.dB : q.dC)[d * N + k % N] = total;
        } else if (k == 3 * N) {
          if (q.dD) static_cast<acc_t*>(q.dD)[d] = total;
        } else if (q.ddelta_bias) {
          static_cast<acc_t*>(q.ddelta_bias)[d] = total;
        }
      }
    }
  });
  if (varying) {  // dB / dC: the partitions' partials, added in partition order
    const int64_t parts_v = scan_partitions(per_group), slice = p.batch * p.groups * 2 * N * p.length;
    const acc_t* bc = static_cast<const acc_t*>(q.bc_partial);
    scalar_t* dB = static_cast<scalar_t*>(q.dB);
    scalar_t* dC = static_cast<scalar_t*>(q.dC);
    const int64_t per_bg = N * p.length;
    at::parallel_for(0, slice, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        acc_t total = 0;
        for (int64_t k = 0; k < parts_v; ++k) total += bc[k * slice + i];
        // i indexes (b, g, which, n, t): which 0 is dB, 1 is dC
        const int64_t bg = i / (2 * per_bg), which = (i / per_bg) % 2, rest = i % per_bg;
        (which == 0 ? dB : dC)[bg * per_bg + rest] = scalar_t(total);
      }
    });
  }
}

// ---- one decode step --------------------------------------------------------------------------
template <typename scalar_t>
void state_update(const SelectiveStateUpdateParams& q) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = q.dstate, per_group = q.dim / q.groups;
  at::parallel_for(0, q.batch * q.dim, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / q.dim, d = i % q.dim, g = d / per_group;
      acc_t raw = acc_t(static_cast<const scalar_t*>(q.dt)[i]) +
                  (q.dt_bias ? static_cast<const acc_t*>(q.dt_bias)[d] : acc_t(0));
      const acc_t dt = q.dt_softplus ? softplus(raw) : raw;
      const acc_t x = acc_t(static_cast<const scalar_t*>(q.x)[i]);
      const acc_t* A = static_cast<const acc_t*>(q.A) + d * N;
      const scalar_t* B = static_cast<const scalar_t*>(q.B) + (b * q.groups + g) * N;
      const scalar_t* C = static_cast<const scalar_t*>(q.C) + (b * q.groups + g) * N;
      acc_t* h = static_cast<acc_t*>(q.state) + i * N;
      acc_t y = 0;
      for (int64_t n = 0; n < N; ++n) {
        // exp2 of dt * A * log2(e), as the scan computes its gates
        h[n] = std::exp2(dt * (A[n] * acc_t(kLog2e))) * h[n] + dt * acc_t(B[n]) * x;
        y += acc_t(C[n]) * h[n];
      }
      y += (q.D ? static_cast<const acc_t*>(q.D)[d] : acc_t(0)) * x;
      if (q.z) {
        const acc_t z = acc_t(static_cast<const scalar_t*>(q.z)[i]);
        y *= z * sigmoid(z);
      }
      static_cast<scalar_t*>(q.out)[i] = scalar_t(y);
    }
  });
}

// The kernels are compiled twice, for the baseline ISA and for AVX2 + FMA (chosen at run time).
template <typename scalar_t>
void scan_forward_baseline(const SelectiveScanParams& p) { scan_forward<scalar_t>(p); }
template <typename scalar_t>
void scan_backward_baseline(const SelectiveScanBackwardParams& q) { scan_backward<scalar_t>(q); }
#if SCANGRAPH_SCAN_AVX2
template <typename scalar_t>
__attribute__((target("avx2,fma"))) void scan_forward_avx2(const SelectiveScanParams& p) {
  scan_forward<scalar_t>(p);
}
template <typename scalar_t>
__attribute__((target("avx2,fma"))) void scan_backward_avx2(const SelectiveScanBackwardParams& q) {
  scan_backward<scalar_t>(q);
}
bool has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

std::tuple<at::Tensor, at::Tensor, at::Tensor> selective_scan_cpu(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
    const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias, bool delta_softplus,
    const std::optional<at::Tensor>& initial_state, const std::optional<at::Tensor>& cu_seqlens, bool reverse) {
  ScanForwardCall call =
      prepare_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens, reverse);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "selective_scan_cpu", [&] {
#if SCANGRAPH_SCAN_AVX2
    if (has_avx2_fma()) return scan_forward_avx2<scalar_t>(call.in.params);
#endif
    scan_forward_baseline<scalar_t>(call.in.params);
  });
  return {call.out, call.last_state, call.checkpoints};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
selective_scan_backward_cpu(const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_last_state,
                            const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const std::optional<at::Tensor>& D,
                            const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
                            bool delta_softplus, const std::optional<at::Tensor>& initial_state,
                            const std::optional<at::Tensor>& cu_seqlens, bool reverse,
                            const at::Tensor& checkpoints) {
  ScanBackwardCall call = prepare_selective_scan_backward(grad_out, grad_last_state, u, delta, A, B, C, D, z,
                                                          delta_bias, delta_softplus, initial_state, cu_seqlens,
                                                          reverse, checkpoints);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "selective_scan_backward_cpu", [&] {
#if SCANGRAPH_SCAN_AVX2
    if (has_avx2_fma()) return scan_backward_avx2<scalar_t>(call.params);
#endif
    scan_backward_baseline<scalar_t>(call.params);
  });
  return scan_backward_results(call, A, B, C, D, delta_bias, initial_state);
}

at::Tensor selective_state_update_cpu(const at::Tensor& state, const at::Tensor& x, const at::Tensor& dt,
                                      const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                      const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                                      const std::optional<at::Tensor>& dt_bias, bool dt_softplus) {
  StateUpdateCall call = prepare_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "selective_state_update_cpu",
                                  [&] { state_update<scalar_t>(call.params); });
  if (call.copy_back) const_cast<at::Tensor&>(state).copy_(call.state_acc);
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(scangraph, CPU, m) {
  m.impl("selective_scan", &selective_scan_cpu);
  m.impl("selective_scan_backward", &selective_scan_backward_cpu);
  m.impl("selective_state_update", &selective_state_update_cpu);
}

}  // namespace scangraph
