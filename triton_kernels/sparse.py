"""Triton kernels of the sparse message-passing family: CSR spmm and sddmm.

One program per (destination row, head, feature block): it walks the row's edges BLOCK_E at a
time, gathers a (BLOCK_E, BLOCK_F) tile of source features and reduces it in registers, then
writes its output block once. No atomics: deterministic for a given block configuration.

spmm balances skewed rows: a row with more than SPLIT_EDGES edges is cut into segments of
SPLIT_EDGES edges, one program each (spmm_segment_kernel, spmm_extreme_segment_kernel) writing
an fp32 (fp64 for fp64) partial sum, or partial best and its edge for max / min; the row's
program then combines its partials in segment order, so a hub row runs in parallel and the
result is still the same on every run. The per-edge kernels (sddmm, dweight of max / min) give
each program BLOCK_E consecutive edges whatever their rows (found by binary search in rowptr),
which merges short rows and splits long ones alike.
"""
import torch
import triton
import triton.language as tl

from scangraph.ops._rules import opmath_dtype

from . import wrap_triton
from .accumulate import accumulator

from .philox import dropout_factor, dropout_scale, dropout_threshold

# Edges gathered per step: 32 rows of BLOCK_F features keep a tile within the register budget
# of 4 warps for BLOCK_F <= 128.
BLOCK_E = 32
# Feature block: 128 fp32 values are 512 contiguous bytes per gathered row (full sectors).
MAX_BLOCK_F = 128
# Rows with more edges than this are split into segments of this many edges (the CUDA backend's
# kSpmmSplitEdges, sparse_params.h, says why 256: 8 edge blocks per program hide the partial's
# write and re-read, < 2% extra traffic, while a 10^5-edge hub row spreads over 391 programs).
# Read at launch time, so tests may lower it to split small graphs.
SPLIT_EDGES = 256


@triton.jit
def _weighted_messages(edge0, end, col_ptr, weight_ptr, x_ptr, head, features, feature_mask,
                       x_row_stride, x_head_stride, weight_edge_stride, weight_head_stride,
                       HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr):
    """The block of edges [edge0, edge0 + BLOCK_E) of a row ending at `end`: (edge ids, their
    mask, the (BLOCK_E, BLOCK_F) tile of messages w_e * x[col[e], head, features])."""
    edges = edge0 + tl.arange(0, BLOCK_E)
    edge_mask = edges < end
    src = tl.load(col_ptr + edges, mask=edge_mask, other=0).to(tl.int64)
    tile = tl.load(x_ptr + src[:, None] * x_row_stride + head * x_head_stride + features[None, :],
                   mask=edge_mask[:, None] & feature_mask[None, :], other=0.0).to(ACC)
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + edges * weight_edge_stride + head * weight_head_stride,
                    mask=edge_mask, other=0.0).to(ACC)
        tile = tile * w[:, None]
    return edges, edge_mask, tile


@triton.jit
def _segment_span(segment, rowptr_ptr, segment_ptr, segment_row_ptr, num_rows, SPLIT_EDGES: tl.constexpr):
    """(row, begin, end) of segment slot `segment` of a split plan; a surplus slot (past the
    plan's real count, known on the device only) gets an empty span (its row, num_rows there,
    is clamped so that no read leaves rowptr)."""
    row = tl.minimum(tl.load(segment_row_ptr + segment), num_rows - 1)
    begin = tl.load(rowptr_ptr + row) + (segment - tl.load(segment_ptr + row)) * SPLIT_EDGES
    end = tl.minimum(begin + SPLIT_EDGES, tl.load(rowptr_ptr + row + 1))
    end = tl.where(segment < tl.load(segment_ptr + num_rows), end, begin)
    return row, begin, end


def _split_scratch(plan, shape, dtype, device):
    """Placeholders when there is no plan (the kernels then never read them)."""
    if plan is None:
        return torch.empty(0, dtype=dtype, device=device)
    return torch.empty((plan[2],) + tuple(shape), dtype=dtype, device=device)


@triton.jit
def spmm_kernel(rowptr_ptr, col_ptr, weight_ptr, x_ptr, out_ptr, segment_ptr, partial_ptr,
                num_heads, num_features, x_row_stride, x_head_stride,
                weight_edge_stride, weight_head_stride,
                HAS_WEIGHT: tl.constexpr, MEAN: tl.constexpr, SPLIT: tl.constexpr, ACC: tl.constexpr,
                BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    features = tl.program_id(2) * BLOCK_F + tl.arange(0, BLOCK_F)
    feature_mask = features < num_features
    begin = tl.load(rowptr_ptr + row)
    end = tl.load(rowptr_ptr + row + 1)
    acc = tl.zeros([BLOCK_F], dtype=ACC)
    edge_end = end
    if SPLIT:
        # A split row's edges were summed by spmm_segment_kernel: add its partials, in order.
        segment0 = tl.load(segment_ptr + row)
        segment1 = tl.load(segment_ptr + row + 1)
        edge_end = tl.where(segment1 > segment0, begin, end)
        for segment in range(segment0, segment1):
            acc += tl.load(partial_ptr + (segment * num_heads + head) * num_features + features,
                           mask=feature_mask, other=0.0)
    for edge0 in range(begin, edge_end, BLOCK_E):
        _, _, tile = _weighted_messages(edge0, end, col_ptr, weight_ptr, x_ptr, head, features, feature_mask,
                                        x_row_stride, x_head_stride, weight_edge_stride, weight_head_stride,
                                        HAS_WEIGHT, ACC, BLOCK_E)
        acc += tl.sum(tile, axis=0)
    if MEAN:
        acc = acc / tl.maximum(end - begin, 1).to(ACC)
    out = out_ptr + (row * num_heads + head) * num_features + features
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=feature_mask)


@triton.jit
def spmm_segment_kernel(rowptr_ptr, col_ptr, weight_ptr, x_ptr, segment_ptr, segment_row_ptr, partial_ptr,
                        num_rows, num_heads, num_features, x_row_stride, x_head_stride,
                        weight_edge_stride, weight_head_stride,
                        HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr, SPLIT_EDGES: tl.constexpr,
                        BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr):
    # One program per (segment slot, head, feature block); slots past the plan's real count
    # (known on the device only) do nothing.
    segment = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    features = tl.program_id(2) * BLOCK_F + tl.arange(0, BLOCK_F)
    feature_mask = features < num_features
    if segment < tl.load(segment_ptr + num_rows):
        row, begin, end = _segment_span(segment, rowptr_ptr, segment_ptr, segment_row_ptr, num_rows, SPLIT_EDGES)
        acc = tl.zeros([BLOCK_F], dtype=ACC)
        for edge0 in range(begin, end, BLOCK_E):
            _, _, tile = _weighted_messages(edge0, end, col_ptr, weight_ptr, x_ptr, head, features, feature_mask,
                                            x_row_stride, x_head_stride, weight_edge_stride, weight_head_stride,
                                            HAS_WEIGHT, ACC, BLOCK_E)
            acc += tl.sum(tile, axis=0)
        tl.store(partial_ptr + (segment * num_heads + head) * num_features + features, acc, mask=feature_mask)


@triton.jit
def _rows_of_edges(rowptr_ptr, num_rows, edges, search_steps):
    """The row owning each edge: the last r in [0, num_rows) with rowptr[r] <= e (empty rows
    before it share its rowptr value and lose), by a binary search of search_steps >=
    log2(num_rows) + 1 halvings; once hi = lo + 1, mid = lo and nothing moves."""
    lo = tl.zeros_like(edges)
    hi = lo + num_rows
    for _ in range(search_steps):
        mid = (lo + hi) // 2
        go = tl.load(rowptr_ptr + mid) <= edges
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid)
    return lo


def _search_steps(num_rows: int) -> int:
    return max(1, int(num_rows).bit_length())


@triton.jit
def sddmm_kernel(rowptr_ptr, col_ptr, a_ptr, b_ptr, out_ptr, num_rows, num_edges, search_steps,
                 num_heads, num_features, a_row_stride, a_head_stride, b_row_stride, b_head_stride,
                 ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr):
    # One program per (BLOCK_E consecutive edges, head), whatever rows the edges belong to.
    edges = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    head = tl.program_id(1).to(tl.int64)
    edge_mask = edges < num_edges
    rows = _rows_of_edges(rowptr_ptr, num_rows, edges, search_steps)
    src = tl.load(col_ptr + edges, mask=edge_mask, other=0).to(tl.int64)
    dot = tl.zeros([BLOCK_E], dtype=ACC)
    for f0 in range(0, num_features, BLOCK_F):
        features = f0 + tl.arange(0, BLOCK_F)
        mask = edge_mask[:, None] & (features < num_features)[None, :]
        a = tl.load(a_ptr + rows[:, None] * a_row_stride + head * a_head_stride + features[None, :],
                    mask=mask, other=0.0).to(ACC)
        b = tl.load(b_ptr + src[:, None] * b_row_stride + head * b_head_stride + features[None, :],
                    mask=mask, other=0.0).to(ACC)
        dot += tl.sum(a * b, axis=1)
    tl.store(out_ptr + edges * num_heads + head, dot.to(out_ptr.dtype.element_ty), mask=edge_mask)


def _feature_block(num_features: int) -> int:
    return max(16, min(MAX_BLOCK_F, triton.next_power_of_2(max(num_features, 1))))


def _node_head_feature(t: torch.Tensor) -> torch.Tensor:
    """(nodes, F) or (nodes, heads, F) as a (nodes, heads, F) view with unit feature stride."""
    v = t.unsqueeze(1) if t.dim() == 2 else t
    return v.contiguous() if v.shape[2] > 1 and v.stride(2) != 1 else v


def long_row_plan(rowptr: torch.Tensor, num_edges: int, split_edges: int):
    """The split plan of rows with more than split_edges edges, built on the device without a
    host sync: (segment_ptr (num_rows + 1,), segment_row (max_segments,), max_segments), or None
    when no row can be that long. Row i owns segments segment_ptr[i] .. segment_ptr[i + 1];
    segment s of row r = segment_row[s] starts at edge rowptr[r] + (s - segment_ptr[r]) *
    split_edges. max_segments = 2 E // (T + 1) bounds the real count segment_ptr[-1] (a row of
    d > T edges has ceil(d / T) <= (d + T - 1) / T <= 2 d / (T + 1) segments), so the launch
    needs no read of it."""
    if num_edges <= split_edges or rowptr.numel() < 2:
        return None
    max_segments = 2 * num_edges // (split_edges + 1)
    degree = rowptr[1:] - rowptr[:-1]
    counts = torch.where(degree > split_edges, (degree + split_edges - 1) // split_edges, 0)
    segment_ptr = torch.cat([rowptr.new_zeros(1), counts.cumsum(0)])
    # right=True: the last row whose first segment is <= s, skipping rows without segments.
    slots = torch.arange(max_segments, dtype=torch.int64, device=rowptr.device)
    segment_row = torch.searchsorted(segment_ptr, slots, right=True) - 1
    return segment_ptr, segment_row, max_segments


def launch_spmm(rowptr, col, weight, x, reduce, out):
    """Fills out (contiguous, (num_rows, [heads,] F))."""
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
    acc = accumulator(x.dtype)
    weight_arg = weight if weight is not None else xv
    plan = long_row_plan(rowptr, col.numel(), SPLIT_EDGES)
    partial = _split_scratch(plan, (heads, features), opmath_dtype(x.dtype), x.device)
    segment_ptr = rowptr if plan is None else plan[0]  # rowptr: a placeholder, unread without a plan
    if plan is not None:
        _, segment_row, max_segments = plan
        wrap_triton(spmm_segment_kernel)[(max_segments, heads, triton.cdiv(features, block_f))](
            rowptr, col, weight_arg, xv, segment_ptr, segment_row, partial,
            num_rows, heads, features, xv.stride(0), xv.stride(1), w_edge, w_head,
            HAS_WEIGHT=weight is not None, ACC=acc, SPLIT_EDGES=SPLIT_EDGES, BLOCK_E=BLOCK_E, BLOCK_F=block_f)
    grid = (num_rows, heads, triton.cdiv(features, block_f))
    wrap_triton(spmm_kernel)[grid](
        rowptr, col, weight_arg, xv, out, segment_ptr, partial,
        heads, features, xv.stride(0), xv.stride(1), w_edge, w_head,
        HAS_WEIGHT=weight is not None, MEAN=reduce == "mean", SPLIT=plan is not None, ACC=acc,
        BLOCK_E=BLOCK_E, BLOCK_F=block_f)


def launch_sddmm(rowptr, col, a, b, out):
    av, bv = _node_head_feature(a), _node_head_feature(b)
    num_rows, heads, features = rowptr.numel() - 1, av.shape[1], av.shape[2]
    num_edges = col.numel()
    if num_rows == 0 or num_edges == 0:
        return
    grid = (triton.cdiv(num_edges, BLOCK_E), heads)
    wrap_triton(sddmm_kernel)[grid](
        rowptr, col, av, bv, out, num_rows, num_edges, _search_steps(num_rows), heads, features,
        av.stride(0), av.stride(1), bv.stride(0), bv.stride(1),
        ACC=accumulator(a.dtype), BLOCK_E=BLOCK_E, BLOCK_F=_feature_block(features))


# ---- max / min and their backward -------------------------------------------------------------
@triton.jit
def _extreme_scan(begin, end, best, arg, col_ptr, weight_ptr, x_ptr, head, features, feature_mask,
                  x_row_stride, x_head_stride, weight_edge_stride, weight_head_stride,
                  HAS_WEIGHT: tl.constexpr, IS_MAX: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr):
    """Continues (best of sign * message, its edge) over edges [begin, end): a block replaces
    the running best only when strictly larger, so the first edge wins ties; the first edge is
    always taken (arg < 0). Min is max of the negated messages (negation is exact)."""
    sign = 1.0 if IS_MAX else -1.0
    for edge0 in range(begin, end, BLOCK_E):
        edges, edge_mask, tile = _weighted_messages(
            edge0, end, col_ptr, weight_ptr, x_ptr, head, features, feature_mask, x_row_stride,
            x_head_stride, weight_edge_stride, weight_head_stride, HAS_WEIGHT, ACC, BLOCK_E)
        tile = tl.where(edge_mask[:, None], tile * sign, float("-inf"))
        tile_best = tl.max(tile, axis=0)
        # The first edge of this block reaching the block's best.
        candidates = tl.where((tile == tile_best[None, :]) & edge_mask[:, None], edges[:, None],
                              end + BLOCK_E)
        tile_arg = tl.min(candidates, axis=0)
        better = (tile_best > best) | ((arg < 0) & (tile_arg < end))
        best = tl.where(better, tile_best, best)
        arg = tl.where(better, tile_arg, arg)
    return best, arg


@triton.jit
def spmm_extreme_kernel(rowptr_ptr, col_ptr, weight_ptr, x_ptr, out_ptr, arg_ptr, segment_ptr, partial_ptr,
                        partial_arg_ptr, num_heads, num_features, x_row_stride, x_head_stride,
                        weight_edge_stride, weight_head_stride,
                        HAS_WEIGHT: tl.constexpr, IS_MAX: tl.constexpr, SPLIT: tl.constexpr, ACC: tl.constexpr,
                        BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr):
    sign = 1.0 if IS_MAX else -1.0
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    features = tl.program_id(2) * BLOCK_F + tl.arange(0, BLOCK_F)
    feature_mask = features < num_features
    begin = tl.load(rowptr_ptr + row)
    end = tl.load(rowptr_ptr + row + 1)
    best = tl.full([BLOCK_F], float("-inf"), dtype=ACC)
    arg = tl.full([BLOCK_F], -1, dtype=tl.int64)
    edge_end = end
    if SPLIT:
        # A split row was scanned by spmm_extreme_segment_kernel: combine its segments in order
        # with the same strict comparison, which picks the edge a single pass would.
        segment0 = tl.load(segment_ptr + row)
        segment1 = tl.load(segment_ptr + row + 1)
        edge_end = tl.where(segment1 > segment0, begin, end)
        for segment in range(segment0, segment1):
            offsets = (segment * num_heads + head) * num_features + features
            part = tl.load(partial_ptr + offsets, mask=feature_mask, other=float("-inf"))
            part_arg = tl.load(partial_arg_ptr + offsets, mask=feature_mask, other=-1)
            better = (part > best) | ((arg < 0) & (part_arg >= 0))
            best = tl.where(better, part, best)
            arg = tl.where(better, part_arg, arg)
    best, arg = _extreme_scan(begin, edge_end, best, arg, col_ptr, weight_ptr, x_ptr, head, features, feature_mask,
                              x_row_stride, x_head_stride, weight_edge_stride, weight_head_stride,
                              HAS_WEIGHT, IS_MAX, ACC, BLOCK_E)
    offsets = (row * num_heads + head) * num_features + features
    out = tl.where(arg >= 0, best * sign, 0.0)
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=feature_mask)
    tl.store(arg_ptr + offsets, arg, mask=feature_mask)


@triton.jit
def spmm_extreme_segment_kernel(rowptr_ptr, col_ptr, weight_ptr, x_ptr, segment_ptr, segment_row_ptr, partial_ptr,
                                partial_arg_ptr, num_rows, num_heads, num_features, x_row_stride, x_head_stride,
                                weight_edge_stride, weight_head_stride,
                                HAS_WEIGHT: tl.constexpr, IS_MAX: tl.constexpr, ACC: tl.constexpr,
                                SPLIT_EDGES: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr):
    # One program per (segment slot, head, feature block), as spmm_segment_kernel.
    segment = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    features = tl.program_id(2) * BLOCK_F + tl.arange(0, BLOCK_F)
    feature_mask = features < num_features
    if segment < tl.load(segment_ptr + num_rows):
        row, begin, end = _segment_span(segment, rowptr_ptr, segment_ptr, segment_row_ptr, num_rows, SPLIT_EDGES)
        best = tl.full([BLOCK_F], float("-inf"), dtype=ACC)
        arg = tl.full([BLOCK_F], -1, dtype=tl.int64)
        best, arg = _extreme_scan(begin, end, best, arg, col_ptr, weight_ptr, x_ptr, head, features, feature_mask,
                                  x_row_stride, x_head_stride, weight_edge_stride, weight_head_stride,
                                  HAS_WEIGHT, IS_MAX, ACC, BLOCK_E)
        offsets = (segment * num_heads + head) * num_features + features
        tl.store(partial_ptr + offsets, best, mask=feature_mask)
        tl.store(partial_arg_ptr + offsets, arg, mask=feature_mask)


@triton.jit
def _arg_dx_sum(begin, end, col_t_ptr, perm_t_ptr, weight_ptr, grad_ptr, arg_ptr, head, num_heads, num_features,
                features, feature_mask, weight_edge_stride, weight_head_stride,
                HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr):
    """Sum over transpose entries [begin, end) of a source of the gradients its edges won."""
    acc = tl.zeros([BLOCK_F], dtype=ACC)
    for k0 in range(begin, end, BLOCK_E):
        ks = k0 + tl.arange(0, BLOCK_E)
        k_mask = ks < end
        edge = tl.load(perm_t_ptr + ks, mask=k_mask, other=-2)
        dst = tl.load(col_t_ptr + ks, mask=k_mask, other=0).to(tl.int64)
        offsets = (dst[:, None] * num_heads + head) * num_features + features[None, :]
        mask = k_mask[:, None] & feature_mask[None, :]
        won = tl.load(arg_ptr + offsets, mask=mask, other=-1) == edge[:, None]
        grad = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(ACC)
        if HAS_WEIGHT:
            w = tl.load(weight_ptr + edge * weight_edge_stride + head * weight_head_stride,
                        mask=k_mask, other=0.0).to(ACC)
            grad = grad * w[:, None]
        acc += tl.sum(tl.where(won & mask, grad, 0.0), axis=0)
    return acc


@triton.jit
def spmm_arg_dx_kernel(rowptr_t_ptr, col_t_ptr, perm_t_ptr, weight_ptr, grad_ptr, arg_ptr, dx_ptr,
                       segment_ptr, segment_row_ptr, partial_ptr, num_src,
                       num_heads, num_features, weight_edge_stride, weight_head_stride,
                       SEGMENTS: tl.constexpr, SPLIT: tl.constexpr, HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr,
                       SPLIT_EDGES: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr):
    # Source j walks its out-edges on the transpose and collects the gradients it won. SEGMENTS:
    # one program per segment of a long transpose row, into partial; SPLIT: a source with
    # segments adds their partials in order instead.
    item = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    features = tl.program_id(2) * BLOCK_F + tl.arange(0, BLOCK_F)
    feature_mask = features < num_features
    if SEGMENTS:
        _, begin, end = _segment_span(item, rowptr_t_ptr, segment_ptr, segment_row_ptr, num_src, SPLIT_EDGES)
        acc = _arg_dx_sum(begin, end, col_t_ptr, perm_t_ptr, weight_ptr, grad_ptr, arg_ptr, head, num_heads,
                          num_features, features, feature_mask, weight_edge_stride, weight_head_stride,
                          HAS_WEIGHT, ACC, BLOCK_E, BLOCK_F)
        tl.store(partial_ptr + (item * num_heads + head) * num_features + features, acc, mask=feature_mask)
    else:
        begin = tl.load(rowptr_t_ptr + item)
        end = tl.load(rowptr_t_ptr + item + 1)
        acc = tl.zeros([BLOCK_F], dtype=ACC)
        if SPLIT:
            segment0 = tl.load(segment_ptr + item)
            segment1 = tl.load(segment_ptr + item + 1)
            end = tl.where(segment1 > segment0, begin, end)
            for segment in range(segment0, segment1):
                acc += tl.load(partial_ptr + (segment * num_heads + head) * num_features + features,
                               mask=feature_mask, other=0.0)
        acc += _arg_dx_sum(begin, end, col_t_ptr, perm_t_ptr, weight_ptr, grad_ptr, arg_ptr, head, num_heads,
                           num_features, features, feature_mask, weight_edge_stride, weight_head_stride,
                           HAS_WEIGHT, ACC, BLOCK_E, BLOCK_F)
        tl.store(dx_ptr + (item * num_heads + head) * num_features + features,
                 acc.to(dx_ptr.dtype.element_ty), mask=feature_mask)


@triton.jit
def spmm_arg_dweight_kernel(rowptr_ptr, col_ptr, x_ptr, grad_ptr, arg_ptr, dweight_ptr,
                            num_rows, num_edges, search_steps, num_heads, num_features, x_row_stride, x_head_stride,
                            ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr):
    # dweight[e, h]: grad . x[col[e]] over the features where edge e won; one program per
    # (BLOCK_E consecutive edges, head), as sddmm_kernel.
    edges = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    head = tl.program_id(1).to(tl.int64)
    edge_mask = edges < num_edges
    rows = _rows_of_edges(rowptr_ptr, num_rows, edges, search_steps)
    row_offset = (rows * num_heads + head) * num_features
    src = tl.load(col_ptr + edges, mask=edge_mask, other=0).to(tl.int64)
    dot = tl.zeros([BLOCK_E], dtype=ACC)
    for f0 in range(0, num_features, BLOCK_F):
        features = f0 + tl.arange(0, BLOCK_F)
        mask = edge_mask[:, None] & (features < num_features)[None, :]
        offsets = row_offset[:, None] + features[None, :]
        arg = tl.load(arg_ptr + offsets, mask=mask, other=-1)
        grad = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(ACC)
        x = tl.load(x_ptr + src[:, None] * x_row_stride + head * x_head_stride + features[None, :],
                    mask=mask, other=0.0).to(ACC)
        dot += tl.sum(tl.where((arg == edges[:, None]) & mask, x * grad, 0.0), axis=1)
    tl.store(dweight_ptr + edges * num_heads + head, dot.to(dweight_ptr.dtype.element_ty), mask=edge_mask)


def _weight_strides(weight, heads):
    if weight is None:
        return None, 0, 0
    weight = weight.contiguous()
    return (weight, 1, 0) if weight.dim() == 1 else (weight, heads, 1)


def launch_spmm_extreme(rowptr, col, weight, x, reduce, out, arg):
    xv = _node_head_feature(x)
    num_rows, heads, features = rowptr.numel() - 1, xv.shape[1], xv.shape[2]
    if num_rows == 0 or features == 0:
        return
    weight, w_edge, w_head = _weight_strides(weight, heads)
    weight_arg = weight if weight is not None else xv
    block_f = _feature_block(features)
    acc = accumulator(x.dtype)
    plan = long_row_plan(rowptr, col.numel(), SPLIT_EDGES)
    partial = _split_scratch(plan, (heads, features), opmath_dtype(x.dtype), x.device)
    partial_arg = _split_scratch(plan, (heads, features), torch.int64, x.device)
    segment_ptr = rowptr if plan is None else plan[0]  # rowptr: a placeholder, unread without a plan
    if plan is not None:
        _, segment_row, max_segments = plan
        wrap_triton(spmm_extreme_segment_kernel)[(max_segments, heads, triton.cdiv(features, block_f))](
            rowptr, col, weight_arg, xv, segment_ptr, segment_row, partial, partial_arg,
            num_rows, heads, features, xv.stride(0), xv.stride(1), w_edge, w_head,
            HAS_WEIGHT=weight is not None, IS_MAX=reduce == "max", ACC=acc, SPLIT_EDGES=SPLIT_EDGES,
            BLOCK_E=BLOCK_E, BLOCK_F=block_f)
    wrap_triton(spmm_extreme_kernel)[(num_rows, heads, triton.cdiv(features, block_f))](
        rowptr, col, weight_arg, xv, out, arg, segment_ptr, partial, partial_arg,
        heads, features, xv.stride(0), xv.stride(1), w_edge, w_head,
        HAS_WEIGHT=weight is not None, IS_MAX=reduce == "max", SPLIT=plan is not None, ACC=acc,
        BLOCK_E=BLOCK_E, BLOCK_F=block_f)


def launch_spmm_arg_backward(rowptr, col, rowptr_t, col_t, perm_t, weight, x, grad, arg, dx, dweight):
    xv = _node_head_feature(x)
    num_src, heads, features = xv.shape
    if features == 0:
        if dweight is not None:
            dweight.zero_()
        return
    weight, w_edge, w_head = _weight_strides(weight, heads)
    block_f = _feature_block(features)
    if num_src:
        plan = long_row_plan(rowptr_t, col_t.numel(), SPLIT_EDGES)
        partial = _split_scratch(plan, (heads, features), opmath_dtype(x.dtype), x.device)
        segment_ptr, segment_row = (rowptr_t, rowptr_t) if plan is None else plan[:2]
        args = (rowptr_t, col_t, perm_t, weight if weight is not None else grad, grad, arg, dx,
                segment_ptr, segment_row, partial, num_src, heads, features, w_edge, w_head)
        config = dict(HAS_WEIGHT=weight is not None, ACC=accumulator(x.dtype), SPLIT_EDGES=SPLIT_EDGES,
                      BLOCK_E=BLOCK_E, BLOCK_F=block_f)
        if plan is not None:
            wrap_triton(spmm_arg_dx_kernel)[(plan[2], heads, triton.cdiv(features, block_f))](
                *args, SEGMENTS=True, SPLIT=False, **config)
        wrap_triton(spmm_arg_dx_kernel)[(num_src, heads, triton.cdiv(features, block_f))](
            *args, SEGMENTS=False, SPLIT=plan is not None, **config)
    if dweight is not None and rowptr.numel() > 1 and col.numel():
        num_rows = rowptr.numel() - 1
        wrap_triton(spmm_arg_dweight_kernel)[(triton.cdiv(col.numel(), BLOCK_E), heads)](
            rowptr, col, xv, grad, arg, dweight, num_rows, col.numel(), _search_steps(num_rows), heads, features,
            xv.stride(0), xv.stride(1),
            ACC=accumulator(x.dtype), BLOCK_E=BLOCK_E, BLOCK_F=block_f)


# ---- GAT aggregation ------------------------------------------------------------------------
@triton.jit
def _leaky_relu(v, slope):
    return tl.where(v > 0, v, v * slope)


@triton.jit
def _gat_online(begin, end, m, c, acc, col_ptr, x_ptr, a_src_ptr, a_dst, head, num_heads, num_features,
                features, feature_mask, negative_slope, rng_ptr, threshold, scale,
                DROPOUT: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr):
    """Online softmax over edges [begin, end), continuing (max m, denominator c, sum acc): when
    the running max grows, the sums so far are rescaled by exp(old max - new max). With
    DROPOUT, each (edge, head) weight in the sum is multiplied by its dropout factor (0 or
    1 / (1 - p)); the denominator keeps every edge."""
    for edge0 in range(begin, end, BLOCK_E):
        edges = edge0 + tl.arange(0, BLOCK_E)
        edge_mask = edges < end
        src = tl.load(col_ptr + edges, mask=edge_mask, other=0).to(tl.int64)
        a_src = tl.load(a_src_ptr + src * num_heads + head, mask=edge_mask, other=0.0).to(ACC)
        scores = tl.where(edge_mask, _leaky_relu(a_src + a_dst, negative_slope), float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=0))
        # Scores of -inf (an alpha of -inf) weigh 0, even while the running max is -inf too.
        rescale = tl.where(m == m_new, 1.0, tl.exp(m - m_new))
        w = tl.where(edge_mask & (scores != float("-inf")), tl.exp(scores - m_new), 0.0)
        tile = tl.load(x_ptr + (src[:, None] * num_heads + head) * num_features + features[None, :],
                       mask=edge_mask[:, None] & feature_mask[None, :], other=0.0).to(ACC)
        c = c * rescale + tl.sum(w, axis=0)
        if DROPOUT:
            w = w * dropout_factor(rng_ptr, edges.to(tl.int64) * num_heads + head, threshold, scale)
        acc = acc * rescale + tl.sum(w[:, None] * tile, axis=0)
        m = m_new
    return m, c, acc


@triton.jit
def gat_kernel(rowptr_ptr, col_ptr, x_ptr, a_src_ptr, a_dst_ptr, out_ptr, max_ptr, sum_ptr,
               segment_ptr, partial_ptr, stats_ptr, num_heads, num_features, scalars_ptr, rng_ptr, threshold,
               SPLIT: tl.constexpr, DROPOUT: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr,
               BLOCK_F: tl.constexpr):
    # One program per (row, head, feature block).
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    fblock = tl.program_id(2)
    features = fblock * BLOCK_F + tl.arange(0, BLOCK_F)
    feature_mask = features < num_features
    begin = tl.load(rowptr_ptr + row)
    end = tl.load(rowptr_ptr + row + 1)
    a_dst = tl.load(a_dst_ptr + row * num_heads + head).to(ACC)
    negative_slope = tl.load(scalars_ptr)
    scale = tl.load(scalars_ptr + 1)
    m = tl.full([1], float("-inf"), dtype=ACC)
    c = tl.zeros([1], dtype=ACC)
    acc = tl.zeros([BLOCK_F], dtype=ACC)
    edge_end = end
    if SPLIT:
        # A split row was reduced by gat_segment_kernel: bring its segments' sums to the common
        # max, in segment order.
        segment0 = tl.load(segment_ptr + row)
        segment1 = tl.load(segment_ptr + row + 1)
        edge_end = tl.where(segment1 > segment0, begin, end)
        for segment in range(segment0, segment1):
            stat = (segment * num_heads + head) * 2 + tl.arange(0, 1)
            ms = tl.load(stats_ptr + stat)
            cs = tl.load(stats_ptr + stat + 1)
            m_new = tl.maximum(m, ms)
            keep = tl.where(m == m_new, 1.0, tl.exp(m - m_new))
            take = tl.where(ms == m_new, 1.0, tl.exp(ms - m_new))
            part = tl.load(partial_ptr + (segment * num_heads + head) * num_features + features,
                           mask=feature_mask, other=0.0)
            c = c * keep + cs * take
            acc = acc * keep + part * take
            m = m_new
    m, c, acc = _gat_online(begin, edge_end, m, c, acc, col_ptr, x_ptr, a_src_ptr, a_dst, head, num_heads,
                            num_features, features, feature_mask, negative_slope, rng_ptr, threshold, scale,
                            DROPOUT, ACC, BLOCK_E)
    out = tl.where(c > 0, acc / tl.where(c > 0, c, 1.0), 0.0)
    tl.store(out_ptr + (row * num_heads + head) * num_features + features,
             out.to(out_ptr.dtype.element_ty), mask=feature_mask)
    if fblock == 0:
        stat = row * num_heads + head + tl.arange(0, 1)
        tl.store(max_ptr + stat, m)
        tl.store(sum_ptr + stat, c)


@triton.jit
def gat_segment_kernel(rowptr_ptr, col_ptr, x_ptr, a_src_ptr, a_dst_ptr, segment_ptr, segment_row_ptr,
                       partial_ptr, stats_ptr, num_rows, num_heads, num_features, scalars_ptr, rng_ptr, threshold,
                       DROPOUT: tl.constexpr, ACC: tl.constexpr, SPLIT_EDGES: tl.constexpr, BLOCK_E: tl.constexpr,
                       BLOCK_F: tl.constexpr):
    # One program per (segment slot, head, feature block): the segment's own max, denominator
    # and unnormalised sum.
    segment = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    fblock = tl.program_id(2)
    features = fblock * BLOCK_F + tl.arange(0, BLOCK_F)
    feature_mask = features < num_features
    if segment < tl.load(segment_ptr + num_rows):
        row, begin, end = _segment_span(segment, rowptr_ptr, segment_ptr, segment_row_ptr, num_rows, SPLIT_EDGES)
        a_dst = tl.load(a_dst_ptr + row * num_heads + head).to(ACC)
        m = tl.full([1], float("-inf"), dtype=ACC)
        c = tl.zeros([1], dtype=ACC)
        acc = tl.zeros([BLOCK_F], dtype=ACC)
        m, c, acc = _gat_online(begin, end, m, c, acc, col_ptr, x_ptr, a_src_ptr, a_dst, head, num_heads,
                                num_features, features, feature_mask, tl.load(scalars_ptr), rng_ptr, threshold,
                                tl.load(scalars_ptr + 1), DROPOUT, ACC, BLOCK_E)
        tl.store(partial_ptr + (segment * num_heads + head) * num_features + features, acc, mask=feature_mask)
        if fblock == 0:
            stat = (segment * num_heads + head) * 2 + tl.arange(0, 1)
            tl.store(stats_ptr + stat, m)
            tl.store(stats_ptr + stat + 1, c)


@triton.jit
def _gat_edge_terms(i, j, edge, head, num_heads, num_features, a_src_ptr, a_dst_ptr, max_ptr, sum_ptr,
                    delta_ptr, x_ptr, grad_ptr, mask, negative_slope, rng_ptr, threshold, scale,
                    DROPOUT: tl.constexpr, ACC: tl.constexpr, BLOCK_F: tl.constexpr):
    """(k_ij p_ij, ds_ij) for a block of edges j -> i (CSR ids `edge`) of one head, k_ij their
    dropout factor (1 without dropout): ds_ij = p_ij (k_ij x_j . grad_i - delta_i) lrelu'.
    Masked edges give 0."""
    raw = (tl.load(a_src_ptr + j * num_heads + head, mask=mask, other=0.0).to(ACC)
           + tl.load(a_dst_ptr + i * num_heads + head, mask=mask, other=0.0).to(ACC))
    stat = i * num_heads + head
    row_max = tl.load(max_ptr + stat, mask=mask, other=0.0)
    row_sum = tl.load(sum_ptr + stat, mask=mask, other=1.0)
    prob = tl.where(mask, tl.exp(_leaky_relu(raw, negative_slope) - row_max) / row_sum, 0.0)
    dot = tl.zeros(prob.shape, dtype=ACC)
    for f0 in range(0, num_features, BLOCK_F):
        features = f0 + tl.arange(0, BLOCK_F)
        fmask = mask[:, None] & (features < num_features)[None, :]
        xv = tl.load(x_ptr + (j[:, None] * num_heads + head) * num_features + features[None, :],
                     mask=fmask, other=0.0).to(ACC)
        gv = tl.load(grad_ptr + (i[:, None] * num_heads + head) * num_features + features[None, :],
                     mask=fmask, other=0.0).to(ACC)
        dot += tl.sum(xv * gv, axis=1)
    delta = tl.load(delta_ptr + stat, mask=mask, other=0.0)
    if DROPOUT:
        factor = dropout_factor(rng_ptr, edge * num_heads + head, threshold, scale)
        ds = prob * (dot * factor - delta) * tl.where(raw > 0, 1.0, negative_slope)
        return prob * factor, ds
    ds = prob * (dot - delta) * tl.where(raw > 0, 1.0, negative_slope)
    return prob, ds


@triton.jit
def _gat_dst_sum(row, begin, end, head, num_heads, num_features, col_ptr, a_src_ptr, a_dst_ptr, max_ptr, sum_ptr,
                 delta_ptr, x_ptr, grad_ptr, negative_slope, rng_ptr, threshold, scale,
                 DROPOUT: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr):
    """sum of ds_ij over the edges [begin, end) of row i."""
    total = tl.zeros([BLOCK_E], dtype=ACC)
    for edge0 in range(begin, end, BLOCK_E):
        edges = edge0 + tl.arange(0, BLOCK_E)
        mask = edges < end
        src = tl.load(col_ptr + edges, mask=mask, other=0).to(tl.int64)
        dst = tl.zeros([BLOCK_E], dtype=tl.int64) + row
        prob, ds = _gat_edge_terms(dst, src, edges.to(tl.int64), head, num_heads, num_features, a_src_ptr,
                                   a_dst_ptr, max_ptr, sum_ptr, delta_ptr, x_ptr, grad_ptr, mask, negative_slope,
                                   rng_ptr, threshold, scale, DROPOUT, ACC, BLOCK_F)
        total += ds
    return tl.sum(total, axis=0)


@triton.jit
def gat_dst_grad_kernel(rowptr_ptr, col_ptr, x_ptr, a_src_ptr, a_dst_ptr, max_ptr, sum_ptr, delta_ptr,
                        grad_ptr, da_dst_ptr, segment_ptr, segment_row_ptr, partial_ptr, num_rows,
                        num_heads, num_features, scalars_ptr, rng_ptr, threshold,
                        SEGMENTS: tl.constexpr, SPLIT: tl.constexpr, DROPOUT: tl.constexpr, ACC: tl.constexpr,
                        SPLIT_EDGES: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr):
    # dalpha_dst[i] = sum_j ds_ij. SEGMENTS: one program per segment of a long row, into
    # partial; SPLIT: a row with segments adds their partials in order instead.
    negative_slope = tl.load(scalars_ptr)
    scale = tl.load(scalars_ptr + 1)
    item = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    if SEGMENTS:
        row, begin, end = _segment_span(item, rowptr_ptr, segment_ptr, segment_row_ptr, num_rows, SPLIT_EDGES)
        result = _gat_dst_sum(row, begin, end, head, num_heads, num_features, col_ptr, a_src_ptr, a_dst_ptr,
                              max_ptr, sum_ptr, delta_ptr, x_ptr, grad_ptr, negative_slope, rng_ptr, threshold, scale,
                              DROPOUT, ACC, BLOCK_E, BLOCK_F)
        tl.store(partial_ptr + item * num_heads + head + tl.arange(0, 1), result + tl.zeros([1], dtype=ACC))
    else:
        begin = tl.load(rowptr_ptr + item)
        end = tl.load(rowptr_ptr + item + 1)
        result = tl.zeros([1], dtype=ACC)
        if SPLIT:
            segment0 = tl.load(segment_ptr + item)
            segment1 = tl.load(segment_ptr + item + 1)
            end = tl.where(segment1 > segment0, begin, end)
            for segment in range(segment0, segment1):
                result += tl.load(partial_ptr + segment * num_heads + head + tl.arange(0, 1))
        result += _gat_dst_sum(item, begin, end, head, num_heads, num_features, col_ptr, a_src_ptr, a_dst_ptr,
                               max_ptr, sum_ptr, delta_ptr, x_ptr, grad_ptr, negative_slope, rng_ptr, threshold,
                               scale, DROPOUT, ACC, BLOCK_E, BLOCK_F)
        tl.store(da_dst_ptr + item * num_heads + head + tl.arange(0, 1), result.to(da_dst_ptr.dtype.element_ty))


@triton.jit
def _gat_src_sums(src, begin, end, head, num_heads, num_features, features, feature_mask, col_t_ptr, perm_t_ptr,
                  a_src_ptr, a_dst_ptr, max_ptr, sum_ptr, delta_ptr, x_ptr, grad_ptr, negative_slope, rng_ptr,
                  threshold, scale, DROPOUT: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr,
                  BLOCK_F: tl.constexpr):
    """Over transpose entries [begin, end) of source j: (sum_i k_ij p_ij grad[i] for this
    feature block, sum_i ds_ij); perm_t gives each entry's CSR edge (for its dropout factor)."""
    acc = tl.zeros([BLOCK_F], dtype=ACC)
    total = tl.zeros([BLOCK_E], dtype=ACC)
    for k0 in range(begin, end, BLOCK_E):
        ks = k0 + tl.arange(0, BLOCK_E)
        mask = ks < end
        dst = tl.load(col_t_ptr + ks, mask=mask, other=0).to(tl.int64)
        srcs = tl.zeros([BLOCK_E], dtype=tl.int64) + src
        edges = tl.zeros([BLOCK_E], dtype=tl.int64)
        if DROPOUT:
            edges = tl.load(perm_t_ptr + ks, mask=mask, other=0).to(tl.int64)
        prob, ds = _gat_edge_terms(dst, srcs, edges, head, num_heads, num_features, a_src_ptr, a_dst_ptr, max_ptr,
                                   sum_ptr, delta_ptr, x_ptr, grad_ptr, mask, negative_slope, rng_ptr, threshold,
                                   scale, DROPOUT, ACC, BLOCK_F)
        total += ds
        gv = tl.load(grad_ptr + (dst[:, None] * num_heads + head) * num_features + features[None, :],
                     mask=mask[:, None] & feature_mask[None, :], other=0.0).to(ACC)
        acc += tl.sum(prob[:, None] * gv, axis=0)
    return acc, tl.sum(total, axis=0)


@triton.jit
def gat_src_grad_kernel(rowptr_t_ptr, col_t_ptr, perm_t_ptr, x_ptr, a_src_ptr, a_dst_ptr, max_ptr, sum_ptr, delta_ptr,
                        grad_ptr, dx_ptr, da_src_ptr, segment_ptr, segment_row_ptr, partial_ptr, partial_da_ptr,
                        num_src, num_heads, num_features, scalars_ptr, rng_ptr, threshold,
                        SEGMENTS: tl.constexpr, SPLIT: tl.constexpr, DROPOUT: tl.constexpr, ACC: tl.constexpr,
                        SPLIT_EDGES: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr):
    # Source j walks its out-edges on the transpose: dx[j] = sum_i p_ij grad[i] for this
    # feature block; the first feature block also sums dalpha_src[j]. SEGMENTS / SPLIT as in
    # gat_dst_grad_kernel, over the transpose's long rows (hub sources).
    negative_slope = tl.load(scalars_ptr)
    scale = tl.load(scalars_ptr + 1)
    item = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    fblock = tl.program_id(2)
    features = fblock * BLOCK_F + tl.arange(0, BLOCK_F)
    feature_mask = features < num_features
    if SEGMENTS:
        src, begin, end = _segment_span(item, rowptr_t_ptr, segment_ptr, segment_row_ptr, num_src, SPLIT_EDGES)
        acc, total = _gat_src_sums(src, begin, end, head, num_heads, num_features, features, feature_mask, col_t_ptr,
                                   perm_t_ptr, a_src_ptr, a_dst_ptr, max_ptr, sum_ptr, delta_ptr, x_ptr, grad_ptr,
                                   negative_slope, rng_ptr, threshold, scale, DROPOUT, ACC, BLOCK_E, BLOCK_F)
        tl.store(partial_ptr + (item * num_heads + head) * num_features + features, acc, mask=feature_mask)
        if fblock == 0:
            tl.store(partial_da_ptr + item * num_heads + head + tl.arange(0, 1), total + tl.zeros([1], dtype=ACC))
    else:
        begin = tl.load(rowptr_t_ptr + item)
        end = tl.load(rowptr_t_ptr + item + 1)
        acc = tl.zeros([BLOCK_F], dtype=ACC)
        total = tl.zeros([1], dtype=ACC)
        if SPLIT:
            segment0 = tl.load(segment_ptr + item)
            segment1 = tl.load(segment_ptr + item + 1)
            end = tl.where(segment1 > segment0, begin, end)
            for segment in range(segment0, segment1):
                acc += tl.load(partial_ptr + (segment * num_heads + head) * num_features + features,
                               mask=feature_mask, other=0.0)
                total += tl.load(partial_da_ptr + segment * num_heads + head + tl.arange(0, 1))
        more, more_total = _gat_src_sums(item, begin, end, head, num_heads, num_features, features, feature_mask,
                                         col_t_ptr, perm_t_ptr, a_src_ptr, a_dst_ptr, max_ptr, sum_ptr, delta_ptr,
                                         x_ptr, grad_ptr, negative_slope, rng_ptr, threshold, scale, DROPOUT,
                                         ACC, BLOCK_E, BLOCK_F)
        acc += more
        total += more_total
        tl.store(dx_ptr + (item * num_heads + head) * num_features + features,
                 acc.to(dx_ptr.dtype.element_ty), mask=feature_mask)
        if fblock == 0:
            tl.store(da_src_ptr + item * num_heads + head + tl.arange(0, 1), total.to(da_src_ptr.dtype.element_ty))


def _scalars(x, negative_slope, dropout_scale):
    # (negative_slope, dropout scale) in the accumulation dtype: a float kernel argument would be fp32.
    return torch.tensor([negative_slope, dropout_scale], dtype=opmath_dtype(x.dtype), device=x.device)


def _dropout_args(x, negative_slope, dropout, rng):
    """(scalars, rng, threshold, DROPOUT) of the GAT kernels: dropout p > 0 reads (seed, offset)
    from rng (philox.py); without it rng is a placeholder, unread."""
    if dropout <= 0:
        return _scalars(x, negative_slope, 1.0), x, 0, False
    return _scalars(x, negative_slope, dropout_scale(dropout)), rng, dropout_threshold(dropout), True


def launch_gat(rowptr, col, x, alpha_src, alpha_dst, negative_slope, out, row_max, row_sum,
               dropout=0.0, rng=None):
    num_rows, (_, heads, features) = rowptr.numel() - 1, x.shape
    if num_rows == 0 or heads == 0:
        return
    block_f = _feature_block(features)
    grid_f = max(1, triton.cdiv(features, block_f))
    acc = accumulator(x.dtype)
    scalars, rng, threshold, with_dropout = _dropout_args(x, negative_slope, dropout, rng)
    plan = long_row_plan(rowptr, col.numel(), SPLIT_EDGES)
    partial = _split_scratch(plan, (heads, features), row_max.dtype, x.device)
    stats = _split_scratch(plan, (heads, 2), row_max.dtype, x.device)
    segment_ptr = rowptr if plan is None else plan[0]  # rowptr: a placeholder, unread without a plan
    if plan is not None:
        _, segment_row, max_segments = plan
        wrap_triton(gat_segment_kernel)[(max_segments, heads, grid_f)](
            rowptr, col, x, alpha_src, alpha_dst, segment_ptr, segment_row, partial, stats,
            num_rows, heads, features, scalars, rng, threshold,
            DROPOUT=with_dropout, ACC=acc, SPLIT_EDGES=SPLIT_EDGES, BLOCK_E=BLOCK_E, BLOCK_F=block_f)
    wrap_triton(gat_kernel)[(num_rows, heads, grid_f)](
        rowptr, col, x, alpha_src, alpha_dst, out, row_max, row_sum, segment_ptr, partial, stats,
        heads, features, scalars, rng, threshold,
        SPLIT=plan is not None, DROPOUT=with_dropout, ACC=acc, BLOCK_E=BLOCK_E, BLOCK_F=block_f)


def launch_gat_backward(rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, row_max, row_sum,
                        delta, grad, negative_slope, dx, da_src, da_dst, dropout=0.0, rng=None):
    num_rows, (num_src, heads, features) = rowptr.numel() - 1, x.shape
    if heads == 0:
        return
    block_f = _feature_block(features)
    grid_f = max(1, triton.cdiv(features, block_f))
    scalars, rng, threshold, with_dropout = _dropout_args(x, negative_slope, dropout, rng)
    config = dict(DROPOUT=with_dropout, ACC=accumulator(x.dtype), SPLIT_EDGES=SPLIT_EDGES, BLOCK_E=BLOCK_E,
                  BLOCK_F=block_f)
    stats = (row_max, row_sum, delta)
    if num_rows:
        plan = long_row_plan(rowptr, col.numel(), SPLIT_EDGES)
        partial = _split_scratch(plan, (heads,), row_max.dtype, x.device)
        segment_ptr, segment_row = (rowptr, rowptr) if plan is None else plan[:2]
        args = (rowptr, col, x, alpha_src, alpha_dst, *stats, grad, da_dst, segment_ptr, segment_row, partial,
                num_rows, heads, features, scalars, rng, threshold)
        if plan is not None:
            wrap_triton(gat_dst_grad_kernel)[(plan[2], heads)](*args, SEGMENTS=True, SPLIT=False, **config)
        wrap_triton(gat_dst_grad_kernel)[(num_rows, heads)](*args, SEGMENTS=False, SPLIT=plan is not None, **config)
    if num_src:
        plan = long_row_plan(rowptr_t, col_t.numel(), SPLIT_EDGES)
        partial = _split_scratch(plan, (heads, features), row_max.dtype, x.device)
        partial_da = _split_scratch(plan, (heads,), row_max.dtype, x.device)
        segment_ptr, segment_row = (rowptr_t, rowptr_t) if plan is None else plan[:2]
        args = (rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, *stats, grad, dx, da_src, segment_ptr,
                segment_row, partial, partial_da, num_src, heads, features, scalars, rng, threshold)
        if plan is not None:
            wrap_triton(gat_src_grad_kernel)[(plan[2], heads, grid_f)](*args, SEGMENTS=True, SPLIT=False, **config)
        wrap_triton(gat_src_grad_kernel)[(num_src, heads, grid_f)](*args, SEGMENTS=False, SPLIT=plan is not None, **config)


# ---- common neighbours ------------------------------------------------------------------------
@triton.jit
def common_neighbors_kernel(rowptr_ptr, col_ptr, src_ptr, dst_ptr, counts_ptr, offsets_ptr, neighbors_ptr,
                            num_rows, WRITE: tl.constexpr):
    # One program per pair: a scalar sorted merge of the two rows (pass 1 counts, pass 2 writes).
    # An id outside [0, num_rows) reads nothing and leaves the pair empty (a traced call checks
    # the ids with an async assert, ops/sparse.py).
    pair = tl.program_id(0).to(tl.int64)
    a = tl.load(src_ptr + pair)
    b = tl.load(dst_ptr + pair)
    valid = (a >= 0) & (a < num_rows) & (b >= 0) & (b < num_rows)
    a = tl.where(valid, a, 0)
    b = tl.where(valid, b, 0)
    i = tl.load(rowptr_ptr + a)
    end_a = tl.where(valid, tl.load(rowptr_ptr + a + 1), i)
    j = tl.load(rowptr_ptr + b)
    end_b = tl.where(valid, tl.load(rowptr_ptr + b + 1), j)
    count = tl.zeros([], dtype=tl.int64)
    out = tl.zeros([], dtype=tl.int64)
    if WRITE:
        out = tl.load(offsets_ptr + pair)
    while (i < end_a) & (j < end_b):
        u = tl.load(col_ptr + i)
        v = tl.load(col_ptr + j)
        if WRITE:
            tl.store(neighbors_ptr + out + count, u, mask=u == v)
        count += (u == v).to(tl.int64)
        i += (u <= v).to(tl.int64)
        j += (v <= u).to(tl.int64)
    if not WRITE:
        tl.store(counts_ptr + pair, count)


def launch_common_neighbors(rowptr, col, src, dst, counts, offsets, neighbors):
    """Pass 1 when offsets is None (fills counts), else pass 2 (fills neighbors)."""
    if src.numel() == 0:
        return
    write = offsets is not None
    wrap_triton(common_neighbors_kernel)[(src.numel(),)](
        rowptr, col, src, dst, counts if counts is not None else src, offsets if write else src,
        neighbors if write else col, rowptr.numel() - 1, WRITE=write)
