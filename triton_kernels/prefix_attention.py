"""Triton kernels of prefix-scan attention (Aaren): forward and backward.

One program per (sequence, head) walks its positions in chunks of BLOCK_L. Inside a chunk the
scan is written in closed form, which is stable for any finite scores because every exponent
is relative to a running max that is at least as large:
  m_t = max(m_carry, max_{j<=t} s_j)                       (a masked (BLOCK_L, BLOCK_L) max)
  c_t = e^{m_carry - m_t} c_carry + sum_{j<=t} e^{s_j - m_t}
  w_t = e^{m_carry - m_t} w_carry + sum_{j<=t} e^{s_j - m_t} v_j
and the last position's (m, c, w) is the carry into the next chunk: the associative combine of
docs/prefix_attention.md applied between chunks. The backward walks the chunks in reverse with
the same closed form for the two reverse scans (gates e^{m_j - m_t} <= 1 for t >= j). Every
output element has one owner: deterministic.

Parallel along L: when the (sequence, head) programs leave the GPU short, the positions are cut
into segments of whole chunks (segment_length, the rule of the CUDA kernels in
prefix_attention_params.h). MODE 1 gives each segment's summary from the empty state (forward)
or its map of the reverse scans from a zero start (backward); a combine kernel composes them in
order; MODE 2 runs every segment from its true state. MODE 0 is the unsegmented walk.
"""
import math

import torch
import triton
import triton.language as tl

from scangraph.ops._rules import opmath_dtype

from . import TARGET_WARPS, wrap_triton
from .accumulate import accumulator

# The chunk's (BLOCK_L, BLOCK_L, BLOCK_DV) product is the largest live tile: 16K values keeps it
# within the registers of 4 warps on a GPU; BLOCK_L is chosen from BLOCK_DV to respect it.
MAX_TILE = 16384


def _blocks(dim: int, dim_v: int):
    block_d = triton.next_power_of_2(max(dim, 1))
    block_dv = triton.next_power_of_2(max(dim_v, 1))
    block_l = 2 ** int(math.log2(max(1, math.isqrt(MAX_TILE // block_dv))))
    return max(4, min(32, block_l)), max(block_d, 2), max(block_dv, 2)


@triton.jit
def _gate(frm, to):
    """e^{frm - to} for frm <= to, 1 where both are equal (two empty, -inf, maxima)."""
    same = frm == to
    return tl.exp(tl.where(same, 0.0, frm) - tl.where(same, 0.0, to))


@triton.jit
def _sequence(cu_ptr, seq, seqlen, VARLEN: tl.constexpr):
    if VARLEN:
        return 0, tl.load(cu_ptr + seq).to(tl.int64), tl.load(cu_ptr + seq + 1).to(tl.int64)
    else:
        return seq, seq * 0, seq * 0 + seqlen


@triton.jit
def _segment(begin, end, seg, segment_length):
    """(segments of the sequence, this segment's [begin, end), whether it is the last): an empty
    sequence has one, empty, segment; a program past the sequence's segments gets an empty range."""
    count = tl.maximum((end - begin + segment_length - 1) // segment_length, 1)
    first = begin + seg * segment_length
    stop = tl.minimum(end, first + segment_length)
    return count, first, stop, seg == count - 1


@triton.jit
def _initial_state(m0_ptr, c0_ptr, w0_ptr, state, dim_v, dvs, dv_mask, HAS_STATE: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_DV: tl.constexpr):
    """(m, c, w) a sequence starts from: the given state, or the empty one (max -inf, no mass)."""
    if HAS_STATE:
        m = tl.load(m0_ptr + state).to(ACC)
        c = tl.load(c0_ptr + state).to(ACC)
        w = tl.load(w0_ptr + state * dim_v + dvs, mask=dv_mask, other=0.0).to(ACC)
    else:
        m = tl.full([], float("-inf"), ACC)
        c = tl.zeros([], ACC)
        w = tl.zeros([BLOCK_DV], ACC)
    return m, c, w


@triton.jit
def prefix_attention_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, m_stats_ptr, c_stats_ptr, m0_ptr, c0_ptr, w0_ptr,
                                m_last_ptr, c_last_ptr, w_last_ptr, cu_ptr, segment_ptr,
                                scale_ptr, seqlen, heads, dim, dim_v, segment_length, segments,
                                q_batch_stride, q_head_stride, k_batch_stride, k_pos_stride, k_head_stride,
                                v_batch_stride, v_pos_stride, v_head_stride,
                                HAS_STATE: tl.constexpr, HAS_STATS: tl.constexpr, VARLEN: tl.constexpr,
                                MODE: tl.constexpr, ACC: tl.constexpr, BLOCK_L: tl.constexpr,
                                BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    seq = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2).to(tl.int64)
    scale = tl.load(scale_ptr)  # a tensor: a float argument would be rounded to fp32
    b, begin, end = _sequence(cu_ptr, seq, seqlen, VARLEN)
    count, begin, end, final_segment = _segment(begin, end, seg, segment_length)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < dim
    dvs = tl.arange(0, BLOCK_DV)
    dv_mask = dvs < dim_v
    qs = tl.load(q_ptr + b * q_batch_stride + h * q_head_stride + dims, mask=dim_mask, other=0.0).to(ACC) * scale
    state = seq * heads + h
    scratch = segment_ptr + ((state * segments + seg) * (2 + dim_v))
    if MODE == 0:
        m, c, w = _initial_state(m0_ptr, c0_ptr, w0_ptr, state, dim_v, dvs, dv_mask, HAS_STATE, ACC, BLOCK_DV)
    elif MODE == 1:
        m, c, w = _initial_state(m0_ptr, c0_ptr, w0_ptr, state, dim_v, dvs, dv_mask, False, ACC, BLOCK_DV)
    else:  # the state entering this segment, from the combine kernel (second half of the scratch)
        entering = scratch + heads * tl.num_programs(0) * segments * (2 + dim_v)
        m = tl.load(entering).to(ACC)
        c = tl.load(entering + 1).to(ACC)
        w = tl.load(entering + 2 + dvs, mask=dv_mask, other=0.0).to(ACC)
    rows = tl.arange(0, BLOCK_L)
    causal = rows[:, None] >= rows[None, :]
    k_base = k_ptr + b * k_batch_stride + h * k_head_stride
    v_base = v_ptr + b * v_batch_stride + h * v_head_stride
    for t0 in range(begin, end, BLOCK_L):
        pos = t0 + rows
        valid = pos < end
        k_tile = tl.load(k_base + pos[:, None] * k_pos_stride + dims[None, :],
                         mask=valid[:, None] & dim_mask[None, :], other=0.0).to(ACC)
        s = tl.where(valid, tl.sum(k_tile * qs[None, :], axis=1), float("-inf"))
        pair = causal & valid[None, :]
        m_t = tl.maximum(tl.max(tl.where(pair, s[None, :], float("-inf")), axis=1), m)
        # Rows past the end have m_t = the last valid max (finite): no -inf - -inf below.
        weights = tl.where(pair, tl.exp(tl.where(pair, s[None, :] - m_t[:, None], 0.0)), 0.0)
        carry = _gate(m, m_t)
        c_t = carry * c + tl.sum(weights, axis=1)
        v_tile = tl.load(v_base + pos[:, None] * v_pos_stride + dvs[None, :],
                         mask=valid[:, None] & dv_mask[None, :], other=0.0).to(ACC)
        w_t = carry[:, None] * w[None, :] + tl.sum(weights[:, :, None] * v_tile[None, :, :], axis=1)
        inv = tl.where(c_t > 0, 1.0 / tl.where(c_t > 0, c_t, 1.0), 0.0)
        rows_out = (b * seqlen + pos) * heads + h
        if MODE != 1:
            tl.store(o_ptr + rows_out[:, None] * dim_v + dvs[None, :],
                     (w_t * inv[:, None]).to(o_ptr.dtype.element_ty), mask=valid[:, None] & dv_mask[None, :])
            if HAS_STATS:
                tl.store(m_stats_ptr + rows_out, m_t, mask=valid)
                tl.store(c_stats_ptr + rows_out, c_t, mask=valid)
        last = rows == tl.minimum(end - t0, BLOCK_L) - 1
        m = tl.max(m_t, axis=0)  # m_t is non-decreasing and constant past the end
        c = tl.sum(tl.where(last, c_t, 0.0), axis=0)
        w = tl.sum(tl.where(last[:, None], w_t, 0.0), axis=0)
    if MODE == 1:
        if seg < count:
            tl.store(scratch, m)
            tl.store(scratch + 1, c)
            tl.store(scratch + 2 + dvs, w, mask=dv_mask)
    else:
        if final_segment:  # written last: the step op passes the same tensors as initial and final state
            tl.store(m_last_ptr + state, m)
            tl.store(c_last_ptr + state, c)
            tl.store(w_last_ptr + state * dim_v + dvs, w, mask=dv_mask)


@triton.jit
def prefix_attention_combine_kernel(m0_ptr, c0_ptr, w0_ptr, cu_ptr, segment_ptr, seqlen, heads, dim_v,
                                    segment_length, segments, HAS_STATE: tl.constexpr, VARLEN: tl.constexpr,
                                    ACC: tl.constexpr, BLOCK_DV: tl.constexpr):
    # The state entering each segment: the initial state, then the summaries combined in order.
    seq = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    b, begin, end = _sequence(cu_ptr, seq, seqlen, VARLEN)
    count = tl.maximum((end - begin + segment_length - 1) // segment_length, 1)
    dvs = tl.arange(0, BLOCK_DV)
    dv_mask = dvs < dim_v
    state = seq * heads + h
    m, c, w = _initial_state(m0_ptr, c0_ptr, w0_ptr, state, dim_v, dvs, dv_mask, HAS_STATE, ACC, BLOCK_DV)
    half = tl.num_programs(0) * heads * segments * (2 + dim_v)
    for seg in range(0, count):
        summary = segment_ptr + (state * segments + seg) * (2 + dim_v)
        tl.store(summary + half, m)
        tl.store(summary + half + 1, c)
        tl.store(summary + half + 2 + dvs, w, mask=dv_mask)
        ms = tl.load(summary).to(ACC)
        cs = tl.load(summary + 1).to(ACC)
        ws = tl.load(summary + 2 + dvs, mask=dv_mask, other=0.0).to(ACC)
        top = tl.maximum(m, ms)
        a = _gate(m, top)
        g = _gate(ms, top)
        c = c * a + cs * g
        w = w * a + ws * g
        m = top


@triton.jit
def prefix_attention_combine_bwd_kernel(grad_c_last_ptr, grad_w_last_ptr, cu_ptr, segment_ptr, seqlen, heads, dim_v,
                                        segment_length, segments, VARLEN: tl.constexpr, ACC: tl.constexpr,
                                        BLOCK_DV: tl.constexpr):
    # (K, K') entering each segment from the right: the final state's gradients, then the later
    # segments' maps (gate product, K', K) composed right to left.
    seq = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    b, begin, end = _sequence(cu_ptr, seq, seqlen, VARLEN)
    count = tl.maximum((end - begin + segment_length - 1) // segment_length, 1)
    dvs = tl.arange(0, BLOCK_DV)
    dv_mask = dvs < dim_v
    state = seq * heads + h
    K = tl.load(grad_w_last_ptr + state * dim_v + dvs, mask=dv_mask, other=0.0).to(ACC)
    K_scalar = -tl.load(grad_c_last_ptr + state).to(ACC)
    half = tl.num_programs(0) * heads * segments * (2 + dim_v)
    for i in range(0, count):
        summary = segment_ptr + (state * segments + count - 1 - i) * (2 + dim_v)
        tl.store(summary + half + 1, K_scalar)
        tl.store(summary + half + 2 + dvs, K, mask=dv_mask)
        product = tl.load(summary).to(ACC)
        K_scalar = product * K_scalar + tl.load(summary + 1).to(ACC)
        K = product * K + tl.load(summary + 2 + dvs, mask=dv_mask, other=0.0).to(ACC)


@triton.jit
def prefix_attention_bwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, m_stats_ptr, c_stats_ptr, m0_ptr, c0_ptr, w0_ptr,
                                c_last_ptr, w_last_ptr, grad_o_ptr, grad_m_last_ptr, grad_c_last_ptr,
                                grad_w_last_ptr, cu_ptr, segment_ptr, dq_ptr, dk_ptr, dv_ptr, dm0_ptr, dc0_ptr,
                                dw0_ptr, scale_ptr, seqlen, heads, dim, dim_v, segment_length, segments,
                                q_batch_stride, q_head_stride, k_batch_stride, k_pos_stride, k_head_stride,
                                v_batch_stride, v_pos_stride, v_head_stride,
                                HAS_STATE: tl.constexpr, VARLEN: tl.constexpr, MODE: tl.constexpr,
                                ACC: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
                                BLOCK_DV: tl.constexpr):
    seq = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2).to(tl.int64)
    scale = tl.load(scale_ptr)  # a tensor: a float argument would be rounded to fp32
    b, seq_begin, seq_end = _sequence(cu_ptr, seq, seqlen, VARLEN)
    count, begin, end, _ = _segment(seq_begin, seq_end, seg, segment_length)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < dim
    dvs = tl.arange(0, BLOCK_DV)
    dv_mask = dvs < dim_v
    qs = tl.load(q_ptr + b * q_batch_stride + h * q_head_stride + dims, mask=dim_mask, other=0.0).to(ACC) * scale
    state = seq * heads + h
    m0, c0, w0 = _initial_state(m0_ptr, c0_ptr, w0_ptr, state, dim_v, dvs, dv_mask, HAS_STATE, ACC, BLOCK_DV)
    grad_w_last = tl.load(grad_w_last_ptr + state * dim_v + dvs, mask=dv_mask, other=0.0).to(ACC)
    w_last = tl.load(w_last_ptr + state * dim_v + dvs, mask=dv_mask, other=0.0).to(ACC)
    grad_c_last = tl.load(grad_c_last_ptr + state).to(ACC)
    # The final state's explicit dependence on its max: reaches the score that set it.
    grad_max = (tl.load(grad_m_last_ptr + state).to(ACC) - grad_c_last * tl.load(c_last_ptr + state).to(ACC)
                - tl.sum(grad_w_last * w_last, axis=0))
    stat_base = b * seqlen * heads + h
    m_final = m0
    if seq_end > seq_begin:
        m_final = tl.load(m_stats_ptr + stat_base + (seq_end - 1) * heads).to(ACC)
    k_base = k_ptr + b * k_batch_stride + h * k_head_stride
    v_base = v_ptr + b * v_batch_stride + h * v_head_stride
    rows = tl.arange(0, BLOCK_L)
    later = rows[None, :] >= rows[:, None]  # [j, t]: t >= j
    # What enters from the right: the final state's gradients after the last segment, else the
    # next segment's (K, K') from the combine kernel; zeros in the summary pass.
    scratch = segment_ptr + (state * segments + seg) * (2 + dim_v)
    K = grad_w_last            # carried K, K' of the position after the chunk, and its max
    K_scalar = -grad_c_last
    if MODE == 1:
        K = tl.zeros([BLOCK_DV], ACC)
        K_scalar = tl.zeros([], ACC)
    elif MODE == 2:
        if seg < count - 1:  # the last segment keeps the final state's gradients
            entering = scratch + tl.num_programs(0) * heads * segments * (2 + dim_v)
            K = tl.load(entering + 2 + dvs, mask=dv_mask, other=0.0).to(ACC)
            K_scalar = tl.load(entering + 1).to(ACC)
    m_next = m_final
    if end < seq_end:  # not the last segment: the next position's max
        m_next = tl.load(m_stats_ptr + stat_base + end * heads).to(ACC)
    product = tl.full([], 1.0, ACC)
    dq = tl.zeros([BLOCK_D], ACC)
    num_chunks = tl.maximum(end - begin + BLOCK_L - 1, 0) // BLOCK_L
    for i in range(0, num_chunks):
        t0 = begin + (num_chunks - 1 - i) * BLOCK_L
        pos = t0 + rows
        valid = pos < end
        stat = stat_base + pos * heads
        m_t = tl.load(m_stats_ptr + stat, mask=valid, other=0.0).to(ACC)
        c_t = tl.load(c_stats_ptr + stat, mask=valid, other=1.0).to(ACC)
        inv = tl.where(c_t > 0, 1.0 / tl.where(c_t > 0, c_t, 1.0), 0.0)
        out_rows = (b * seqlen + pos) * heads + h
        dv_tile_mask = valid[:, None] & dv_mask[None, :]
        grad_o = tl.load(grad_o_ptr + out_rows[:, None] * dim_v + dvs[None, :], mask=dv_tile_mask, other=0.0).to(ACC)
        o = tl.load(o_ptr + out_rows[:, None] * dim_v + dvs[None, :], mask=dv_tile_mask, other=0.0).to(ACC)
        G = grad_o * inv[:, None]                              # do_t / c_t
        G_scalar = tl.sum(o * grad_o, axis=1) * inv            # (o_t . do_t) / c_t
        pair = later & valid[:, None] & valid[None, :]
        Q = tl.where(pair, tl.exp(tl.where(pair, m_t[:, None] - m_t[None, :], 0.0)), 0.0)  # e^{m_j - m_t}
        to_next = tl.where(valid, _gate(m_t, m_next), 0.0)
        K_t = tl.sum(Q[:, :, None] * G[None, :, :], axis=1) + to_next[:, None] * K[None, :]
        K_scalar_t = tl.sum(Q * G_scalar[None, :], axis=1) + to_next * K_scalar
        k_tile = tl.load(k_base + pos[:, None] * k_pos_stride + dims[None, :],
                         mask=valid[:, None] & dim_mask[None, :], other=0.0).to(ACC)
        v_tile = tl.load(v_base + pos[:, None] * v_pos_stride + dvs[None, :], mask=dv_tile_mask, other=0.0).to(ACC)
        s = tl.sum(k_tile * qs[None, :], axis=1)
        e = tl.where(valid, tl.exp(tl.where(valid, s - m_t, 0.0)), 0.0)
        ds = e * (tl.sum(v_tile * K_t, axis=1) - K_scalar_t)
        m_prev = tl.load(m_stats_ptr + stat - heads, mask=valid & (pos > seq_begin), other=float("-inf")).to(ACC)
        m_prev = tl.where(pos > seq_begin, m_prev, m0)
        first_max = valid & (m_t == m_final) & (m_prev < m_final)
        ds += tl.where(first_max, grad_max, 0.0)
        if MODE != 1:
            tl.store(dv_ptr + out_rows[:, None] * dim_v + dvs[None, :],
                     (e[:, None] * K_t).to(dv_ptr.dtype.element_ty), mask=dv_tile_mask)
            tl.store(dk_ptr + out_rows[:, None] * dim + dims[None, :],
                     (ds[:, None] * qs[None, :]).to(dk_ptr.dtype.element_ty), mask=valid[:, None] & dim_mask[None, :])
        dq += tl.sum(ds[:, None] * k_tile, axis=0)
        first = rows == 0  # a chunk's first position is always inside the sequence
        product *= tl.sum(tl.where(first, to_next, 0.0), axis=0)
        K = tl.sum(tl.where(first[:, None], K_t, 0.0), axis=0)
        K_scalar = tl.sum(tl.where(first, K_scalar_t, 0.0), axis=0)
        m_next = tl.sum(tl.where(first, m_t, 0.0), axis=0)
    if MODE == 1:
        if seg < count:
            tl.store(scratch, product)
            tl.store(scratch + 1, K_scalar)
            tl.store(scratch + 2 + dvs, K, mask=dv_mask)
    else:
        if seg < count:  # dq of this segment (the launcher sums the segments' partials)
            tl.store(dq_ptr + (state * segments + seg) * dim + dims, dq * scale, mask=dim_mask)
        if seg == 0:
            g0 = _gate(m0, m_next)
            dw0 = g0 * K
            dc0 = -g0 * K_scalar
            # grad_max reaches m0 only when no score exceeded it
            dm0 = tl.sum(dw0 * w0, axis=0) + dc0 * c0 + tl.where(m_final > m0, 0.0, grad_max)
            tl.store(dw0_ptr + state * dim_v + dvs, dw0, mask=dv_mask)
            tl.store(dc0_ptr + state, dc0)
            tl.store(dm0_ptr + state, dm0)


def _scale_tensor(scale: float, k: torch.Tensor) -> torch.Tensor:
    """scale in the accumulation dtype: Triton passes Python floats as fp32, too coarse for fp64."""
    return torch.full((1,), scale, dtype=opmath_dtype(k.dtype), device=k.device)


def _layout(q, k, v):
    """q as (batch or 1, heads, d) and its batch stride (0 when shared), k and v with unit last stride."""
    q3 = q.unsqueeze(0) if q.dim() == 2 else q
    q3, k, v = (t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous() for t in (q3, k, v))
    return q3, (0 if q3.shape[0] == 1 else q3.stride(0)), k, v


MIN_SEGMENT = 16  # kPrefixMinSegment of prefix_attention_params.h
NUM_WARPS = 4     # Triton's default per program


def segment_length(programs: int, seqlen: int, block_l: int) -> int:
    """Positions per segment: whole chunks, enough segments that the programs fill the GPU (the
    rule of prefix_attention_segment_length, in programs of NUM_WARPS warps)."""
    if programs <= 0 or seqlen <= MIN_SEGMENT:
        return max(seqlen, 1)
    want = -(-TARGET_WARPS // (programs * NUM_WARPS))
    length = max(MIN_SEGMENT, -(-seqlen // want))
    return -(-length // block_l) * block_l


def _plan(seqs, heads, seqlen, block_l, like):
    length = segment_length(seqs * heads, seqlen, block_l)
    segments = max(1, -(-seqlen // length))
    scratch = like.new_empty((2, seqs, heads, segments, 2 + like.shape[3]), dtype=opmath_dtype(like.dtype)) \
        if segments > 1 else like.new_empty(1, dtype=opmath_dtype(like.dtype))
    return length, segments, scratch


def launch_prefix_attention(q, k, v, scale, m0, c0, w0, cu_seqlens, o, m, c, m_last, c_last, w_last):
    """Fills o, the statistics m, c (None: not kept) and the final state. The final state may be
    the initial state's tensors (the step op)."""
    batch, seqlen, heads, dim = k.shape
    dim_v = v.shape[3]
    seqs = batch if cu_seqlens is None else cu_seqlens.numel() - 1
    if seqs == 0 or heads == 0:
        return
    q3, q_batch_stride, k, v = _layout(q, k, v)
    block_l, block_d, block_dv = _blocks(dim, dim_v)
    has_state = m0 is not None
    has_stats = m is not None
    length, segments, scratch = _plan(seqs, heads, seqlen, block_l, v)
    initial = [t.contiguous() if has_state else o for t in (m0, c0, w0)]
    cu = cu_seqlens if cu_seqlens is not None else o
    common = dict(HAS_STATE=has_state, HAS_STATS=has_stats, VARLEN=cu_seqlens is not None,
                  ACC=accumulator(k.dtype), BLOCK_L=block_l, BLOCK_D=block_d, BLOCK_DV=block_dv)

    def walk(mode):
        wrap_triton(prefix_attention_fwd_kernel)[(seqs, heads, segments)](
            q3, k, v, o, m if has_stats else o, c if has_stats else o, *initial, m_last, c_last, w_last, cu, scratch,
            _scale_tensor(scale, k), seqlen, heads, dim, dim_v, length, segments, q_batch_stride, q3.stride(1),
            k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), MODE=mode, **common)

    if segments > 1:
        walk(1)
        wrap_triton(prefix_attention_combine_kernel)[(seqs, heads)](
            *initial, cu, scratch, seqlen, heads, dim_v, length, segments, HAS_STATE=has_state,
            VARLEN=cu_seqlens is not None, ACC=accumulator(k.dtype), BLOCK_DV=block_dv)
        walk(2)
    else:
        walk(0)


def launch_prefix_attention_backward(q, k, v, scale, m0, c0, w0, cu_seqlens, o, m, c, c_last, w_last, grad_o, grad_m_last,
                    grad_c_last, grad_w_last, dq_partial, dk, dv, dm0, dc0, dw0):
    batch, seqlen, heads, dim = k.shape
    dim_v = v.shape[3]
    seqs = batch if cu_seqlens is None else cu_seqlens.numel() - 1
    if seqs == 0 or heads == 0:
        return
    q3, q_batch_stride, k, v = _layout(q, k, v)
    block_l, block_d, block_dv = _blocks(dim, dim_v)
    has_state = m0 is not None
    length, segments, scratch = _plan(seqs, heads, seqlen, block_l, v)
    dq_segments = dq_partial if segments == 1 else dq_partial.new_empty((seqs, heads, segments, dim))
    cu = cu_seqlens if cu_seqlens is not None else o
    m, c, c_last, w_last = (t.contiguous() for t in (m, c, c_last, w_last))

    def walk(mode):
        wrap_triton(prefix_attention_bwd_kernel)[(seqs, heads, segments)](
            q3, k, v, o, m, c, m0.contiguous() if has_state else o, c0.contiguous() if has_state else o,
            w0.contiguous() if has_state else o, c_last, w_last, grad_o, grad_m_last, grad_c_last, grad_w_last,
            cu, scratch, dq_segments, dk, dv, dm0, dc0, dw0, _scale_tensor(scale, k), seqlen, heads, dim, dim_v,
            length, segments, q_batch_stride, q3.stride(1),
            k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
            HAS_STATE=has_state, VARLEN=cu_seqlens is not None, MODE=mode, ACC=accumulator(k.dtype),
            BLOCK_L=block_l, BLOCK_D=block_d, BLOCK_DV=block_dv)

    if segments > 1:
        walk(1)
        wrap_triton(prefix_attention_combine_bwd_kernel)[(seqs, heads)](
            grad_c_last, grad_w_last, cu, scratch, seqlen, heads, dim_v, length, segments,
            VARLEN=cu_seqlens is not None, ACC=accumulator(k.dtype), BLOCK_DV=block_dv)
        walk(2)
        # Segments past a short packed sequence's end are never written: zero them first.
        counts = _segments_per_sequence(cu_seqlens, seqs, seqlen, length, dq_segments.device)
        mask = torch.arange(segments, device=dq_segments.device)[None, :] < counts[:, None]
        dq_partial.copy_(torch.where(mask[:, None, :, None], dq_segments, 0).sum(2))  # a fixed order
    else:
        walk(0)


def _segments_per_sequence(cu_seqlens, seqs, seqlen, length, device):
    if cu_seqlens is None:
        lengths = torch.full((seqs,), seqlen, dtype=torch.int64, device=device)
    else:
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    return ((lengths + length - 1) // length).clamp(min=1)
