"""The torch.library face of scangraph.ops.sparse: each op's fake kernel, its autograd (whose
backward runs on the forward's own backend) and its Triton twin `<op>_triton`, registered on
import. The public functions, their docstrings and their checks: scangraph/ops/sparse.py."""
from typing import Optional, Tuple

import torch

from scangraph.graph import csr_transpose
from scangraph.ops._rules import opmath_dtype
from scangraph.ops._twins import register_autograd, register_compiled
from scangraph.triton_kernels import UNAVAILABLE as _TRITON_UNAVAILABLE



# ---- fake kernels: output shapes from input shapes alone -------------------------------------
def _spmm_fake(rowptr, col, weight, x, reduce="sum", rowptr_t=None, col_t=None, perm_t=None):
    torch._check(rowptr.dim() == 1 and col.dim() == 1 and x.dim() in (2, 3))
    return x.new_empty((rowptr.shape[0] - 1,) + tuple(x.shape[1:]))


def _spmm_arg_fake(rowptr, col, weight, x, reduce, rowptr_t=None, col_t=None, perm_t=None):
    out = _spmm_fake(rowptr, col, weight, x, reduce)
    return out, out.new_empty(out.shape, dtype=torch.int64)


def _spmm_arg_backward_fake(rowptr, col, rowptr_t, col_t, perm_t, weight, x, grad, arg, weight_grad):
    heads = x.shape[1] if x.dim() == 3 else 1
    return x.new_empty(x.shape), x.new_empty((col.shape[0] if weight_grad else 0, heads))


def _gat_outputs(rowptr, col, x, alpha_src, alpha_dst, negative_slope=0.2, rowptr_t=None, col_t=None, perm_t=None,
                 dropout=0.0, rng=None):
    """gat_aggregate's outputs, allocated: its fake kernel, and the Triton op's outputs."""
    torch._check(x.dim() == 3 and alpha_src.dim() == 2 and alpha_dst.dim() == 2)
    rows = rowptr.shape[0] - 1
    stats = x.new_empty((rows, x.shape[1]), dtype=opmath_dtype(x.dtype))
    return x.new_empty((rows, x.shape[1], x.shape[2])), stats, torch.empty_like(stats)


def _gat_backward_fake(rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, row_max, row_sum, delta,
                       grad, negative_slope, dropout=0.0, rng=None):
    return x.new_empty(x.shape), alpha_src.new_empty(alpha_src.shape), alpha_dst.new_empty(alpha_dst.shape)


def _common_neighbors_fake(rowptr, col, src, dst):
    total = torch.library.get_ctx().new_dynamic_size()
    return src.new_empty((src.shape[0] + 1,)), col.new_empty((total,))


def _sddmm_fake(rowptr, col, a, b, rowptr_t=None, col_t=None, perm_t=None):
    torch._check(rowptr.dim() == 1 and col.dim() == 1 and a.dim() == b.dim())
    return a.new_empty((col.shape[0],) + tuple(a.shape[1:-1]))


def _check_dropout(op: str, dropout: float, rng, x):
    """The Triton ops' check of what the C++ glue's prepare_dropout checks (sparse_args.h)."""
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"{op}: dropout must be in [0, 1], got {dropout}")
    if dropout > 0 and (rng is None or rng.dtype != torch.int64 or rng.numel() != 2 or not rng.is_contiguous()
                        or rng.device != x.device):
        raise ValueError(f"{op}: dropout > 0 needs rng, a contiguous int64 (seed, offset) tensor of 2 elements "
                         f"on {x.device}")


# ---- autograd, parameterised by the family of ops the backward runs on -----------------------
def _transpose_of(rowptr, col, num_cols, rowptr_t, col_t, perm_t):
    if rowptr_t is None:
        return csr_transpose(rowptr, col, num_cols)
    return rowptr_t, col_t, perm_t


def _divide_by_degree(grad, rowptr):
    degree = (rowptr[1:] - rowptr[:-1]).clamp(min=1).to(grad.dtype)
    return grad / degree.reshape((-1,) + (1,) * (grad.dim() - 1))


def autograd(ops):
    """The autograd of spmm, gat_aggregate, spmm_arg and sddmm, whose backwards run `ops(name)`,
    the ops of the forward's own backend (ops/_twins.py)."""
    spmm_op, sddmm_op = ops("spmm"), ops("sddmm")
    arg_backward_op, gat_backward_op = ops("spmm_arg_backward"), ops("gat_aggregate_backward")

    def spmm_setup(ctx, inputs, output):
        rowptr, col, weight, x, reduce, rowptr_t, col_t, perm_t = inputs
        ctx.reduce = reduce
        ctx.num_src = x.shape[0]
        ctx.weight_is_per_edge = weight is not None and weight.dim() == 1
        ctx.save_for_backward(rowptr, col, weight, x if ctx.needs_input_grad[2] else None,
                              rowptr_t, col_t, perm_t)

    def spmm_backward(ctx, grad):
        rowptr, col, weight, x, rowptr_t, col_t, perm_t = ctx.saved_tensors
        if ctx.reduce == "mean":
            grad = _divide_by_degree(grad, rowptr)
        dweight = dx = None
        if ctx.needs_input_grad[2]:
            if ctx.weight_is_per_edge and x.dim() == 3:
                # One weight shared by all heads: its gradient is one dot product over
                # (heads, F), accumulated once in fp32 rather than summed from rounded parts.
                grad_flat = grad.reshape(grad.shape[0], grad.shape[1] * grad.shape[2])
                x_flat = x.reshape(x.shape[0], x.shape[1] * x.shape[2])
                dweight = sddmm_op(rowptr, col, grad_flat, x_flat, rowptr_t, col_t, perm_t)
            else:
                dweight = sddmm_op(rowptr, col, grad, x, rowptr_t, col_t, perm_t)
        if ctx.needs_input_grad[3]:
            rowptr_t, col_t, perm_t = _transpose_of(rowptr, col, ctx.num_src, rowptr_t, col_t, perm_t)
            weight_t = None if weight is None else weight[perm_t]
            dx = spmm_op(rowptr_t, col_t, weight_t, grad, "sum", None, None, None)
        return None, None, dweight, dx, None, None, None, None

    def sddmm_setup(ctx, inputs, output):
        rowptr, col, a, b, rowptr_t, col_t, perm_t = inputs
        ctx.num_src = b.shape[0]
        ctx.save_for_backward(rowptr, col, a, b, rowptr_t, col_t, perm_t)

    def sddmm_backward(ctx, grad):
        rowptr, col, a, b, rowptr_t, col_t, perm_t = ctx.saved_tensors
        da = db = None
        if ctx.needs_input_grad[2]:
            da = spmm_op(rowptr, col, grad, b, "sum", rowptr_t, col_t, perm_t)
        if ctx.needs_input_grad[3]:
            rowptr_t, col_t, perm_t = _transpose_of(rowptr, col, ctx.num_src, rowptr_t, col_t, perm_t)
            db = spmm_op(rowptr_t, col_t, grad[perm_t], a, "sum", None, None, None)
        return None, None, da, db, None, None, None

    def arg_setup(ctx, inputs, output):
        rowptr, col, weight, x, reduce, rowptr_t, col_t, perm_t = inputs
        ctx.num_src = x.shape[0]
        ctx.weight_shape = None if weight is None else weight.shape
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(rowptr, col, weight, x, output[1], rowptr_t, col_t, perm_t)

    def arg_backward(ctx, grad, _grad_arg):
        rowptr, col, weight, x, arg, rowptr_t, col_t, perm_t = ctx.saved_tensors
        rowptr_t, col_t, perm_t = _transpose_of(rowptr, col, ctx.num_src, rowptr_t, col_t, perm_t)
        dx, dweight = arg_backward_op(rowptr, col, rowptr_t, col_t, perm_t, weight, x, grad, arg,
                                      ctx.needs_input_grad[2])
        if ctx.needs_input_grad[2]:  # (E, heads) -> the weight's own shape
            dweight = dweight.sum(1) if len(ctx.weight_shape) == 1 else dweight.reshape(ctx.weight_shape)
        else:
            dweight = None
        return None, None, dweight, dx if ctx.needs_input_grad[3] else None, None, None, None, None

    def gat_setup(ctx, inputs, output):
        rowptr, col, x, alpha_src, alpha_dst, negative_slope, rowptr_t, col_t, perm_t, dropout, rng = inputs
        out, row_max, row_sum = output
        ctx.negative_slope, ctx.dropout = negative_slope, dropout
        ctx.mark_non_differentiable(row_max, row_sum)
        # The dropout mask is not saved: the backward regenerates it from rng = (seed, offset).
        ctx.save_for_backward(rowptr, col, x, alpha_src, alpha_dst, out, row_max, row_sum, rowptr_t, col_t, perm_t,
                              rng)

    def gat_backward(ctx, grad, _grad_max, _grad_sum):
        (rowptr, col, x, alpha_src, alpha_dst, out, row_max, row_sum, rowptr_t, col_t, perm_t,
         rng) = ctx.saved_tensors
        rowptr_t, col_t, perm_t = _transpose_of(rowptr, col, x.shape[0], rowptr_t, col_t, perm_t)
        delta = (out.to(row_max.dtype) * grad.to(row_max.dtype)).sum(-1)
        dx, da_src, da_dst = gat_backward_op(rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, row_max,
                                             row_sum, delta, grad.contiguous(), ctx.negative_slope, ctx.dropout, rng)
        return None, None, dx, da_src, da_dst, None, None, None, None, None, None

    return {"spmm": (spmm_backward, spmm_setup), "gat_aggregate": (gat_backward, gat_setup),
            "spmm_arg": (arg_backward, arg_setup), "sddmm": (sddmm_backward, sddmm_setup)}


FAKES = {"spmm": _spmm_fake, "sddmm": _sddmm_fake, "spmm_arg": _spmm_arg_fake,
         "spmm_arg_backward": _spmm_arg_backward_fake, "gat_aggregate": _gat_outputs,
         "common_neighbors": _common_neighbors_fake, "gat_aggregate_backward": _gat_backward_fake}


def _register_triton_ops():
    if _TRITON_UNAVAILABLE is not None:
        return
    from torch.library import triton_op

    from scangraph.triton_kernels import sparse as kernels

    @triton_op("scangraph::spmm_triton", mutates_args=())
    def spmm_triton(rowptr: torch.Tensor, col: torch.Tensor, weight: Optional[torch.Tensor],
                    x: torch.Tensor, reduce: str = "sum", rowptr_t: Optional[torch.Tensor] = None,
                    col_t: Optional[torch.Tensor] = None,
                    perm_t: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = x.new_empty((rowptr.shape[0] - 1,) + tuple(x.shape[1:]))
        kernels.launch_spmm(rowptr, col, weight, x, reduce, out)
        return out

    @triton_op("scangraph::sddmm_triton", mutates_args=())
    def sddmm_triton(rowptr: torch.Tensor, col: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                     rowptr_t: Optional[torch.Tensor] = None, col_t: Optional[torch.Tensor] = None,
                     perm_t: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = a.new_empty((col.shape[0],) + tuple(a.shape[1:-1]))
        kernels.launch_sddmm(rowptr, col, a, b, out)
        return out

    @triton_op("scangraph::spmm_arg_triton", mutates_args=())
    def spmm_arg_triton(rowptr: torch.Tensor, col: torch.Tensor, weight: Optional[torch.Tensor],
                        x: torch.Tensor, reduce: str, rowptr_t: Optional[torch.Tensor] = None,
                        col_t: Optional[torch.Tensor] = None,
                        perm_t: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        out = x.new_empty((rowptr.shape[0] - 1,) + tuple(x.shape[1:]))
        arg = out.new_empty(out.shape, dtype=torch.int64)
        kernels.launch_spmm_extreme(rowptr, col, weight, x, reduce, out, arg)
        return out, arg

    @triton_op("scangraph::spmm_arg_backward_triton", mutates_args=())
    def spmm_arg_backward_triton(rowptr: torch.Tensor, col: torch.Tensor, rowptr_t: torch.Tensor,
                                 col_t: torch.Tensor, perm_t: torch.Tensor, weight: Optional[torch.Tensor],
                                 x: torch.Tensor, grad: torch.Tensor, arg: torch.Tensor,
                                 weight_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        heads = x.shape[1] if x.dim() == 3 else 1
        dx = x.new_empty(x.shape)
        dweight = x.new_empty((col.shape[0] if weight_grad else 0, heads))
        kernels.launch_spmm_arg_backward(rowptr, col, rowptr_t, col_t, perm_t, weight,
                                         x, grad.contiguous(), arg.contiguous(), dx,
                                         dweight if weight_grad else None)
        return dx, dweight

    @triton_op("scangraph::gat_aggregate_triton", mutates_args=())
    def gat_aggregate_triton(rowptr: torch.Tensor, col: torch.Tensor, x: torch.Tensor, alpha_src: torch.Tensor,
                             alpha_dst: torch.Tensor, negative_slope: float = 0.2,
                             rowptr_t: Optional[torch.Tensor] = None, col_t: Optional[torch.Tensor] = None,
                             perm_t: Optional[torch.Tensor] = None, dropout: float = 0.0,
                             rng: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _check_dropout("scangraph::gat_aggregate_triton", dropout, rng, x)
        out, row_max, row_sum = _gat_outputs(rowptr, col, x, alpha_src, alpha_dst)
        kernels.launch_gat(rowptr, col, x.contiguous(), alpha_src.contiguous(), alpha_dst.contiguous(),
                           negative_slope, out, row_max, row_sum, dropout, rng)
        return out, row_max, row_sum

    @triton_op("scangraph::gat_aggregate_backward_triton", mutates_args=())
    def gat_aggregate_backward_triton(rowptr: torch.Tensor, col: torch.Tensor, rowptr_t: torch.Tensor,
                                      col_t: torch.Tensor, perm_t: torch.Tensor, x: torch.Tensor,
                                      alpha_src: torch.Tensor, alpha_dst: torch.Tensor, row_max: torch.Tensor,
                                      row_sum: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor,
                                      negative_slope: float, dropout: float = 0.0,
                                      rng: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _check_dropout("scangraph::gat_aggregate_backward_triton", dropout, rng, x)
        dx, da_src, da_dst = _gat_backward_fake(rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst,
                                                row_max, row_sum, delta, grad, negative_slope)
        kernels.launch_gat_backward(rowptr, col, rowptr_t, col_t, perm_t.contiguous(), x.contiguous(),
                                    alpha_src.contiguous(), alpha_dst.contiguous(), row_max, row_sum, delta,
                                    grad.contiguous(), negative_slope, dx, da_src, da_dst, dropout, rng)
        return dx, da_src, da_dst

    @triton_op("scangraph::common_neighbors_triton", mutates_args=())
    def common_neighbors_triton(rowptr: torch.Tensor, col: torch.Tensor, src: torch.Tensor,
                                dst: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        counts = src.new_empty(src.shape)
        kernels.launch_common_neighbors(rowptr, col, src, dst, counts, None, None)
        ptr = torch.cat([src.new_zeros(1), counts.cumsum(0)])
        neighbors = col.new_empty((int(ptr[-1]),))  # data-dependent size: one read of the total
        kernels.launch_common_neighbors(rowptr, col, src, dst, None, ptr, neighbors)
        return ptr, neighbors

    register_autograd(autograd, "triton")


if hasattr(torch.ops.scangraph, "spmm"):  # else the compiled library is not loaded
    register_compiled(FAKES, autograd)
_register_triton_ops()
