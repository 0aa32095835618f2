"""Triton kernels of the sparse message-passing family: CSR spmm and sddmm.

One program per (destination row, head, feature block): it walks the row's edges BLOCK_E at a
time, gathers a (BLOCK_E, BLOCK_F) tile of source features and reduces it in registers, then
writes its output block once. No atomics: deterministic for a given block configuration.
"""
import torch
import triton
import triton.language as tl

# Edges gathered per step: 32 rows of BLOCK_F features keep a tile within the register budget
# of 4 warps for BLOCK_F <= 128.
BLOCK_E = 32
# Feature block: 128 fp32 values are 512 contiguous bytes per gathered row (full sectors).
MAX_BLOCK_F = 128


def _accumulator(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def spmm_kernel(rowptr_ptr, col_ptr, weight_ptr, x_ptr, out_ptr,
                num_heads, num_features, x_row_stride, x_head_stride,
                weight_edge_stride, weight_head_stride,
                HAS_WEIGHT: tl.constexpr, MEAN: tl.constexpr, ACC: tl.constexpr,
                BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    features = tl.program_id(2) * BLOCK_F + tl.arange(0, BLOCK_F)
    feature_mask = features < num_features
    begin = tl.load(rowptr_ptr + row)
    end = tl.load(rowptr_ptr + row + 1)
    acc = tl.zeros([BLOCK_F], dtype=ACC)
    for edge0 in range(begin, end, BLOCK_E):
        edges = edge0 + tl.arange(0, BLOCK_E)
        edge_mask = edges < end
        src = tl.load(col_ptr + edges, mask=edge_mask, other=0).to(tl.int64)
        tile = tl.load(x_ptr + src[:, None] * x_row_stride + head * x_head_stride + features[None, :],
                       mask=edge_mask[:, None] & feature_mask[None, :], other=0.0).to(ACC)
        if HAS_WEIGHT:
            w = tl.load(weight_ptr + edges * weight_edge_stride + head * weight_head_stride,
                        mask=edge_mask, other=0.0).to(ACC)
            tile = tile * w[:, None]
        acc += tl.sum(tile, axis=0)
    if MEAN:
        acc = acc / tl.maximum(end - begin, 1).to(ACC)
    out = out_ptr + (row * num_heads + head) * num_features + features
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=feature_mask)


@triton.jit
def sddmm_kernel(rowptr_ptr, col_ptr, a_ptr, b_ptr, out_ptr,
                 num_heads, num_features, a_row_stride, a_head_stride, b_row_stride, b_head_stride,
                 ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    begin = tl.load(rowptr_ptr + row)
    end = tl.load(rowptr_ptr + row + 1)
    a_row = a_ptr + row * a_row_stride + head * a_head_stride
    for edge0 in range(begin, end, BLOCK_E):
        edges = edge0 + tl.arange(0, BLOCK_E)
        edge_mask = edges < end
        src = tl.load(col_ptr + edges, mask=edge_mask, other=0).to(tl.int64)
        dot = tl.zeros([BLOCK_E], dtype=ACC)
        for f0 in range(0, num_features, BLOCK_F):
            features = f0 + tl.arange(0, BLOCK_F)
            feature_mask = features < num_features
            a = tl.load(a_row + features, mask=feature_mask, other=0.0).to(ACC)
            b = tl.load(b_ptr + src[:, None] * b_row_stride + head * b_head_stride + features[None, :],
                        mask=edge_mask[:, None] & feature_mask[None, :], other=0.0).to(ACC)
            dot += tl.sum(b * a[None, :], axis=1)
        tl.store(out_ptr + edges * num_heads + head, dot.to(out_ptr.dtype.element_ty), mask=edge_mask)


def _feature_block(num_features: int) -> int:
    return max(16, min(MAX_BLOCK_F, triton.next_power_of_2(max(num_features, 1))))


def _node_head_feature(t: torch.Tensor) -> torch.Tensor:
    """(nodes, F) or (nodes, heads, F) as a (nodes, heads, F) view with unit feature stride."""
    v = t.unsqueeze(1) if t.dim() == 2 else t
    return v.contiguous() if v.shape[2] > 1 and v.stride(2) != 1 else v


def launch_spmm(wrap, rowptr, col, weight, x, reduce, out):
    """Fills out (contiguous, (num_rows, [heads,] F)); `wrap` is torch.library.wrap_triton."""
    xv = _node_head_feature(x)
    num_rows, heads, features = rowptr.numel() - 1, xv.shape[1], xv.shape[2]
    if num_rows == 0 or features == 0:
        return
    if weight is not None:
        weight = weight.contiguous()
        w_edge, w_head = (1, 0) if weight.dim() == 1 else (heads, 1)
    else:
        w_edge, w_head = 0, 0
    block_f = _feature_block(features)
    grid = (num_rows, heads, triton.cdiv(features, block_f))
    wrap(spmm_kernel)[grid](
        rowptr, col, weight if weight is not None else xv, xv, out,
        heads, features, xv.stride(0), xv.stride(1), w_edge, w_head,
        HAS_WEIGHT=weight is not None, MEAN=reduce == "mean", ACC=_accumulator(x.dtype),
        BLOCK_E=BLOCK_E, BLOCK_F=block_f)


def launch_sddmm(wrap, rowptr, col, a, b, out):
    av, bv = _node_head_feature(a), _node_head_feature(b)
    num_rows, heads, features = rowptr.numel() - 1, av.shape[1], av.shape[2]
    if num_rows == 0 or col.numel() == 0:
        return
    grid = (num_rows, heads)
    wrap(sddmm_kernel)[grid](
        rowptr, col, av, bv, out, heads, features,
        av.stride(0), av.stride(1), bv.stride(0), bv.stride(1),
        ACC=_accumulator(a.dtype), BLOCK_E=BLOCK_E, BLOCK_F=_feature_block(features))
