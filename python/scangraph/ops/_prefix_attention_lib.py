"""The torch.library face of scangraph.ops.prefix_attention: each op's fake kernel, its autograd (whose
backward runs on the forward's own backend) and its Triton twin `<op>_triton`, registered on
import. The public functions, their docstrings and their checks: scangraph/ops/prefix_attention.py."""
from typing import Optional, Tuple

import torch

from scangraph.ops._rules import opmath_dtype
from scangraph.ops._twins import register_autograd, register_compiled
from scangraph.triton_kernels import UNAVAILABLE as _TRITON_UNAVAILABLE


def _num_seqs(k, cu_seqlens):
    return k.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


# ---- fake kernels: output shapes from input shapes alone -------------------------------------
def _forward_fake(q, k, v, scale, m0, c0, w0, cu_seqlens):
    torch._check(k.dim() == 4 and v.dim() == 4 and q.dim() in (2, 3))
    batch, seqlen, heads, _ = k.shape
    seqs = _num_seqs(k, cu_seqlens)
    acc = opmath_dtype(k.dtype)
    o = v.new_empty((batch, seqlen, heads, v.shape[3]))
    stats = k.new_empty((batch, seqlen, heads), dtype=acc)
    last = k.new_empty((seqs, heads), dtype=acc)
    return (o, stats, torch.empty_like(stats), last, torch.empty_like(last),
            k.new_empty((seqs, heads, v.shape[3]), dtype=acc))


def _backward_fake(q, k, v, scale, m0, c0, w0, cu_seqlens, o, m, c, c_last, w_last, grad_o, grad_m_last,
                   grad_c_last, grad_w_last):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), c_last.new_empty(c_last.shape),
            c_last.new_empty(c_last.shape), w_last.new_empty(w_last.shape))


def _step_fake(m, c, w, q, k, v, scale):
    torch._check(k.dim() == 3 and v.dim() == 3)
    return v.new_empty(v.shape)


# ---- autograd --------------------------------------------------------------------------------
def autograd(ops):
    """The autograd of prefix_attention, whose backward runs `ops("prefix_attention_backward")` of
    the forward's own backend (ops/_twins.py)."""
    backward_op = ops("prefix_attention_backward")

    def setup(ctx, inputs, output):
        q, k, v, scale, m0, c0, w0, cu_seqlens = inputs
        o, m, c, _m_last, c_last, w_last = output
        ctx.scale = scale
        ctx.mark_non_differentiable(m, c)
        ctx.save_for_backward(q, k, v, m0, c0, w0, cu_seqlens, o, m, c, c_last, w_last)

    def backward(ctx, grad_o, _grad_m, _grad_c, grad_m_last, grad_c_last, grad_w_last):
        q, k, v, m0, c0, w0, cu_seqlens, o, m, c, c_last, w_last = ctx.saved_tensors
        grads = [torch.zeros_like(t) if g is None else g.contiguous()
                 for g, t in ((grad_o, o), (grad_m_last, c_last), (grad_c_last, c_last), (grad_w_last, w_last))]
        dq, dk, dv, dm0, dc0, dw0 = backward_op(q, k, v, ctx.scale, m0, c0, w0, cu_seqlens, o, m, c, c_last,
                                                w_last, *grads)
        if m0 is None:
            dm0 = dc0 = dw0 = None
        return dq, dk, dv, None, dm0, dc0, dw0, None

    return {"prefix_attention": (backward, setup)}


FAKES = {"prefix_attention": _forward_fake, "prefix_attention_backward": _backward_fake,
         "prefix_attention_step": _step_fake}


def _register_triton_ops():
    if _TRITON_UNAVAILABLE is not None:
        return
    from torch.library import triton_op

    from scangraph.triton_kernels import prefix_attention as kernels

    @triton_op("scangraph::prefix_attention_triton", mutates_args=())
    def prefix_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                                m0: Optional[torch.Tensor], c0: Optional[torch.Tensor], w0: Optional[torch.Tensor],
                                cu_seqlens: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                             torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = _forward_fake(q, k, v, scale, m0, c0, w0, cu_seqlens)
        kernels.launch_prefix_attention(q, k, v, scale, m0, c0, w0, cu_seqlens, *outputs)
        return outputs

    @triton_op("scangraph::prefix_attention_backward_triton", mutates_args=())
    def prefix_attention_backward_triton(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, m0: Optional[torch.Tensor],
            c0: Optional[torch.Tensor], w0: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
            o: torch.Tensor, m: torch.Tensor, c: torch.Tensor, c_last: torch.Tensor, w_last: torch.Tensor,
            grad_o: torch.Tensor, grad_m_last: torch.Tensor, grad_c_last: torch.Tensor,
            grad_w_last: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                torch.Tensor, torch.Tensor]:
        seqs, heads, dim = c_last.shape[0], k.shape[2], k.shape[3]
        dq_partial = k.new_empty((seqs, heads, dim), dtype=c_last.dtype)
        dk, dv = k.new_empty(k.shape), v.new_empty(v.shape)
        dm0, dc0, dw0 = torch.empty_like(c_last), torch.empty_like(c_last), torch.empty_like(w_last)
        kernels.launch_prefix_attention_backward(q, k, v, scale, m0, c0, w0, cu_seqlens, o.contiguous(), m, c, c_last,
                                w_last, grad_o.contiguous(), grad_m_last.contiguous(), grad_c_last.contiguous(),
                                grad_w_last.contiguous(), dq_partial, dk, dv, dm0, dc0, dw0)
        # One partial per sequence, summed in a fixed order when one query serves several.
        dq = dq_partial if q.dim() == 3 and q.shape[0] == seqs else dq_partial.sum(0)
        return dq.reshape(q.shape).to(q.dtype), dk, dv, dm0, dc0, dw0

    @triton_op("scangraph::prefix_attention_step_triton", mutates_args=("m", "c", "w"))
    def prefix_attention_step_triton(m: torch.Tensor, c: torch.Tensor, w: torch.Tensor, q: torch.Tensor,
                                     k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        # The forward kernel with L = 1, no statistics, the final state written over the initial
        # (indexed as contiguous tensors, like the C++ op requires).
        for name, t in (("m", m), ("c", c), ("w", w)):
            if not t.is_contiguous():
                raise ValueError(f"prefix_attention_step_triton: the state tensor {name} is updated in place "
                                 "and must be contiguous")
        o = v.new_empty((v.shape[0], 1) + tuple(v.shape[1:]))
        kernels.launch_prefix_attention(q, k.unsqueeze(1), v.unsqueeze(1), scale, m, c, w, None,
                               o, None, None, m, c, w)
        return o.squeeze(1)

    register_autograd(autograd, "triton")


if hasattr(torch.ops.scangraph, "prefix_attention"):  # else the compiled library is not loaded
    register_compiled(FAKES, autograd)
_register_triton_ops()
