"""Triton kernels of the low-precision family: quantize, qlinear (W8A8 / W4A8) and qspmm.

Every kernel computes x / scale with div_rn (IEEE division; a plain `/` may lower to an
approximate division on GPUs) and rounds half to even with the 1.5 * 2^23 trick (adding it
leaves no fraction bits, so fp32 round-to-nearest-even does the rounding), so results agree
with the C++ kernels and the reference bit for bit.
"""
import torch
import triton
import triton.language as tl

from . import wrap_triton

# quantize: elements per program step.
QUANT_BLOCK = 256
# qlinear tiles: tl.dot on int8 needs every dimension >= 16; 32 x 32 x 32 keeps the
# interpreter fast on CPU and is a valid (if small) tensor-core tile on GPUs. On a GPU larger
# tiles would raise reuse; the device check measures before anyone tunes them.
BLOCK_M, BLOCK_N, BLOCK_K = 32, 32, 32
# qspmm: edges gathered per step and the feature block (int8: 128 bytes per gathered row).
BLOCK_E, MAX_BLOCK_F = 32, 128

_ACTIVATION_CODES = {"none": 0, "relu": 1, "gelu": 2, "silu": 3}
_REDUCE_CODES = {"sum": 0, "mean": 1, "max": 2, "min": 3}
_MAGIC = 12582912.0  # 1.5 * 2^23


@triton.jit
def _round_clamp(v, QMAX: tl.constexpr):
    r = (v + 12582912.0) - 12582912.0
    return tl.minimum(tl.maximum(r, -QMAX), QMAX)


@triton.jit
def absmax_scale_kernel(x_ptr, scale_ptr, outer, channels, inner, QMAX: tl.constexpr, BLOCK: tl.constexpr):
    """scale[c] = max |x[o, c, i]| / QMAX over (o, i); x viewed as (outer, channels, inner)."""
    c = tl.program_id(0).to(tl.int64)
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    total = outer * inner
    for t0 in range(0, total, BLOCK):
        t = t0 + tl.arange(0, BLOCK).to(tl.int64)
        o = t // inner
        i = t % inner
        v = tl.load(x_ptr + (o * channels + c) * inner + i, mask=t < total, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(v))
    tl.store(scale_ptr + c, tl.math.div_rn(tl.max(amax, axis=0), QMAX * 1.0))


@triton.jit
def _quantized_at(x_ptr, scale_ptr, row, j, mask, last_dim, channels, inner, QMAX: tl.constexpr):
    flat = row * last_dim + j
    s = tl.load(scale_ptr + (flat // inner) % channels, mask=mask, other=0.0)
    v = tl.load(x_ptr + flat, mask=mask, other=0.0).to(tl.float32)
    q = _round_clamp(tl.math.div_rn(v, tl.where(s > 0, s, 1.0)), QMAX)
    return tl.where(s > 0, q, 0.0).to(tl.int32)


@triton.jit
def quantize_kernel(x_ptr, scale_ptr, data_ptr, last_dim, row_bytes, channels, inner,
                    BITS: tl.constexpr, BLOCK: tl.constexpr):
    """One block of output bytes of one row (of the last dimension)."""
    row = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    bmask = b < row_bytes
    if BITS == 8:
        q = _quantized_at(x_ptr, scale_ptr, row, b, bmask, last_dim, channels, inner, 127)
        tl.store(data_ptr + row * row_bytes + b, q.to(tl.int8), mask=bmask)
    else:
        lo = _quantized_at(x_ptr, scale_ptr, row, 2 * b, bmask, last_dim, channels, inner, 7)
        hi = _quantized_at(x_ptr, scale_ptr, row, 2 * b + 1, bmask & (2 * b + 1 < last_dim), last_dim,
                           channels, inner, 7)
        byte = (lo & 0xF) | ((hi & 0xF) << 4)
        tl.store(data_ptr + row * row_bytes + b, byte.to(tl.uint8), mask=bmask)


def launch_quantize(x, bits, axis, data, scale):
    outer, channels, inner = 1, 1, x.numel()
    if axis is not None:
        channels = x.shape[axis]
        outer = 1
        for d in x.shape[:axis]:
            outer *= d
        inner = 1
        for d in x.shape[axis + 1:]:
            inner *= d
    qmax = 127 if bits == 8 else 7
    wrap_triton(absmax_scale_kernel)[(channels,)](x, scale, outer, channels, inner, QMAX=qmax, BLOCK=QUANT_BLOCK)
    last = x.shape[-1]
    rows = x.numel() // last if last else 0
    row_bytes = data.shape[-1]
    if rows and row_bytes:
        grid = (rows, triton.cdiv(row_bytes, QUANT_BLOCK))
        wrap_triton(quantize_kernel)[grid](x, scale, data, last, row_bytes, channels, inner, BITS=bits, BLOCK=QUANT_BLOCK)


@triton.jit
def qlinear_kernel(x_ptr, w_ptr, w_scale_ptr, bias_ptr, out_ptr, M, N, K, x_row_stride, w_row_stride,
                   W_INT4: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, INT_OUT: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) output tile: the rows' absmax over K, then int8 x int8 tl.dot
    with int32 accumulation (x quantized, int4 weights unpacked, in registers), then the epilogue."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_mask = rows < M
    col_mask = cols < N
    amax = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        v = tl.load(x_ptr + rows[:, None] * x_row_stride + ks[None, :],
                    mask=row_mask[:, None] & (ks[None, :] < K), other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.max(tl.abs(v), axis=1))
    sx = tl.math.div_rn(amax, 127.0)
    safe = tl.where(sx > 0, sx, 1.0)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        v = tl.load(x_ptr + rows[:, None] * x_row_stride + ks[None, :],
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        q = _round_clamp(tl.math.div_rn(v, safe[:, None]), 127)
        q = tl.where(sx[:, None] > 0, q, 0.0).to(tl.int8)
        w_mask = k_mask[:, None] & col_mask[None, :]
        if W_INT4:
            # Element k of a weight row is nibble k % 2 of byte k // 2 (low nibble first).
            packed = tl.load(w_ptr + cols[None, :] * w_row_stride + (ks[:, None] // 2), mask=w_mask,
                             other=0).to(tl.int32)
            nibble = (packed >> ((ks[:, None] % 2) * 4)) & 0xF
            w = ((nibble ^ 8) - 8).to(tl.int8)
        else:
            w = tl.load(w_ptr + cols[None, :] * w_row_stride + ks[:, None], mask=w_mask, other=0)
        acc += tl.dot(q, w, out_dtype=tl.int32)
    out_offsets = rows[:, None] * N + cols[None, :]
    out_mask = row_mask[:, None] & col_mask[None, :]
    if INT_OUT:
        tl.store(out_ptr + out_offsets, acc, mask=out_mask)
    else:
        sw = tl.load(w_scale_ptr + cols, mask=col_mask, other=0.0)
        y = acc.to(tl.float32) * sx[:, None] * sw[None, :]
        if HAS_BIAS:
            y = y + tl.load(bias_ptr + cols, mask=col_mask, other=0.0)[None, :]
        if ACTIVATION == 1:
            y = tl.maximum(y, 0.0)
        elif ACTIVATION == 2:
            y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
        elif ACTIVATION == 3:
            y = y / (1.0 + tl.exp(-y))
        tl.store(out_ptr + out_offsets, y.to(out_ptr.dtype.element_ty), mask=out_mask)


def launch_qlinear(x, w, w_scale, w_bits, in_features, bias, activation, out):
    if w_bits not in (8, 4):
        raise ValueError(f"qlinear_triton: w_bits must be 8 or 4, got {w_bits}")
    if x.dim() != 2 or x.shape[1] != in_features:
        raise ValueError(f"qlinear_triton: x must be (M, {in_features}), got {tuple(x.shape)}")
    if activation not in _ACTIVATION_CODES:
        raise ValueError(f"qlinear_triton: activation must be one of {tuple(_ACTIVATION_CODES)}, got {activation!r}")
    int_out = out.dtype == torch.int32
    if int_out and (bias is not None or activation != "none"):
        raise ValueError("qlinear_triton: out_dtype=int32 returns the raw accumulator: bias and activation must be None")
    M, K = x.shape
    N = w.shape[0]
    if M == 0 or N == 0:
        return
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))
    wrap_triton(qlinear_kernel)[grid](x, w, w_scale, bias if bias is not None else w_scale, out, M, N, K, x.stride(0),
                               w.stride(0), W_INT4=w_bits == 4, HAS_BIAS=bias is not None,
                               ACTIVATION=_ACTIVATION_CODES[activation], INT_OUT=int_out,
                               BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)


@triton.jit
def qspmm_kernel(rowptr_ptr, col_ptr, weight_ptr, x_ptr, scale_ptr, out_ptr, num_features, x_row_stride,
                 HAS_WEIGHT: tl.constexpr, REDUCE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    features = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    feature_mask = features < num_features
    begin = tl.load(rowptr_ptr + row)
    end = tl.load(rowptr_ptr + row + 1)
    sign = -1.0 if REDUCE == 3 else 1.0
    if REDUCE >= 2:
        acc = tl.full([BLOCK_F], float("-inf"), dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_F], dtype=tl.float32)
    for edge0 in range(begin, end, BLOCK_E):
        edges = edge0 + tl.arange(0, BLOCK_E)
        edge_mask = edges < end
        src = tl.load(col_ptr + edges, mask=edge_mask, other=0).to(tl.int64)
        coef = tl.load(scale_ptr + src, mask=edge_mask, other=0.0) * sign
        if HAS_WEIGHT:
            coef = coef * tl.load(weight_ptr + edges, mask=edge_mask, other=0.0)
        q = tl.load(x_ptr + src[:, None] * x_row_stride + features[None, :],
                    mask=edge_mask[:, None] & feature_mask[None, :], other=0).to(tl.float32)
        messages = coef[:, None] * q
        if REDUCE >= 2:
            acc = tl.maximum(acc, tl.max(tl.where(edge_mask[:, None], messages, float("-inf")), axis=0))
        else:
            acc += tl.sum(messages, axis=0)
    if REDUCE == 1:
        acc = acc / tl.maximum(end - begin, 1).to(tl.float32)
    if REDUCE >= 2:
        acc = tl.where(end > begin, acc * sign, 0.0)
    tl.store(out_ptr + row * num_features + features, acc, mask=feature_mask)


def launch_qspmm(rowptr, col, weight, x, x_scale, reduce, out):
    if reduce not in _REDUCE_CODES:
        raise ValueError(f"qspmm_triton: reduce must be one of {tuple(_REDUCE_CODES)}, got {reduce!r}")
    if x.dtype != torch.int8 or x_scale.dtype != torch.float32:
        raise ValueError(f"qspmm_triton: x must be int8 and x_scale float32, got {x.dtype} and {x_scale.dtype}")
    rows, features = out.shape
    if rows == 0 or features == 0:
        return
    block_f = min(MAX_BLOCK_F, triton.next_power_of_2(features))
    grid = (rows, triton.cdiv(features, block_f))
    wrap_triton(qspmm_kernel)[grid](rowptr, col, weight if weight is not None else x_scale, x, x_scale, out, features,
                             x.stride(0), HAS_WEIGHT=weight is not None, REDUCE=_REDUCE_CODES[reduce],
                             BLOCK_E=BLOCK_E, BLOCK_F=block_f)
