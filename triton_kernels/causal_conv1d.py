"""Triton kernels of the causal depthwise convolution (docs/causal_conv1d.md; the math and
layouts in csrc/include/scangraph/causal_conv1d_params.h, which the C++ and CUDA kernels share).

A program owns BLOCK positions of one (batch, channel) row: batch * dim * L / BLOCK programs, so
Mamba's shapes launch far more programs than the GPU's warps (the launch rules of docs/plan.md).
The width W <= 4 is a constexpr and the taps are unrolled. The backward recomputes the
pre-activation where it needs it rather than storing it, and writes one partial of the weight and
bias gradients per program, which the launcher sums in a fixed order (no atomics).
"""
import torch
import triton
import triton.language as tl

from scangraph.triton_kernels import wrap_triton
from scangraph.triton_kernels.accumulate import accumulator

BLOCK = 256  # positions per program (kConvGradBlock of the C++ kernels: the same partials)


@triton.jit
def _input(x_row, init_row, seq_row, s_l, pos, mask, W: tl.constexpr, HAS_SEQ: tl.constexpr,
           HAS_INIT: tl.constexpr, ACC: tl.constexpr):
    """x(pos) as the outputs whose sequence ids are s_l read it: 0 across sequences, the initial
    states before position 0."""
    inside = mask & (pos >= 0)
    v = tl.load(x_row + pos, mask=inside, other=0.0).to(ACC)
    if HAS_SEQ:
        v = tl.where(tl.load(seq_row + pos, mask=inside, other=0) == s_l, v, 0.0)
    if HAS_INIT:
        v += tl.load(init_row + (W - 1) + pos, mask=mask & (pos < 0), other=0.0).to(ACC)
    return v


@triton.jit
def _pre(x_row, init_row, seq_row, w_row, bias, l, mask, W: tl.constexpr, HAS_SEQ: tl.constexpr,
         HAS_INIT: tl.constexpr, ACC: tl.constexpr):
    """The pre-activation at positions l, and their sequence ids (0 without seq_idx)."""
    s_l = tl.load(seq_row + l, mask=mask, other=0) if HAS_SEQ else 0
    acc = tl.zeros(l.shape, ACC) + bias
    for j in tl.static_range(W):
        w = tl.load(w_row + j).to(ACC)
        acc += w * _input(x_row, init_row, seq_row, s_l, l - (W - 1) + j, mask, W, HAS_SEQ, HAS_INIT, ACC)
    return acc, s_l


@triton.jit
def _silu_grad(v):
    s = 1.0 / (1.0 + tl.exp(-v))
    return s * (1.0 + v * (1.0 - s))


@triton.jit
def _grad_pre(x_row, init_row, seq_row, w_row, bias, g_row, l, mask, W: tl.constexpr, HAS_SEQ: tl.constexpr,
              HAS_INIT: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr):
    """The gradient of the pre-activation at positions l (0 where masked), and their sequence ids."""
    go = tl.load(g_row + l, mask=mask, other=0.0).to(ACC)
    pre, s_l = _pre(x_row, init_row, seq_row, w_row, bias, l, mask, W, HAS_SEQ, HAS_INIT, ACC)
    if SILU:
        go = go * _silu_grad(pre)
    return go, s_l


@triton.jit
def _row(x_ptr, init_ptr, seq_ptr, w_ptr, bias_ptr, dim, L, W: tl.constexpr, HAS_BIAS: tl.constexpr,
         ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    b, d = row // dim, row % dim
    bias = tl.load(bias_ptr + d).to(ACC) if HAS_BIAS else 0.0
    return row, x_ptr + row * L, init_ptr + row * (W - 1), seq_ptr + b * L, w_ptr + d * W, bias


@triton.jit
def causal_conv1d_kernel(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, out_ptr, dim, L,
                         W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr,
                         SILU: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row, x_row, init_row, seq_row, w_row, bias = _row(x_ptr, init_ptr, seq_ptr, w_ptr, bias_ptr, dim, L, W,
                                                      HAS_BIAS, ACC)
    l = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = l < L
    v, _ = _pre(x_row, init_row, seq_row, w_row, bias, l, mask, W, HAS_SEQ, HAS_INIT, ACC)
    if SILU:
        v = v / (1.0 + tl.exp(-v))
    tl.store(out_ptr + row * L + l, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def causal_conv1d_backward_kernel(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, g_ptr, dx_ptr, dinit_ptr, partial_ptr,
                                  dim, L, W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr,
                                  HAS_INIT: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr,
                                  BLOCK: tl.constexpr):
    row, x_row, init_row, seq_row, w_row, bias = _row(x_ptr, init_ptr, seq_ptr, w_ptr, bias_ptr, dim, L, W,
                                                      HAS_BIAS, ACC)
    g_row = g_ptr + row * L
    blk = tl.program_id(1)
    t = blk * BLOCK + tl.arange(0, BLOCK)
    mask = t < L
    # x(t) feeds the outputs l = t + W - 1 - j through tap j, within its sequence.
    s_t = tl.load(seq_row + t, mask=mask, other=0) if HAS_SEQ else 0
    dx = tl.zeros((BLOCK,), ACC)
    for j in tl.static_range(W):
        l = t + (W - 1 - j)
        g, s_l = _grad_pre(x_row, init_row, seq_row, w_row, bias, g_row, l, mask & (l < L), W, HAS_SEQ, HAS_INIT,
                           SILU, ACC)
        if HAS_SEQ:
            g = tl.where(s_l == s_t, g, 0.0)
        dx += tl.load(w_row + j).to(ACC) * g
    tl.store(dx_ptr + row * L + t, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    g_t, _ = _grad_pre(x_row, init_row, seq_row, w_row, bias, g_row, t, mask, W, HAS_SEQ, HAS_INIT, SILU, ACC)
    part = partial_ptr + (row * tl.num_programs(1) + blk) * (W + 1)
    for j in tl.static_range(W):
        x_j = _input(x_row, init_row, seq_row, s_t, t - (W - 1) + j, mask, W, HAS_SEQ, HAS_INIT, ACC)
        tl.store(part + j, tl.sum(g_t * x_j, axis=0))
    tl.store(part + W, tl.sum(g_t, axis=0))
    if HAS_INIT:  # initial input i is x(i - (W - 1)), read by outputs l = i - j (in the first block)
        for i in tl.static_range(W - 1):
            s = tl.zeros((), ACC)
            for j in tl.static_range(i + 1):
                s += tl.load(w_row + j).to(ACC) * tl.sum(tl.where(t == i - j, g_t, 0.0), axis=0)
            tl.store(dinit_ptr + row * (W - 1) + i, s.to(dinit_ptr.dtype.element_ty), mask=blk == 0)


@triton.jit
def causal_conv1d_update_kernel(x_ptr, state_ptr, w_ptr, bias_ptr, cache_ptr, slot_ptr, out_ptr, dim, n, S,
                                W: tl.constexpr, HAS_BIAS: tl.constexpr, CIRCULAR: tl.constexpr,
                                HAS_SLOTS: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr,
                                BLOCK_D: tl.constexpr, NP: tl.constexpr, SP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < dim
    slot = tl.load(slot_ptr + b).to(tl.int64) if HAS_SLOTS else b
    live = slot >= 0  # a negative slot is a padding row: out 0, its state untouched
    # The write index in [0, S), also for a negative cache_seqlens (as torch.remainder).
    head = (tl.load(cache_ptr + b).to(tl.int64) % tl.maximum(S, 1) + S) % tl.maximum(S, 1) if CIRCULAR else 0
    state = state_ptr + (slot * dim + d[:, None]) * S
    x = x_ptr + (b * dim + d[:, None]) * n
    i = tl.arange(0, NP)[None, :]
    m = dmask[:, None] & (i < n)
    acc = tl.zeros((BLOCK_D, NP), ACC)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=dmask, other=0.0).to(ACC)[:, None]
    for j in tl.static_range(W):
        k = i - (W - 1) + j  # < 0: the state's input k before this call
        v = tl.load(x + k, mask=m & (k >= 0), other=0.0).to(ACC)
        at = (head + k + S) % tl.maximum(S, 1) if CIRCULAR else S + k
        v += tl.load(state + at, mask=m & (k < 0) & live, other=0.0).to(ACC)
        acc += tl.load(w_ptr + d * W + j, mask=dmask, other=0.0).to(ACC)[:, None] * v
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    acc = tl.where(live, acc, 0.0)
    tl.store(out_ptr + (b * dim + d[:, None]) * n + i, acc.to(out_ptr.dtype.element_ty), mask=m)
    # The new state, read whole before any of it is written.
    s = tl.arange(0, SP)[None, :]
    sm = dmask[:, None] & (s < S) & live
    if CIRCULAR:  # x_i goes to (head + i) % S; of several x on one index the last wins
        first = (s - head + S) % tl.maximum(S, 1)
        last = first + S * ((n - 1 - first) // tl.maximum(S, 1))
        new = tl.load(x + last, mask=sm & (first < n), other=0.0)
        old = tl.load(state + s, mask=sm & (first >= n), other=0.0)
        new = tl.where(first < n, new, old)
    else:  # shifted left by n, x filling the end
        new = tl.load(state + s + n, mask=sm & (s + n < S), other=0.0)
        new = tl.where(s + n < S, new, tl.load(x + s + n - S, mask=sm & (s + n >= S), other=0.0))
    tl.debug_barrier()
    tl.store(state + s, new, mask=sm)


def _flags(x, weight, bias, seq_idx, initial_states, silu):
    return dict(W=weight.shape[1], HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None,
                HAS_INIT=initial_states is not None, SILU=bool(silu), ACC=accumulator(x.dtype), BLOCK=BLOCK)


def launch_causal_conv1d(x, weight, bias, seq_idx, initial_states, silu, out):
    """x, out (batch, dim, L) contiguous; weight (dim, W) and bias acc; seq_idx int32."""
    batch, dim, length = x.shape
    if batch * dim * length == 0:
        return
    wrap_triton(causal_conv1d_kernel)[(batch * dim, triton.cdiv(length, BLOCK))](
        x, weight, bias if bias is not None else weight, seq_idx if seq_idx is not None else x,
        initial_states if initial_states is not None else x, out, dim, length,
        **_flags(x, weight, bias, seq_idx, initial_states, silu))


def launch_causal_conv1d_backward(x, weight, bias, seq_idx, initial_states, grad_out, silu, dx, dinit):
    """dx (batch, dim, L) and dinit (batch, dim, W - 1) in x's dtype; returns the weight and bias
    gradients (dim, W + 1) in acc: the programs' partials, summed over batch, then blocks."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    blocks = triton.cdiv(length, BLOCK)
    partial = torch.zeros(batch, dim, blocks, width + 1, dtype=weight.dtype, device=x.device)
    if batch * dim * length > 0:
        wrap_triton(causal_conv1d_backward_kernel)[(batch * dim, blocks)](
            x, weight, bias if bias is not None else weight, seq_idx if seq_idx is not None else x,
            initial_states if initial_states is not None else x, grad_out, dx,
            dinit if dinit is not None else dx, partial, dim, length,
            **_flags(x, weight, bias, seq_idx, initial_states, silu))
    elif dinit is not None:
        dinit.zero_()
    return partial.sum(dim=2).sum(dim=0)


def launch_causal_conv1d_update(x, conv_state, weight, bias, silu, cache_seqlens, conv_state_indices, out):
    """x, out (batch, dim, seqlen); conv_state (slots, dim, state_len) contiguous, updated in place."""
    batch, dim, seqlen = x.shape
    if batch * dim == 0:
        return
    block_d = max(1, min(64, triton.next_power_of_2(dim)))
    wrap_triton(causal_conv1d_update_kernel)[(batch, triton.cdiv(dim, block_d))](
        x, conv_state, weight, bias if bias is not None else weight,
        cache_seqlens if cache_seqlens is not None else x, conv_state_indices if conv_state_indices is not None else x,
        out, dim, seqlen, conv_state.shape[2], W=weight.shape[1], HAS_BIAS=bias is not None,
        CIRCULAR=cache_seqlens is not None, HAS_SLOTS=conv_state_indices is not None, SILU=bool(silu),
        ACC=accumulator(x.dtype), BLOCK_D=block_d, NP=triton.next_power_of_2(max(seqlen, 1)),
        SP=triton.next_power_of_2(max(conv_state.shape[2], 1)))
