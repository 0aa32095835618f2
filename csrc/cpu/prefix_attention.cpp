// CPU kernels of prefix-scan attention (Aaren): forward (also serving the in-place step op)
// and backward. The math is in scangraph/prefix_attention_params.h.
//
// Tasks of (sequence, block of heads) spread over threads with parallel_for: a task walks
// its positions once, forms the scores s_t = scale q . k_t on the fly, keeps each head's
// (m, c, w) in an opmath buffer and writes o_t (and m_t, c_t for the backward). Every output
// element has one owner, so results do not depend on the thread count; dq is one partial per
// (sequence, head), summed afterwards in a fixed order.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/isa.h"
#include "glue/prefix_attention_args.h"

namespace scangraph {
namespace {

// Independent partial sums of a dot product: the compiler maps them onto one vector register
// (no reassociation needed), and the summation order is fixed whatever the ISA.
constexpr int64_t kDotLanes = 8;

template <typename acc_t, typename a_t, typename b_t>
SCANGRAPH_INLINE acc_t dot(const a_t* __restrict__ a, const b_t* __restrict__ b, int64_t n) {
  acc_t part[kDotLanes] = {};
  int64_t i = 0;
  for (; i + kDotLanes <= n; i += kDotLanes)
    for (int64_t l = 0; l < kDotLanes; ++l) part[l] += acc_t(a[i + l]) * acc_t(b[i + l]);
  for (int64_t l = 0; i < n; ++i, ++l) part[l] += acc_t(a[i]) * acc_t(b[i]);
  acc_t sum = 0;
  for (int64_t l = 0; l < kDotLanes; ++l) sum += part[l];
  return sum;
}

// e^{from - to} for from <= to; 1 when both are equal, which covers two empty (-inf) maxima.
template <typename acc_t>
SCANGRAPH_INLINE acc_t gate(acc_t from, acc_t to) {
  return from == to ? acc_t(1) : std::exp(from - to);
}

struct SequenceSpan {
  int64_t batch, begin, end;  // positions [begin, end) of batch entry `batch`
};

template <typename Params>
SCANGRAPH_INLINE SequenceSpan sequence_span(const Params& p, int64_t seq) {
  if (p.cu_seqlens != nullptr) return {0, p.cu_seqlens[seq], p.cu_seqlens[seq + 1]};
  return {seq, 0, p.seqlen};
}

// A task is one sequence and a block of adjacent heads, walked position by position with every
// head of the block: the block's rows of k, v and o are contiguous, so the walk streams memory,
// and the heads' scans are independent dependency chains the core overlaps. A head's arithmetic
// does not depend on the block it is in: results are the same for every blocking.
struct TaskLayout {
  int64_t heads_per_task, blocks_per_seq;
};

// Heads per task: at most kMaxHeadBlock, fewer when that leaves fewer than kTasksPerThread
// tasks per thread (so short batches still use every thread).
constexpr int64_t kMaxHeadBlock = 8;
constexpr int64_t kTasksPerThread = 4;

template <typename Params>
TaskLayout task_layout(const Params& p) {
  const int64_t wanted = std::max<int64_t>(1, num_threads() * kTasksPerThread);
  const int64_t block = std::clamp<int64_t>(p.num_seqs * p.heads / wanted, 1, std::min(kMaxHeadBlock, p.heads));
  return {block, (p.heads + block - 1) / block};
}

struct Task {
  int64_t seq, head_begin, head_end;
};

SCANGRAPH_INLINE Task task_of(int64_t task, const TaskLayout& layout, int64_t heads) {
  const int64_t seq = task / layout.blocks_per_seq;
  const int64_t begin = (task % layout.blocks_per_seq) * layout.heads_per_task;
  return {seq, begin, std::min(begin + layout.heads_per_task, heads)};
}

// Forward tasks [task_begin, task_end). Scratch: kMaxHeadBlock * (d + dv) opmath values.
template <typename scalar_t>
SCANGRAPH_INLINE void forward_tasks(const PrefixAttentionParams& p, const TaskLayout& layout, int64_t task_begin,
                                    int64_t task_end, opmath_t<scalar_t>* scratch) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t H = p.heads, D = p.dim, DV = p.dim_v;
  acc_t* __restrict__ qs_all = scratch;                      // scale * q, per head of the block
  acc_t* __restrict__ w_all = scratch + kMaxHeadBlock * D;   // running numerators
  acc_t m[kMaxHeadBlock], c[kMaxHeadBlock];
  for (int64_t task = task_begin; task < task_end; ++task) {
    const Task tk = task_of(task, layout, H);
    const int64_t nh = tk.head_end - tk.head_begin;
    const SequenceSpan span = sequence_span(p, tk.seq);
    for (int64_t j = 0; j < nh; ++j) {
      const int64_t h = tk.head_begin + j, state = tk.seq * H + h;
      const scalar_t* q = static_cast<const scalar_t*>(p.q) + span.batch * p.q_batch_stride + h * p.q_head_stride;
      acc_t* qs = qs_all + j * D;
      acc_t* w = w_all + j * DV;
      for (int64_t i = 0; i < D; ++i) qs[i] = acc_t(p.scale) * acc_t(q[i]);
      m[j] = -std::numeric_limits<acc_t>::infinity();
      c[j] = 0;
      if (p.m0 != nullptr) {
        m[j] = static_cast<const acc_t*>(p.m0)[state];
        c[j] = static_cast<const acc_t*>(p.c0)[state];
        const acc_t* w0 = static_cast<const acc_t*>(p.w0) + state * DV;
        for (int64_t i = 0; i < DV; ++i) w[i] = w0[i];
      } else {
        for (int64_t i = 0; i < DV; ++i) w[i] = 0;
      }
    }
    const scalar_t* k = static_cast<const scalar_t*>(p.k) + span.batch * p.k_batch_stride;
    const scalar_t* v = static_cast<const scalar_t*>(p.v) + span.batch * p.v_batch_stride;
    for (int64_t t = span.begin; t < span.end; ++t) {
      const int64_t row0 = (span.batch * p.seqlen + t) * H;
      for (int64_t j = 0; j < nh; ++j) {
        const int64_t h = tk.head_begin + j;
        acc_t* __restrict__ w = w_all + j * DV;
        const scalar_t* __restrict__ vt = v + t * p.v_pos_stride + h * p.v_head_stride;
        const acc_t s = dot<acc_t>(qs_all + j * D, k + t * p.k_pos_stride + h * p.k_head_stride, D);
        if (s > m[j]) {  // a new maximum: rescale the old sums by e^{m - s} <= 1, the new term weighs 1
          const acc_t alpha = gate(m[j], s);
          c[j] = c[j] * alpha + acc_t(1);
          for (int64_t i = 0; i < DV; ++i) w[i] = w[i] * alpha + acc_t(vt[i]);
          m[j] = s;
        } else {
          const acc_t weight = std::exp(s - m[j]);
          c[j] += weight;
          for (int64_t i = 0; i < DV; ++i) w[i] += weight * acc_t(vt[i]);
        }
        const int64_t row = row0 + h;
        // c is 0 only for an initial state with a large max and no mass: its output is 0.
        const acc_t inv = c[j] > acc_t(0) ? acc_t(1) / c[j] : acc_t(0);
        scalar_t* __restrict__ o = static_cast<scalar_t*>(p.o) + row * DV;
        for (int64_t i = 0; i < DV; ++i) o[i] = scalar_t(w[i] * inv);
        if (p.m_stats != nullptr) {
          static_cast<acc_t*>(p.m_stats)[row] = m[j];
          static_cast<acc_t*>(p.c_stats)[row] = c[j];
        }
      }
    }
    // Written last: m_last / c_last / w_last may alias m0 / c0 / w0 (the step op).
    for (int64_t j = 0; j < nh; ++j) {
      const int64_t state = tk.seq * H + tk.head_begin + j;
      static_cast<acc_t*>(p.m_last)[state] = m[j];
      static_cast<acc_t*>(p.c_last)[state] = c[j];
      acc_t* w_last = static_cast<acc_t*>(p.w_last) + state * DV;
      for (int64_t i = 0; i < DV; ++i) w_last[i] = w_all[j * DV + i];
    }
  }
}

// Per-head scalars of the backward's reverse scans.
template <typename acc_t>
struct ReverseScan {
  acc_t m0, c0, m_final, m_next, K_scalar, grad_max;
};

// Backward tasks. Scratch: kMaxHeadBlock * (2 d + 2 dv) opmath values.
template <typename scalar_t>
SCANGRAPH_INLINE void backward_tasks(const PrefixAttentionBackwardParams& p, const TaskLayout& layout,
                                     int64_t task_begin, int64_t task_end, opmath_t<scalar_t>* scratch) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t H = p.heads, D = p.dim, DV = p.dim_v;
  acc_t* __restrict__ qs_all = scratch;                                // scale * q
  acc_t* __restrict__ dq_all = scratch + kMaxHeadBlock * D;            // sum_j ds_j k_j
  acc_t* __restrict__ K_all = scratch + 2 * kMaxHeadBlock * D;         // the vector reverse scan
  acc_t* __restrict__ v_all = scratch + kMaxHeadBlock * (2 * D + DV);  // v_j in opmath, read twice
  const acc_t* m_stats = static_cast<const acc_t*>(p.m_stats);
  const acc_t* c_stats = static_cast<const acc_t*>(p.c_stats);
  ReverseScan<acc_t> scan[kMaxHeadBlock];
  for (int64_t task = task_begin; task < task_end; ++task) {
    const Task tk = task_of(task, layout, H);
    const int64_t nh = tk.head_end - tk.head_begin;
    const SequenceSpan span = sequence_span(p, tk.seq);
    const auto row_of = [&](int64_t t, int64_t h) { return (span.batch * p.seqlen + t) * H + h; };
    for (int64_t j = 0; j < nh; ++j) {
      const int64_t h = tk.head_begin + j, state = tk.seq * H + h;
      const scalar_t* q = static_cast<const scalar_t*>(p.q) + span.batch * p.q_batch_stride + h * p.q_head_stride;
      for (int64_t i = 0; i < D; ++i) {
        qs_all[j * D + i] = acc_t(p.scale) * acc_t(q[i]);
        dq_all[j * D + i] = 0;
      }
      ReverseScan<acc_t>& r = scan[j];
      r.m0 = p.m0 ? static_cast<const acc_t*>(p.m0)[state] : -std::numeric_limits<acc_t>::infinity();
      r.c0 = p.m0 ? static_cast<const acc_t*>(p.c0)[state] : acc_t(0);
      const acc_t* grad_w_last = static_cast<const acc_t*>(p.grad_w_last) + state * DV;
      const acc_t* w_last = static_cast<const acc_t*>(p.w_last) + state * DV;
      const acc_t grad_c_last = static_cast<const acc_t*>(p.grad_c_last)[state];
      // The final state's explicit dependence on its max m_T.
      r.grad_max = static_cast<const acc_t*>(p.grad_m_last)[state] -
                   grad_c_last * static_cast<const acc_t*>(p.c_last)[state] - dot<acc_t>(grad_w_last, w_last, DV);
      r.m_final = span.end > span.begin ? m_stats[row_of(span.end - 1, h)] : r.m0;
      r.m_next = r.m_final;
      r.K_scalar = -grad_c_last;
      for (int64_t i = 0; i < DV; ++i) K_all[j * DV + i] = grad_w_last[i];
    }
    const scalar_t* k = static_cast<const scalar_t*>(p.k) + span.batch * p.k_batch_stride;
    const scalar_t* v = static_cast<const scalar_t*>(p.v) + span.batch * p.v_batch_stride;
    for (int64_t t = span.end - 1; t >= span.begin; --t) {
      for (int64_t j = 0; j < nh; ++j) {
        const int64_t h = tk.head_begin + j, row = row_of(t, h);
        ReverseScan<acc_t>& r = scan[j];
        acc_t* __restrict__ K = K_all + j * DV;
        acc_t* __restrict__ row_v = v_all + j * DV;
        const acc_t* __restrict__ qs = qs_all + j * D;
        acc_t* __restrict__ dq = dq_all + j * D;
        const acc_t m_t = m_stats[row], c_t = c_stats[row];
        const acc_t g = gate(m_t, r.m_next);
        const acc_t inv = c_t > acc_t(0) ? acc_t(1) / c_t : acc_t(0);
        const scalar_t* __restrict__ go = static_cast<const scalar_t*>(p.grad_o) + row * DV;
        const scalar_t* __restrict__ o = static_cast<const scalar_t*>(p.o) + row * DV;
        const scalar_t* __restrict__ vt = v + t * p.v_pos_stride + h * p.v_head_stride;
        for (int64_t i = 0; i < DV; ++i) {
          K[i] = K[i] * g + acc_t(go[i]) * inv;
          row_v[i] = acc_t(vt[i]);
        }
        r.K_scalar = r.K_scalar * g + dot<acc_t>(o, go, DV) * inv;
        const scalar_t* __restrict__ kt = k + t * p.k_pos_stride + h * p.k_head_stride;
        const acc_t weight = std::exp(dot<acc_t>(qs, kt, D) - m_t);
        scalar_t* __restrict__ dv_row = static_cast<scalar_t*>(p.dv) + row * DV;
        for (int64_t i = 0; i < DV; ++i) dv_row[i] = scalar_t(weight * K[i]);
        acc_t ds = weight * (dot<acc_t>(row_v, K, DV) - r.K_scalar);
        const acc_t m_prev = t > span.begin ? m_stats[row_of(t - 1, h)] : r.m0;
        if (m_t == r.m_final && m_prev < r.m_final) {  // the first score to reach the final max
          ds += r.grad_max;
          r.grad_max = 0;
        }
        scalar_t* __restrict__ dk_row = static_cast<scalar_t*>(p.dk) + row * D;
        for (int64_t i = 0; i < D; ++i) {
          dk_row[i] = scalar_t(ds * qs[i]);
          dq[i] += ds * acc_t(kt[i]);
        }
        r.m_next = m_t;
      }
    }
    for (int64_t j = 0; j < nh; ++j) {
      const int64_t state = tk.seq * H + tk.head_begin + j;
      const ReverseScan<acc_t>& r = scan[j];
      const acc_t g0 = gate(r.m0, r.m_next);
      const acc_t* w0 = p.m0 ? static_cast<const acc_t*>(p.w0) + state * DV : nullptr;
      acc_t* dw0 = static_cast<acc_t*>(p.dw0) + state * DV;
      acc_t dm0 = r.grad_max;  // nonzero only when no score exceeded m0
      const acc_t dc0 = -g0 * r.K_scalar;
      for (int64_t i = 0; i < DV; ++i) {
        dw0[i] = g0 * K_all[j * DV + i];
        if (w0 != nullptr) dm0 += dw0[i] * w0[i];
      }
      dm0 += dc0 * r.c0;
      static_cast<acc_t*>(p.dm0)[state] = dm0;
      static_cast<acc_t*>(p.dc0)[state] = dc0;
      acc_t* dq_out = static_cast<acc_t*>(p.dq_partial) + state * D;
      for (int64_t i = 0; i < D; ++i) dq_out[i] = acc_t(p.scale) * dq_all[j * D + i];
    }
  }
}

// Each task loop is compiled twice, for the baseline ISA and for AVX2 (chosen at run time).
template <typename scalar_t>
void forward_baseline(const PrefixAttentionParams& p, const TaskLayout& l, int64_t a, int64_t b,
                      opmath_t<scalar_t>* s) {
  forward_tasks<scalar_t>(p, l, a, b, s);
}
template <typename scalar_t>
void backward_baseline(const PrefixAttentionBackwardParams& p, const TaskLayout& l, int64_t a, int64_t b,
                       opmath_t<scalar_t>* s) {
  backward_tasks<scalar_t>(p, l, a, b, s);
}
#if SCANGRAPH_X86
template <typename scalar_t>
__attribute__((target("avx2,fma"))) void forward_avx2(const PrefixAttentionParams& p, const TaskLayout& l,
                                                      int64_t a, int64_t b, opmath_t<scalar_t>* s) {
  forward_tasks<scalar_t>(p, l, a, b, s);
}
template <typename scalar_t>
__attribute__((target("avx2,fma"))) void backward_avx2(const PrefixAttentionBackwardParams& p, const TaskLayout& l,
                                                       int64_t a, int64_t b, opmath_t<scalar_t>* s) {
  backward_tasks<scalar_t>(p, l, a, b, s);
}
#endif

// Multiply-adds below which a chunk of tasks runs inline: waking the thread pool costs more
// than such a chunk (a decode step, small training shapes), and on a shared machine much more.
constexpr int64_t kMinParallelWork = int64_t(1) << 16;

// Calls body(layout, task_begin, task_end) on chunks of tasks in parallel.
template <typename Params, typename Body>
void run_tasks(const Params& p, const Body& body) {
  if (p.num_seqs * p.heads == 0) return;
  const TaskLayout layout = task_layout(p);
  const int64_t tasks = p.num_seqs * layout.blocks_per_seq;
  const int64_t work = std::max<int64_t>(1, p.batch * p.seqlen * p.heads * (p.dim + p.dim_v));
  const int64_t grain = std::max<int64_t>(1, kMinParallelWork * tasks / work);
  parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) { body(layout, begin, end); });
}

void run_forward(const PrefixAttentionParams& p, ScalarType dtype) {
  dispatch_float(dtype, "prefix_attention_cpu", [&](auto t) {
    using scalar_t = element_t<decltype(t)>;
    using acc_t = opmath_t<scalar_t>;
    run_tasks(p, [&](const TaskLayout& layout, int64_t begin, int64_t end) {
      std::vector<acc_t> scratch(kMaxHeadBlock * (p.dim + p.dim_v));
#if SCANGRAPH_X86
      if (cpu::has_avx2_fma()) return forward_avx2<scalar_t>(p, layout, begin, end, scratch.data());
#endif
      forward_baseline<scalar_t>(p, layout, begin, end, scratch.data());
    });
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> prefix_attention_cpu(
    const Tensor& q, const Tensor& k, const Tensor& v, double scale, const std::optional<Tensor>& m0,
    const std::optional<Tensor>& c0, const std::optional<Tensor>& w0,
    const std::optional<Tensor>& cu_seqlens) {
  const PrefixAttentionCall call = prepare_prefix_attention(q, k, v, scale, m0, c0, w0, cu_seqlens);
  run_forward(call.params, k.scalar_type());
  return {call.o, call.m, call.c, call.m_last, call.c_last, call.w_last};
}

Tensor prefix_attention_step_cpu(const Tensor& m, const Tensor& c, const Tensor& w,
                                 const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  const PrefixAttentionCall call = prepare_prefix_attention_step(m, c, w, q, k, v, scale);
  run_forward(call.params, k.scalar_type());
  return call.o;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> prefix_attention_backward_cpu(
    const Tensor& q, const Tensor& k, const Tensor& v, double scale, const std::optional<Tensor>& m0,
    const std::optional<Tensor>& c0, const std::optional<Tensor>& w0,
    const std::optional<Tensor>& cu_seqlens, const Tensor& o, const Tensor& m, const Tensor& c,
    const Tensor& c_last, const Tensor& w_last, const Tensor& grad_o, const Tensor& grad_m_last,
    const Tensor& grad_c_last, const Tensor& grad_w_last) {
  const PrefixAttentionBackwardCall call = prepare_prefix_attention_backward(
      q, k, v, scale, m0, c0, w0, cu_seqlens, o, m, c, c_last, w_last, grad_o, grad_m_last, grad_c_last, grad_w_last);
  const PrefixAttentionBackwardParams& p = call.params;
  dispatch_float(k.scalar_type(), "prefix_attention_backward_cpu", [&](auto t) {
    using scalar_t = element_t<decltype(t)>;
    using acc_t = opmath_t<scalar_t>;
    run_tasks(p, [&](const TaskLayout& layout, int64_t begin, int64_t end) {
      std::vector<acc_t> scratch(kMaxHeadBlock * (2 * p.dim + 2 * p.dim_v));
#if SCANGRAPH_X86
      if (cpu::has_avx2_fma()) return backward_avx2<scalar_t>(p, layout, begin, end, scratch.data());
#endif
      backward_baseline<scalar_t>(p, layout, begin, end, scratch.data());
    });
  });
  return {call.dq(), call.dk, call.dv, call.dm0, call.dc0, call.dw0};
}

}  // namespace

SCANGRAPH_CPU_IMPLS(m) {
  SCANGRAPH_IMPL(m, "prefix_attention", &prefix_attention_cpu);
  SCANGRAPH_IMPL(m, "prefix_attention_backward", &prefix_attention_backward_cpu);
  SCANGRAPH_IMPL(m, "prefix_attention_step", &prefix_attention_step_cpu);
}

}  // namespace scangraph
