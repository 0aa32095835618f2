"""Triton kernels of the selective-scan family (Mamba's S6): forward, backward, one decode step.

The contract is csrc/include/scangraph/selective_scan_params.h; the math is docs/selective_scan.md.

Forward: one program per (batch, channel) walks the scan order in sub-chunks of SUB positions
(SUB = 64 = kScanChunk unless N is large), with the N states on the second axis of a
(SUB, N) tile. Inside a sub-chunk the affine recurrence h = a h + b is one tl.associative_scan;
the state is carried across sub-chunks and stored every kScanChunk positions (the checkpoints).
A sequence start (cu_seqlens) zeroes its gate and adds a * h0 to its input, which keeps the
scan associative while cutting the carried state.

Along L: when the programs leave the GPU short of TARGET_WARPS, the scan order is cut into
segments of whole chunks (scan_segments). MODE 1 of the forward gives each segment's map
h -> P h + Q from a zero state, selective_scan_segments_kernel composes the maps in order into the state
entering each segment, and MODE 2 runs every segment from it (MODE 0: one segment).

Backward: the flow pass (selective_scan_flow_kernel) gives each segment's map of the adjoint flow, which
selective_scan_segments_kernel composes right to left. Then one program per (batch, group, partition) and
segment for varying B / C (per (batch, channel) and segment for fixed ones) visits the
segment's sub-chunks in reverse scan order and, inside each, its channels in order: the states
are recomputed from the checkpoint, the adjoint computed by a second associative scan run on the
flipped tile, and the sub-chunk's dB / dC summed over the channels in registers. Every reduction
goes through a partial buffer that one program owns (param_partial, bc_partial) and a
fixed-order sum: no atomics, bitwise reproducible.
"""
import torch
import triton
import triton.language as tl


from scangraph.ops._rules import SCAN_CHUNK as CHUNK, opmath_dtype, scan_partitions

from . import TARGET_WARPS, wrap_triton
from .accumulate import accumulator

LOG2E = tl.constexpr(1.4426950408889634)
# Elements of one (SUB, N) tile: beyond these the tile would spill registers, so large N scans
# shorter sub-chunks (SUB always divides CHUNK). The backward keeps some twenty tiles live, the
# forward a few: at N = 64 a 4096-element backward tile spilled 1 KB per thread (ptxas, sm_90).
MAX_TILE = 4096
MAX_BACKWARD_TILE = 1024


def backward_partitions(batch: int, groups: int, channels_per_group: int, length: int, num_warps: int) -> int:
    """Partitions of a group's channels in the backward with varying B / C: scan_partitions, or
    more (at most one per channel) when even a segment per chunk would leave the GPU short, as
    the CUDA rule adds slabs (scan_cuda_shape)."""
    per_partition = batch * groups * max(triton.cdiv(length, CHUNK), 1) * num_warps
    wanted = triton.cdiv(TARGET_WARPS, per_partition) if per_partition > 0 else 1
    return max(1, min(channels_per_group, max(scan_partitions(channels_per_group), wanted)))


def state_block(dstate: int, backward: bool = False):
    """(NP, SUB): N padded to a power of two, and the positions per scanned tile."""
    np_ = triton.next_power_of_2(max(dstate, 1))
    return np_, max(16, min(CHUNK, (MAX_BACKWARD_TILE if backward else MAX_TILE) // np_))


def _warps(np_: int, sub: int, backward: bool) -> int:
    # Checked with ptxas for sm_90 (triton 3.8): the forward's (64, 16) tile needs 95 registers at
    # 4 warps; the backward's needs 255 registers and spills 28-56 bytes at 8 warps, more at 4,
    # and 92 bytes at 16 (capped at 128 registers).
    return 8 if np_ * sub >= (1024 if backward else 4096) else 4


@triton.jit
def _softplus(x):
    # mamba's softplus: log1p(exp(x)), the identity above 20. log1p(e) = log(w) - ((w - 1) - e) / w
    # with w = 1 + e removes the rounding error of w, so a tiny e (very negative x) stays exact.
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    return tl.where(x <= 20.0, tl.log(w) - ((w - 1.0) - e) / w, x)


@triton.jit
def _softplus_grad(x):
    return tl.where(x <= 20.0, 1.0 / (1.0 + tl.exp(-x)), 1.0)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _adjoint_combine(g_late, p_late, s_late, g_early, p_early, s_early):
    # A segment (g, p, s) of scan positions [j, k] gives lambda_j = s + p mu, where mu = a_{k+1}
    # lambda_{k+1} comes from the position after it and g = a_j is the gate that hands lambda_j to
    # the position before. Joining an early and a late segment: mu of the early one is
    # g_late * lambda of the late one. Applied to the flipped tile, so the left operand is later.
    return g_early, p_early * g_late * p_late, s_early + p_early * g_late * s_late


@triton.jit
def _last_row(x, j, ROW: tl.constexpr):
    """Row ROW of a (SUB, NP) tile as an (NP,) vector."""
    return tl.sum(tl.where(j[:, None] == ROW, x, 0.0), axis=0)


@triton.jit
def _positions(s0, L, REVERSE: tl.constexpr, SUB: tl.constexpr):
    """Tile rows j, their scan positions' sequence index t, and which exist."""
    j = tl.arange(0, SUB)
    s = s0 + j
    valid = s < L
    if REVERSE:
        t = L - 1 - s
    else:
        t = s
    return j, s, t, valid


@triton.jit
def _bc_tile(s0, b, g, L, N, groups, n, nmask, Bf, Cf, B_ptr, C_ptr,
             VARYING: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr, SUB: tl.constexpr):
    """B and C over the scan positions [s0, s0 + SUB) of group g as (SUB, NP) tiles (the fixed
    ones broadcast): shared by every channel of the group."""
    if VARYING:
        j, s, t, valid = _positions(s0, L, REVERSE, SUB)
        m2 = valid[:, None] & nmask[None, :]
        bc = ((b * groups + g) * N + n[None, :]) * L + t[:, None]
        Bm = tl.load(B_ptr + bc, mask=m2, other=0.0).to(ACC)
        Cm = tl.load(C_ptr + bc, mask=m2, other=0.0).to(ACC)
    else:
        Bm = Bf[None, :]
        Cm = Cf[None, :]
    return Bm, Cm


@triton.jit
def _chunk(s0, b, d, dim, L, N, n, nmask, A_gate, Bm, bias, u_ptr, delta_ptr, h0_ptr, start_ptr, end_ptr,
           HAS_H0: tl.constexpr, HAS_CU: tl.constexpr, SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
           EXP2: tl.constexpr, ACC: tl.constexpr, SUB: tl.constexpr):
    """Everything the scan needs about the scan positions [s0, s0 + SUB) of channel (b, d).

    Rows past L and padded states get the identity element (a = 1, b = 0). a_eff / b_eff are the
    gate and input after the sequence resets: a start has gate 0 and input a h0 + delta B u."""
    j, s, t, valid = _positions(s0, L, REVERSE, SUB)
    row = (b * dim + d) * L
    raw = tl.load(delta_ptr + row + t, mask=valid, other=0.0).to(ACC) + bias
    if SOFTPLUS:
        dt = _softplus(raw)
    else:
        dt = raw
    uu = tl.load(u_ptr + row + t, mask=valid, other=0.0).to(ACC)
    m2 = valid[:, None] & nmask[None, :]
    if EXP2:
        a = tl.exp2(dt[:, None] * A_gate[None, :])
    else:
        a = tl.exp(dt[:, None] * A_gate[None, :])
    a = tl.where(m2, a, 1.0)
    bterm = tl.where(m2, (dt * uu)[:, None] * Bm, 0.0)
    if HAS_CU:
        srow = tl.load(start_ptr + s, mask=valid, other=-1).to(tl.int64)
        erow = tl.load(end_ptr + s, mask=valid, other=-1).to(tl.int64)
        start = srow >= 0
        end = erow >= 0
        srow = tl.maximum(srow, 0)
        erow = tl.maximum(erow, 0)
    else:
        start = s == 0
        end = s == L - 1
        srow = tl.zeros([SUB], dtype=tl.int64) + b
        erow = srow
    a_eff = tl.where(start[:, None], 0.0, a)
    b_eff = bterm
    if HAS_H0:
        h0 = tl.load(h0_ptr + (srow[:, None] * dim + d) * N + n[None, :],
                     mask=start[:, None] & nmask[None, :], other=0.0)
        b_eff = bterm + a * h0
    return j, t, valid, raw, dt, uu, a, bterm, a_eff, b_eff, start, srow, end, erow


@triton.jit
def _channel(d, N, n, nmask, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr,
             VARYING: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, EXP2: tl.constexpr,
             ACC: tl.constexpr):
    """Per-channel constants: A, the gate coefficient (A log2(e) with exp2), fixed B / C, D, bias."""
    A = tl.load(A_ptr + d * N + n, mask=nmask, other=0.0).to(ACC)
    if EXP2:
        A_gate = A * LOG2E
    else:
        A_gate = A
    if VARYING:
        Bf = tl.zeros_like(A)
        Cf = Bf
    else:
        Bf = tl.load(B_ptr + d * N + n, mask=nmask, other=0.0).to(ACC)
        Cf = tl.load(C_ptr + d * N + n, mask=nmask, other=0.0).to(ACC)
    # D and bias as (1,) tensors either way: a jit function returning a Python float in one
    # specialization and a tensor in another is not accepted by every Triton version.
    one = tl.arange(0, 1)
    if HAS_D:
        Dd = tl.load(D_ptr + d + one).to(ACC)
    else:
        Dd = tl.zeros([1], dtype=ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d + one).to(ACC)
    else:
        bias = tl.zeros([1], dtype=ACC)
    return A, A_gate, Bf, Cf, Dd, bias


@triton.jit
def _segment(seg, L, SEG_LEN):
    """Scan positions [first, stop) of segment seg: whole chunks, the last one ending at L."""
    first = seg * SEG_LEN
    return first, tl.minimum(L, first + SEG_LEN)


@triton.jit
def selective_scan_fwd_kernel(u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, h0_ptr,
                     start_ptr, end_ptr, out_ptr, last_ptr, ckpt_ptr, seg_ptr,
                     dim, L, N, cpg, groups, num_chunks, SEG_LEN, segments,
                     VARYING: tl.constexpr, HAS_Z: tl.constexpr, HAS_D: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, HAS_CU: tl.constexpr,
                     SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, EXP2: tl.constexpr,
                     ACC: tl.constexpr, SUB: tl.constexpr, NP: tl.constexpr, CHUNK_: tl.constexpr,
                     MODE: tl.constexpr):
    # Program (b * dim + d, segment). MODE 0: the one segment from 0. MODE 1: the segment's map
    # h -> P h + Q from a zero state into seg_ptr[0], seg_ptr[1]. MODE 2: the full pass from the
    # state entering the segment, seg_ptr[2], which selective_scan_segments_kernel composed from the maps.
    unit = tl.program_id(0).to(tl.int64)
    seg = tl.program_id(1).to(tl.int64)
    b = unit // dim
    d = unit % dim
    n = tl.arange(0, NP)
    nmask = n < N
    A, A_gate, Bf, Cf, Dd, bias = _channel(d, N, n, nmask, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr,
                                           VARYING, HAS_D, HAS_BIAS, EXP2, ACC)
    row = unit * L
    first, stop = _segment(seg, L, SEG_LEN)
    span = tl.num_programs(0).to(tl.int64) * segments * N
    slot = (unit * segments + seg) * N + n
    # The carried state before any reset: what the checkpoints hold (0 entering position 0).
    if MODE == 2:
        h = tl.load(seg_ptr + 2 * span + slot, mask=nmask, other=0.0)
    else:
        h = tl.zeros([NP], dtype=ACC)
    P = tl.full([NP], 1.0, dtype=ACC)
    for s0 in range(first, stop, SUB):
        if MODE != 1:
            tl.store(ckpt_ptr + (unit * num_chunks + s0 // CHUNK_) * N + n, h,
                     mask=nmask & (s0 % CHUNK_ == 0))
        Bm, Cm = _bc_tile(s0, b, d // cpg, L, N, groups, n, nmask, Bf, Cf, B_ptr, C_ptr, VARYING, REVERSE,
                          ACC, SUB)
        j, t, valid, raw, dt, uu, a, bterm, a_eff, b_eff, start, srow, end, erow = _chunk(
            s0, b, d, dim, L, N, n, nmask, A_gate, Bm, bias, u_ptr, delta_ptr, h0_ptr, start_ptr, end_ptr,
            HAS_H0, HAS_CU, SOFTPLUS, REVERSE, EXP2, ACC, SUB)
        gate, inp = tl.associative_scan((a_eff, b_eff), 0, _affine_combine)
        hs = gate * h[None, :] + inp
        if MODE == 1:
            P = P * _last_row(gate, j, SUB - 1)
        else:
            y = tl.sum(hs * Cm, axis=1) + Dd * uu
            if HAS_Z:
                zz = tl.load(z_ptr + row + t, mask=valid, other=0.0).to(ACC)
                y = y * zz * _sigmoid(zz)
            tl.store(out_ptr + row + t, y.to(out_ptr.dtype.element_ty), mask=valid)
            tl.store(last_ptr + (erow[:, None] * dim + d) * N + n[None, :], hs,
                     mask=end[:, None] & nmask[None, :])
        # Rows past L are identities, so the last row is the state after the last position.
        h = _last_row(hs, j, SUB - 1)
    if MODE == 1:
        tl.store(seg_ptr + slot, P, mask=nmask)
        tl.store(seg_ptr + span + slot, h, mask=nmask)


@triton.jit
def selective_scan_segments_kernel(seg_ptr, units, segments, N, RIGHT_TO_LEFT: tl.constexpr, BLOCK: tl.constexpr):
    """seg_ptr (3, units, segments, N): from each segment's map x -> P x + Q (planes 0, 1), the
    value entering it (plane 2): 0 entering the first segment (the last when RIGHT_TO_LEFT), then
    the maps composed in order. One (unit, n) per lane."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < units * N
    base = (i // N) * segments * N + i % N
    span = units * segments * N
    x = tl.zeros([BLOCK], dtype=seg_ptr.dtype.element_ty)
    for k in range(0, segments):
        if RIGHT_TO_LEFT:
            slot = base + (segments - 1 - k) * N
        else:
            slot = base + k * N
        tl.store(seg_ptr + 2 * span + slot, x, mask=mask)
        x = tl.load(seg_ptr + slot, mask=mask, other=0.0) * x + tl.load(seg_ptr + span + slot, mask=mask, other=0.0)


@triton.jit
def selective_scan_fill_empty_kernel(src_ptr, dst_ptr, cu_ptr, L, row_size,
                       HAS_SRC: tl.constexpr, HAS_CU: tl.constexpr, BLOCK: tl.constexpr):
    """dst[i] = src[i] (or 0) for every sequence i without positions: its last state is its
    initial state (forward), the gradient of its initial state is that of its last (backward)."""
    i = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if HAS_CU:
        empty = tl.load(cu_ptr + i) == tl.load(cu_ptr + i + 1)
    else:
        empty = L == 0
    mask = (k < row_size) & empty
    if HAS_SRC:
        v = tl.load(src_ptr + i * row_size + k, mask=mask, other=0.0)
    else:
        v = tl.zeros([BLOCK], dtype=dst_ptr.dtype.element_ty)
    tl.store(dst_ptr + i * row_size + k, v, mask=mask)


@triton.jit
def _output_grads(grad_ptr, z_ptr, row, t, valid, ACC: tl.constexpr, HAS_Z: tl.constexpr):
    """(the output's gradient, dy: the gradient of y before z's gate)."""
    gout = tl.load(grad_ptr + row + t, mask=valid, other=0.0).to(ACC)
    if HAS_Z:
        zz = tl.load(z_ptr + row + t, mask=valid, other=0.0).to(ACC)
        dy = gout * zz * _sigmoid(zz)
    else:
        dy = gout
    return gout, dy


@triton.jit
def _adjoint(a, p, lam_in, SUB: tl.constexpr, NP: tl.constexpr):
    """lambda over the tile from its inputs (the flow from the right already in the last row), and
    each row's coefficient of a further flow entering the last row. The reverse scan is a forward
    scan of the flipped tile: associative_scan(reverse=True) is not reliable for non-commutative
    combines on every Triton version."""
    p_rev = tl.broadcast_to(tl.flip(p, 0)[:, None], [SUB, NP])
    _, coef_rev, lam_rev = tl.associative_scan((tl.flip(a, 0), p_rev, tl.flip(lam_in, 0)), 0, _adjoint_combine)
    return tl.flip(lam_rev, 0), tl.flip(coef_rev, 0)


@triton.jit
def _adjoint_inputs(j, valid, nmask, Cm, dy, mu, end, erow, d, dim, N, n, glast_ptr,
                    HAS_GLAST: tl.constexpr, SUB: tl.constexpr):
    """p (0 at a sequence end: nothing flows into it from the right) and lambda's inputs
    C_s dy_s, the flow mu into the last row, and grad_last_state where a sequence ends."""
    p = tl.where(end, 0.0, 1.0).to(mu.dtype)
    m2 = valid[:, None] & nmask[None, :]
    lam_in = tl.where(m2, Cm * dy[:, None], 0.0)
    lam_in += tl.where(j[:, None] == SUB - 1, p[:, None] * mu[None, :], 0.0)
    if HAS_GLAST:
        lam_in += tl.load(glast_ptr + (erow[:, None] * dim + d) * N + n[None, :],
                          mask=end[:, None] & nmask[None, :], other=0.0)
    return p, lam_in


@triton.jit
def selective_scan_flow_kernel(grad_ptr, glast_ptr, u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, bias_ptr,
                      start_ptr, end_ptr, seg_ptr, dim, L, N, cpg, groups, SEG_LEN, segments,
                      VARYING: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                      HAS_GLAST: tl.constexpr, HAS_CU: tl.constexpr, SOFTPLUS: tl.constexpr,
                      REVERSE: tl.constexpr, EXP2: tl.constexpr, ACC: tl.constexpr, SUB: tl.constexpr,
                      NP: tl.constexpr):
    # Summary pass of the backward, program (b * dim + d, segment): the segment's map of the
    # adjoint flow, mu_out = P mu_in + Q, where mu_in = a_{s+1} lambda_{s+1} enters its last
    # position from the right and mu_out leaves its first; from mu_in = 0 into seg_ptr[0], [1].
    unit = tl.program_id(0).to(tl.int64)
    seg = tl.program_id(1).to(tl.int64)
    b = unit // dim
    d = unit % dim
    n = tl.arange(0, NP)
    nmask = n < N
    A, A_gate, Bf, Cf, Dd, bias = _channel(d, N, n, nmask, A_ptr, B_ptr, C_ptr, A_ptr, bias_ptr,
                                           VARYING, False, HAS_BIAS, EXP2, ACC)
    first, stop = _segment(seg, L, SEG_LEN)
    num_sub = tl.cdiv(stop - first, SUB)
    mu = tl.zeros([NP], dtype=ACC)
    P = tl.full([NP], 1.0, dtype=ACC)
    for i in range(0, num_sub):
        s0 = first + (num_sub - 1 - i) * SUB
        Bm, Cm = _bc_tile(s0, b, d // cpg, L, N, groups, n, nmask, Bf, Cf, B_ptr, C_ptr, VARYING, REVERSE,
                          ACC, SUB)
        j, t, valid, raw, dt, uu, a, bterm, a_eff, b_eff, start, srow, end, erow = _chunk(
            s0, b, d, dim, L, N, n, nmask, A_gate, Bm, bias, u_ptr, delta_ptr, A_ptr, start_ptr, end_ptr,
            False, HAS_CU, SOFTPLUS, REVERSE, EXP2, ACC, SUB)
        gout, dy = _output_grads(grad_ptr, z_ptr, unit * L, t, valid, ACC, HAS_Z)
        p, lam_in = _adjoint_inputs(j, valid, nmask, Cm, dy, mu, end, erow, d, dim, N, n, glast_ptr,
                                    HAS_GLAST, SUB)
        lam, coef = _adjoint(a, p, lam_in, SUB, NP)
        mu = _last_row(a * lam, j, 0)
        P = P * _last_row(a * coef, j, 0)
    slot = (unit * segments + seg) * N + n
    span = tl.num_programs(0).to(tl.int64) * segments * N
    tl.store(seg_ptr + slot, P, mask=nmask)
    tl.store(seg_ptr + span + slot, mu, mask=nmask)


@triton.jit
def selective_scan_bwd_kernel(grad_ptr, glast_ptr, u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr,
                     h0_ptr, start_ptr, end_ptr, ckpt_ptr, seg_ptr, du_ptr, ddelta_ptr, dz_ptr, dh0_ptr,
                     partial_ptr, bc_ptr,
                     batch, dim, L, N, cpg, groups, parts, num_chunks, SEG_LEN, segments,
                     VARYING: tl.constexpr, HAS_Z: tl.constexpr, HAS_D: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, HAS_GLAST: tl.constexpr,
                     HAS_CU: tl.constexpr, SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
                     EXP2: tl.constexpr, ACC: tl.constexpr, SUB: tl.constexpr, NP: tl.constexpr,
                     CHUNK_: tl.constexpr):
    # Program (b, g, part) x segment: channels [d0, d1) of group g (fixed B / C: groups = 1 and
    # one channel per partition) over the segment's positions. The sub-chunks are visited in
    # reverse scan order and, inside each, the channels in order: varying dB / dC of the
    # sub-chunk sum over the channels in registers and are stored once into the partition's own
    # bc_partial[part, b, g]. What a channel carries from one sub-chunk to the next, the flow mu
    # and its parameter sums, stays in memory it owns (seg_ptr's plane 2 at (b * dim + d,
    # segment), partial_ptr at (segment, b, d)); the barrier orders one sub-chunk's stores before
    # the next one's loads across the program's threads.
    pid = tl.program_id(0).to(tl.int64)
    seg = tl.program_id(1).to(tl.int64)
    part = pid % parts
    g = (pid // parts) % groups
    b = pid // (parts * groups)
    d0 = g * cpg + part * cpg // parts
    d1 = g * cpg + (part + 1) * cpg // parts
    n = tl.arange(0, NP)
    nmask = n < N
    two = tl.arange(0, 2)
    width = 3 * N + 2
    span = batch * dim * segments * N
    bc_base = ((part * batch + b) * groups + g) * 2 * N * L
    first, stop = _segment(seg, L, SEG_LEN)
    num_sub = tl.cdiv(stop - first, SUB)
    zero = tl.zeros([NP], dtype=ACC)
    for i in range(0, num_sub):
        s0 = first + (num_sub - 1 - i) * SUB
        Bg, Cg = _bc_tile(s0, b, g, L, N, groups, n, nmask, zero, zero, B_ptr, C_ptr, VARYING, REVERSE, ACC, SUB)
        dB_sum = tl.zeros([SUB, NP], dtype=ACC)
        dC_sum = tl.zeros([SUB, NP], dtype=ACC)
        for d in range(d0, d1):
            A, A_gate, Bf, Cf, Dd, bias = _channel(d, N, n, nmask, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr,
                                                   VARYING, HAS_D, HAS_BIAS, EXP2, ACC)
            if VARYING:
                Bm = Bg
                Cm = Cg
            else:
                Bm = Bf[None, :]
                Cm = Cf[None, :]
            unit = b * dim + d
            row = unit * L
            carry = seg_ptr + 2 * span + (unit * segments + seg) * N + n
            mu = tl.load(carry, mask=nmask, other=0.0)
            # The state entering this sub-chunk: its checkpoint, advanced over the sub-chunks
            # of its kScanChunk before it (none when SUB == kScanChunk).
            h = tl.load(ckpt_ptr + (unit * num_chunks + s0 // CHUNK_) * N + n, mask=nmask, other=0.0)
            for s1 in range(s0 - s0 % CHUNK_, s0, SUB):
                Bs, Cs = _bc_tile(s1, b, g, L, N, groups, n, nmask, Bf, Cf, B_ptr, C_ptr, VARYING, REVERSE,
                                  ACC, SUB)
                j, t, valid, raw, dt, uu, a, bterm, a_eff, b_eff, start, srow, end, erow = _chunk(
                    s1, b, d, dim, L, N, n, nmask, A_gate, Bs, bias, u_ptr, delta_ptr, h0_ptr, start_ptr,
                    end_ptr, HAS_H0, HAS_CU, SOFTPLUS, REVERSE, EXP2, ACC, SUB)
                gate, inp = tl.associative_scan((a_eff, b_eff), 0, _affine_combine)
                h = _last_row(gate * h[None, :] + inp, j, SUB - 1)
            j, t, valid, raw, dt, uu, a, bterm, a_eff, b_eff, start, srow, end, erow = _chunk(
                s0, b, d, dim, L, N, n, nmask, A_gate, Bm, bias, u_ptr, delta_ptr, h0_ptr, start_ptr, end_ptr,
                HAS_H0, HAS_CU, SOFTPLUS, REVERSE, EXP2, ACC, SUB)
            gate, inp = tl.associative_scan((a_eff, b_eff), 0, _affine_combine)
            hs = gate * h[None, :] + inp
            m2 = valid[:, None] & nmask[None, :]
            gout, dy = _output_grads(grad_ptr, z_ptr, row, t, valid, ACC, HAS_Z)
            if HAS_Z:
                zz = tl.load(z_ptr + row + t, mask=valid, other=0.0).to(ACC)
                sz = _sigmoid(zz)
                y = tl.sum(hs * Cm, axis=1) + Dd * uu
                tl.store(dz_ptr + row + t, (gout * y * sz * (1.0 + zz * (1.0 - sz))).to(dz_ptr.dtype.element_ty),
                         mask=valid)
            # Adjoint: lambda_s = C_s dy_s + a_{s+1} lambda_{s+1}, restarted at every sequence end
            # from grad_last_state (p = 0 there cuts what comes after).
            p, lam_in = _adjoint_inputs(j, valid, nmask, Cm, dy, mu, end, erow, d, dim, N, n, glast_ptr,
                                        HAS_GLAST, SUB)
            lam, coef = _adjoint(a, p, lam_in, SUB, NP)
            lam = tl.where(m2, lam, 0.0)
            tl.store(carry, _last_row(a * lam, j, 0), mask=nmask)
            # a h_{s-1} = h_s - delta B u, with h_{s-1} the new sequence's h0 at a start.
            lah = lam * (hs - bterm)
            lam_b = tl.sum(lam * Bm, axis=1)
            du = dt * lam_b + Dd * dy
            ddt = tl.sum(lah * A[None, :], axis=1) + uu * lam_b
            if SOFTPLUS:
                draw = ddt * _softplus_grad(raw)
            else:
                draw = ddt
            tl.store(du_ptr + row + t, du.to(du_ptr.dtype.element_ty), mask=valid)
            tl.store(ddelta_ptr + row + t, draw.to(ddelta_ptr.dtype.element_ty), mask=valid)
            dB_tile = lam * (dt * uu)[:, None]
            dC_tile = tl.where(m2, hs * dy[:, None], 0.0)
            sums = partial_ptr + ((seg * batch + b) * dim + d) * width
            tl.store(sums + n, tl.load(sums + n, mask=nmask, other=0.0) + tl.sum(lah * dt[:, None], axis=0),
                     mask=nmask)
            if VARYING:
                dB_sum += dB_tile
                dC_sum += dC_tile
            else:
                tl.store(sums + N + n, tl.load(sums + N + n, mask=nmask, other=0.0) + tl.sum(dB_tile, axis=0),
                         mask=nmask)
                tl.store(sums + 2 * N + n,
                         tl.load(sums + 2 * N + n, mask=nmask, other=0.0) + tl.sum(dC_tile, axis=0), mask=nmask)
            rest = tl.where(two == 0, tl.sum(tl.where(valid, uu * dy, 0.0), axis=0),
                            tl.sum(tl.where(valid, draw, 0.0), axis=0))
            tl.store(sums + 3 * N + two, tl.load(sums + 3 * N + two) + rest)
            if HAS_H0:  # d h0 = a_first lambda_first
                tl.store(dh0_ptr + (srow[:, None] * dim + d) * N + n[None, :], a * lam,
                         mask=start[:, None] & nmask[None, :])
        if VARYING:
            j, s, t, valid = _positions(s0, L, REVERSE, SUB)
            m2 = valid[:, None] & nmask[None, :]
            bc = bc_ptr + bc_base + n[None, :] * L + t[:, None]
            tl.store(bc, dB_sum, mask=m2)
            tl.store(bc + N * L, dC_sum, mask=m2)
        tl.debug_barrier()


@triton.jit
def selective_scan_param_reduce_kernel(partial_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, rows, dim, N,
                         FIXED_BC: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                         ACC: tl.constexpr, NP: tl.constexpr):
    # Sums the per-(segment, b, d) partials over (segment, b) in order: the same bits every launch.
    d = tl.program_id(0).to(tl.int64)
    n = tl.arange(0, NP)
    nmask = n < N
    two = tl.arange(0, 2)
    dA = tl.zeros([NP], dtype=ACC)
    dB = tl.zeros([NP], dtype=ACC)
    dC = tl.zeros([NP], dtype=ACC)
    rest = tl.zeros([2], dtype=ACC)
    width = 3 * N + 2
    for r in range(0, rows):
        base = partial_ptr + (r * dim + d) * width
        dA += tl.load(base + n, mask=nmask, other=0.0)
        dB += tl.load(base + N + n, mask=nmask, other=0.0)
        dC += tl.load(base + 2 * N + n, mask=nmask, other=0.0)
        rest += tl.load(base + 3 * N + two)
    tl.store(dA_ptr + d * N + n, dA, mask=nmask)
    if FIXED_BC:
        tl.store(dB_ptr + d * N + n, dB, mask=nmask)
        tl.store(dC_ptr + d * N + n, dC, mask=nmask)
    if HAS_D:
        tl.store(dD_ptr + d + two, rest, mask=two == 0)
    if HAS_BIAS:
        tl.store(dbias_ptr + d - 1 + two, rest, mask=two == 1)


@triton.jit
def selective_scan_bc_reduce_kernel(bc_ptr, dB_ptr, dC_ptr, parts, total, NL, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # bc_partial (parts, batch, groups, 2, N, L) summed over parts in order into dB / dC.
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    acc = tl.zeros([BLOCK], dtype=ACC)
    for k in range(0, parts):
        acc += tl.load(bc_ptr + k * total + i, mask=mask, other=0.0)
    bg = i // (2 * NL)
    which = (i // NL) % 2
    dst = bg * NL + i % NL
    tl.store(dB_ptr + dst, acc.to(dB_ptr.dtype.element_ty), mask=mask & (which == 0))
    tl.store(dC_ptr + dst, acc.to(dC_ptr.dtype.element_ty), mask=mask & (which == 1))


@triton.jit
def selective_state_update_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
                         dim, N, cpg, groups,
                         HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                         SOFTPLUS: tl.constexpr, EXP2: tl.constexpr, ACC: tl.constexpr,
                         BLOCK_D: tl.constexpr, NP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < dim
    n = tl.arange(0, NP)
    m2 = dmask[:, None] & (n < N)[None, :]
    raw = tl.load(dt_ptr + b * dim + d, mask=dmask, other=0.0).to(ACC)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + d, mask=dmask, other=0.0).to(ACC)
    if SOFTPLUS:
        delta = _softplus(raw)
    else:
        delta = raw
    x = tl.load(x_ptr + b * dim + d, mask=dmask, other=0.0).to(ACC)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=m2, other=0.0).to(ACC)
    if EXP2:
        a = tl.exp2(delta[:, None] * (A * LOG2E))
    else:
        a = tl.exp(delta[:, None] * A)
    bc = (b * groups + d // cpg)[:, None] * N + n[None, :]
    Bm = tl.load(B_ptr + bc, mask=m2, other=0.0).to(ACC)
    Cm = tl.load(C_ptr + bc, mask=m2, other=0.0).to(ACC)
    sp = state_ptr + (b * dim + d)[:, None] * N + n[None, :]
    h = a * tl.load(sp, mask=m2, other=0.0) + (delta * x)[:, None] * Bm
    tl.store(sp, h, mask=m2)
    y = tl.sum(tl.where(m2, h * Cm, 0.0), axis=1)
    if HAS_D:
        y += tl.load(D_ptr + d, mask=dmask, other=0.0).to(ACC) * x
    if HAS_Z:
        zz = tl.load(z_ptr + b * dim + d, mask=dmask, other=0.0).to(ACC)
        y = y * zz * _sigmoid(zz)
    tl.store(out_ptr + b * dim + d, y.to(out_ptr.dtype.element_ty), mask=dmask)


# ---- launchers ----------------------------------------------------------------------------------
def _sequence_maps(cu_seqlens, length, reverse):
    """(start, end): int32 (L,) maps over scan positions: the sequence whose first / last scan
    position this is, else -1. Device-side torch ops, no host sync."""
    t = torch.arange(length, device=cu_seqlens.device, dtype=torch.int64)
    cu = cu_seqlens.to(torch.int64)
    # The sequence holding t: the last i with cu[i] <= t (empty sequences share their offset).
    seq = torch.searchsorted(cu, t, right=True) - 1
    first = torch.where(t == cu[seq], seq, -1)
    last = torch.where(t == cu[seq + 1] - 1, seq, -1)
    if reverse:  # scan position s is t = L - 1 - s, and a sequence starts at its last t
        first, last = last.flip(0), first.flip(0)
    return first.to(torch.int32).contiguous(), last.to(torch.int32).contiguous()


def _common(u, A, B, cu_seqlens, reverse):
    batch, dim, length = u.shape
    dstate = A.shape[1]
    varying = B.dim() == 4
    groups = B.shape[1] if varying else 1
    if cu_seqlens is not None:
        start, end = _sequence_maps(cu_seqlens, length, reverse)
    else:
        start = end = u
    return batch, dim, length, dstate, varying, groups, start, end


def scan_segments(programs: int, num_warps: int, length: int):
    """(positions per segment, segments): the scan order cut into segments of whole chunks, at
    least as many as give the programs TARGET_WARPS (when L has that many chunks). The CUDA rule
    (scan_cuda_segments of selective_scan_params.h) rounds the segments' length up, in tiles of
    128; rounding it down here keeps launches from falling short of the target."""
    chunks = triton.cdiv(length, CHUNK)
    if chunks <= 1 or programs <= 0:
        return max(length, 1), 1
    want = min(max(triton.cdiv(TARGET_WARPS, programs * num_warps), 1), chunks)
    per = max(chunks // want, 1)
    return per * CHUNK, triton.cdiv(chunks, per)


def _segment_scratch(like, units, segments, dstate, acc):
    """(3, units, segments, N): the segments' maps (P, Q) and the value entering each; zeros when
    there is one segment, which then enters with 0 and keeps its carry there (backward)."""
    make = torch.zeros if segments == 1 else torch.empty
    return make((3, units, segments, dstate), dtype=acc, device=like.device)


def _compose(scratch, segments, right_to_left):
    units, dstate = scratch.shape[1], scratch.shape[3]
    block = 256
    wrap_triton(selective_scan_segments_kernel)[(triton.cdiv(units * dstate, block),)](
        scratch, units, segments, dstate, RIGHT_TO_LEFT=right_to_left, BLOCK=block)


def launch_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                          cu_seqlens, reverse, out, last_state, checkpoints):
    """Fills out (batch, dim, L), last_state (S, dim, N) and checkpoints (batch, dim, chunks, N):
    the carried state entering scan position k * 64, before the reset of a sequence starting there.
    When batch x dim programs leave the GPU short, the scan order is cut into segments (MODE 1:
    each segment's map; selective_scan_segments_kernel: the state entering each; MODE 2: the full pass)."""
    batch, dim, length, dstate, varying, groups, start, end = _common(u, A, B, cu_seqlens, reverse)
    np_, sub = state_block(dstate)
    acc = accumulator(u.dtype)
    warps = _warps(np_, sub, False)
    if batch * dim > 0 and length > 0:
        seg_len, segments = scan_segments(batch * dim, warps, length)
        scratch = _segment_scratch(u, batch * dim, segments, dstate, opmath_dtype(u.dtype)) \
            if segments > 1 else checkpoints

        def run(mode):
            wrap_triton(selective_scan_fwd_kernel)[(batch * dim, segments)](
                u, delta, z if z is not None else u, A, B, C, D if D is not None else A,
                delta_bias if delta_bias is not None else A, initial_state if initial_state is not None else A,
                start, end, out, last_state, checkpoints, scratch,
                dim, length, dstate, dim // groups, groups, checkpoints.shape[2], seg_len, segments,
                VARYING=varying, HAS_Z=z is not None, HAS_D=D is not None, HAS_BIAS=delta_bias is not None,
                HAS_H0=initial_state is not None, HAS_CU=cu_seqlens is not None, SOFTPLUS=bool(delta_softplus),
                REVERSE=bool(reverse), EXP2=u.dtype != torch.float64, ACC=acc, SUB=sub, NP=np_, CHUNK_=CHUNK,
                MODE=mode, num_warps=warps)

        if segments > 1:
            run(1)
            _compose(scratch, segments, False)
            run(2)
        else:
            run(0)
    _fill_empty(initial_state, last_state, cu_seqlens, length, dim * dstate)


def _fill_empty(src, dst, cu_seqlens, length, row_size):
    # Without cu_seqlens only L == 0 leaves sequences empty: known here without a device sync.
    if dst.shape[0] * row_size == 0 or (cu_seqlens is None and length > 0):
        return
    block = min(1024, triton.next_power_of_2(row_size))
    wrap_triton(selective_scan_fill_empty_kernel)[(dst.shape[0], triton.cdiv(row_size, block))](
        src if src is not None else dst, dst, cu_seqlens if cu_seqlens is not None else dst, length, row_size,
        HAS_SRC=src is not None, HAS_CU=cu_seqlens is not None, BLOCK=block)


def launch_selective_scan_backward(grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias,
                                   delta_softplus, initial_state, cu_seqlens, reverse, checkpoints,
                                   du, ddelta, dz, dA, dB, dC, dD, ddelta_bias, dinitial_state):
    """Gradients as in prepare_selective_scan_backward. Varying B / C: one program per (batch,
    group, partition) and segment, its dB / dC partial in bc_partial (partitions, batch, groups,
    2, N, L); fixed: one per (batch, channel) and segment. Every parameter sum goes through
    param_partial (segments, batch, dim, 3N + 2), added in order by selective_scan_param_reduce_kernel."""
    batch, dim, length, dstate, varying, groups, start, end = _common(u, A, B, cu_seqlens, reverse)
    np_, sub = state_block(dstate, backward=True)
    acc = accumulator(u.dtype)
    acc_dtype = opmath_dtype(u.dtype)
    warps = _warps(np_, sub, True)
    cpg = dim // groups
    # Varying: partitions of the channels per (b, g), each owning one dB / dC partial. Fixed: one
    # channel per program (the partials are per (b, d) anyway), as groups = 1, parts = dim.
    parts = backward_partitions(batch, groups, cpg, length, warps) if varying else dim
    programs = batch * groups * parts
    seg_len, segments = scan_segments(programs, warps, length) if length > 0 else (1, 1)
    param_partial = torch.zeros((segments, batch, dim, 3 * dstate + 2), dtype=acc_dtype, device=u.device)
    bc_partial = None
    if varying:
        make = torch.empty if batch * dim > 0 and length > 0 else torch.zeros
        bc_partial = make((parts, batch, groups, 2, dstate, length), dtype=acc_dtype, device=u.device)
    if batch * dim > 0 and length > 0:
        scratch = _segment_scratch(u, batch * dim, segments, dstate, acc_dtype)
        common = dict(VARYING=varying, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                      HAS_GLAST=grad_last_state is not None, HAS_CU=cu_seqlens is not None,
                      SOFTPLUS=bool(delta_softplus), REVERSE=bool(reverse), EXP2=u.dtype != torch.float64,
                      ACC=acc, SUB=sub, NP=np_, num_warps=warps)
        glast = grad_last_state if grad_last_state is not None else A
        zz = z if z is not None else u
        bias = delta_bias if delta_bias is not None else A
        if segments > 1:
            wrap_triton(selective_scan_flow_kernel)[(batch * dim, segments)](
                grad_out, glast, u, delta, zz, A, B, C, bias, start, end, scratch,
                dim, length, dstate, cpg, groups, seg_len, segments, **common)
            _compose(scratch, segments, True)
        wrap_triton(selective_scan_bwd_kernel)[(programs, segments)](
            grad_out, glast, u, delta, zz, A, B, C, D if D is not None else A, bias,
            initial_state if initial_state is not None else A, start, end, checkpoints, scratch,
            du, ddelta, dz if dz is not None else du, dinitial_state if dinitial_state is not None else A,
            param_partial, bc_partial if bc_partial is not None else A,
            batch, dim, length, dstate, cpg, groups, parts, checkpoints.shape[2], seg_len, segments,
            HAS_D=D is not None, HAS_H0=initial_state is not None, CHUNK_=CHUNK, **common)
    if dim > 0:
        wrap_triton(selective_scan_param_reduce_kernel)[(dim,)](
            param_partial, dA, dB, dC, dD if dD is not None else dA,
            ddelta_bias if ddelta_bias is not None else dA, segments * batch, dim, dstate,
            FIXED_BC=not varying, HAS_D=dD is not None, HAS_BIAS=ddelta_bias is not None, ACC=acc, NP=np_)
    if varying:
        total = batch * groups * 2 * dstate * length
        if total > 0:
            block = 1024
            wrap_triton(selective_scan_bc_reduce_kernel)[(triton.cdiv(total, block),)](
                bc_partial, dB, dC, bc_partial.shape[0], total, dstate * length, ACC=acc, BLOCK=block)
    if dinitial_state is not None:
        _fill_empty(grad_last_state, dinitial_state, cu_seqlens, length, dim * dstate)


def launch_selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, out):
    """One decode step: state (batch, dim, N) acc updated in place, out (batch, dim)."""
    batch, dim = x.shape
    dstate = A.shape[1]
    groups = B.shape[1]
    np_ = triton.next_power_of_2(max(dstate, 1))
    block_d = max(1, min(64, 2048 // np_, triton.next_power_of_2(max(dim, 1))))
    if batch * dim == 0:
        return
    wrap_triton(selective_state_update_kernel)[(batch, triton.cdiv(dim, block_d))](
        state, x, dt, A, B, C, D if D is not None else A, z if z is not None else x,
        dt_bias if dt_bias is not None else A, out, dim, dstate, dim // groups, groups,
        HAS_Z=z is not None, HAS_D=D is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        EXP2=x.dtype != torch.float64, ACC=accumulator(x.dtype), BLOCK_D=block_d, NP=np_)
