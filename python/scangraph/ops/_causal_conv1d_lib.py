"""The torch.library face of scangraph.ops.causal_conv1d: each op's fake kernel, its autograd (whose
backward runs on the forward's own backend) and its Triton twin `<op>_triton`, registered on
import. The public functions, their docstrings and their checks: scangraph/ops/causal_conv1d.py."""
from typing import Optional, Tuple

import torch

from scangraph.ops._rules import opmath_dtype
from scangraph.ops._twins import register_autograd, register_compiled
from scangraph.triton_kernels import UNAVAILABLE as _TRITON_UNAVAILABLE


# ---- fake kernels ---------------------------------------------------------------------------
def _conv_fake(x, weight, bias, seq_idx, initial_states, silu):
    return x.new_empty(x.shape)


def _conv_backward_fake(x, weight, bias, seq_idx, initial_states, grad_out, silu):
    acc = opmath_dtype(x.dtype)
    return (x.new_empty(x.shape), weight.new_empty(weight.shape),
            x.new_empty((0,), dtype=acc) if bias is None else bias.new_empty(bias.shape),
            x.new_empty((0,)) if initial_states is None else x.new_empty(initial_states.shape))


def _update_fake(x, conv_state, weight, bias, silu, cache_seqlens, conv_state_indices):
    return x.new_empty(x.shape)


# ---- autograd -------------------------------------------------------------------------------
def autograd(ops):
    """The autograd of causal_conv1d, whose backward runs `ops("causal_conv1d_backward")` of the
    forward's own backend (ops/_twins.py)."""
    backward_op = ops("causal_conv1d_backward")

    def setup(ctx, inputs, output):
        x, weight, bias, seq_idx, initial_states, silu = inputs
        ctx.silu = silu
        ctx.save_for_backward(x, weight, bias, seq_idx, initial_states)

    def backward(ctx, grad_out):
        x, weight, bias, seq_idx, initial_states = ctx.saved_tensors
        dx, dweight, dbias, dinit = backward_op(x, weight, bias, seq_idx, initial_states, grad_out, ctx.silu)
        return (dx, dweight, dbias if bias is not None else None, None,
                dinit if initial_states is not None else None, None)

    return {"causal_conv1d": (backward, setup)}


FAKES = {"causal_conv1d": _conv_fake, "causal_conv1d_backward": _conv_backward_fake,
         "causal_conv1d_update": _update_fake}


def _acc(t, like):
    return None if t is None else t.to(opmath_dtype(like.dtype)).contiguous()


def _contiguous(t):
    return None if t is None else t.contiguous()


def _register_triton_ops():
    if _TRITON_UNAVAILABLE is not None:
        return
    from torch.library import triton_op

    from scangraph.triton_kernels import causal_conv1d as kernels

    @triton_op("scangraph::causal_conv1d_triton", mutates_args=())
    def causal_conv1d_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                             seq_idx: Optional[torch.Tensor], initial_states: Optional[torch.Tensor],
                             silu: bool) -> torch.Tensor:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        kernels.launch_causal_conv1d(x.contiguous(), _acc(weight, x), _acc(bias, x), _contiguous(seq_idx),
                                     _contiguous(initial_states), silu, out)
        return out

    @triton_op("scangraph::causal_conv1d_backward_triton", mutates_args=())
    def causal_conv1d_backward_triton(
            x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor],
            initial_states: Optional[torch.Tensor], grad_out: torch.Tensor, silu: bool
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        dx = torch.empty_like(x, memory_format=torch.contiguous_format)
        dinit = None if initial_states is None else torch.empty_like(initial_states,
                                                                     memory_format=torch.contiguous_format)
        grads = kernels.launch_causal_conv1d_backward(
            x.contiguous(), _acc(weight, x), _acc(bias, x), _contiguous(seq_idx), _contiguous(initial_states),
            grad_out.to(x.dtype).contiguous(), silu, dx, dinit)
        width = weight.shape[1]
        acc = opmath_dtype(x.dtype)
        return (dx, grads[:, :width].to(weight.dtype, copy=True),  # copies: outputs must not alias
                x.new_empty((0,), dtype=acc) if bias is None else grads[:, width].to(bias.dtype, copy=True),
                x.new_empty((0,)) if dinit is None else dinit)

    @triton_op("scangraph::causal_conv1d_update_triton", mutates_args={"conv_state"})
    def causal_conv1d_update_triton(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                                    bias: Optional[torch.Tensor], silu: bool, cache_seqlens: Optional[torch.Tensor],
                                    conv_state_indices: Optional[torch.Tensor]) -> torch.Tensor:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        work = conv_state if conv_state.is_contiguous() else conv_state.contiguous()
        kernels.launch_causal_conv1d_update(x.contiguous(), work, _acc(weight, x), _acc(bias, x), silu,
                                            _contiguous(cache_seqlens), _contiguous(conv_state_indices), out)
        if work is not conv_state:
            conv_state.copy_(work)
        return out

    register_autograd(autograd, "triton")


if hasattr(torch.ops.scangraph, "causal_conv1d"):  # else the compiled library is not loaded
    register_compiled(FAKES, autograd)
_register_triton_ops()
