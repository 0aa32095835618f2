"""The torch.library face of scangraph.ops.selective_scan: each op's fake kernel, its autograd (whose
backward runs on the forward's own backend) and its Triton twin `<op>_triton`, registered on
import. The public functions, their docstrings and their checks: scangraph/ops/selective_scan.py."""
from typing import Optional, Tuple

import torch

from scangraph.ops._rules import SCAN_CHUNK, opmath_dtype
from scangraph.ops._twins import register_autograd, register_compiled
from scangraph.triton_kernels import UNAVAILABLE as _TRITON_UNAVAILABLE



# ---- fake kernels ---------------------------------------------------------------------------
def _scan_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens, reverse):
    batch, dim, length = u.shape
    dstate = A.shape[1]
    states = batch if cu_seqlens is None else cu_seqlens.shape[0] - 1
    acc = opmath_dtype(u.dtype)
    chunks = (length + SCAN_CHUNK - 1) // SCAN_CHUNK
    return (u.new_empty(u.shape), u.new_empty((states, dim, dstate), dtype=acc),
            u.new_empty((batch, dim, chunks, dstate), dtype=acc))


def _scan_backward_fake(grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                        initial_state, cu_seqlens, reverse, checkpoints):
    acc = opmath_dtype(u.dtype)
    def absent():
        return u.new_empty((0,), dtype=acc)
    return (u.new_empty(u.shape), u.new_empty(u.shape), A.new_empty(A.shape), B.new_empty(B.shape),
            C.new_empty(C.shape), absent() if D is None else D.new_empty(D.shape),
            u.new_empty((0,)) if z is None else u.new_empty(u.shape),
            absent() if delta_bias is None else delta_bias.new_empty(delta_bias.shape),
            absent() if initial_state is None else initial_state.new_empty(initial_state.shape))


def _state_update_fake(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return x.new_empty(x.shape)


# ---- autograd -------------------------------------------------------------------------------
def autograd(ops):
    """The autograd of selective_scan, whose backward runs `ops("selective_scan_backward")` of the
    forward's own backend (ops/_twins.py)."""
    backward_op = ops("selective_scan_backward")

    def setup(ctx, inputs, output):
        (u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens, reverse) = inputs
        ctx.flags = (delta_softplus, reverse)
        ctx.mark_non_differentiable(output[2])
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, output[2])

    def backward(ctx, grad_out, grad_last_state, _grad_checkpoints):
        u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, checkpoints = ctx.saved_tensors
        delta_softplus, reverse = ctx.flags
        if grad_out is None:  # only last_state was used
            grad_out = torch.zeros_like(u)
        grads = backward_op(grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                            initial_state, cu_seqlens, reverse, checkpoints)
        du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial = grads
        return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz if z is not None else None,
                ddelta_bias if delta_bias is not None else None, None,
                dinitial if initial_state is not None else None, None, None)

    return {"selective_scan": (backward, setup)}


FAKES = {"selective_scan": _scan_fake, "selective_scan_backward": _scan_backward_fake,
         "selective_state_update": _state_update_fake}


def _triton_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens):
    """What the C++ glue does before a kernel runs: contiguous inputs, fp32 (fp64) parameters,
    varying B / C as (batch, groups, N, L)."""
    acc = opmath_dtype(u.dtype)

    def param(t):
        return None if t is None else t.to(acc).contiguous()

    def bc(t):
        if t.dim() == 2:
            return t.to(acc).contiguous()
        return (t.unsqueeze(1) if t.dim() == 3 else t).contiguous()

    return (u.contiguous(), delta.contiguous(), A.to(acc).contiguous(), bc(B), bc(C), param(D),
            None if z is None else z.contiguous(), param(delta_bias), param(initial_state),
            None if cu_seqlens is None else cu_seqlens.contiguous())


def _register_triton_ops():
    if _TRITON_UNAVAILABLE is not None:
        return
    from torch.library import triton_op

    from scangraph.triton_kernels import selective_scan as kernels

    @triton_op("scangraph::selective_scan_triton", mutates_args=())
    def selective_scan_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                              C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                              delta_bias: Optional[torch.Tensor], delta_softplus: bool,
                              initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
                              reverse: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, last_state, checkpoints = _scan_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                                  initial_state, cu_seqlens, reverse)
        (u_, delta_, A_, B_, C_, D_, z_, bias_, h0_, cu_) = _triton_inputs(
            u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens)
        kernels.launch_selective_scan(u_, delta_, A_, B_, C_, D_, z_, bias_, delta_softplus, h0_,
                                      cu_, reverse, out, last_state, checkpoints)
        return out, last_state, checkpoints

    @triton_op("scangraph::selective_scan_backward_triton", mutates_args=())
    def selective_scan_backward_triton(
            grad_out: torch.Tensor, grad_last_state: Optional[torch.Tensor], u: torch.Tensor, delta: torch.Tensor,
            A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
            delta_bias: Optional[torch.Tensor], delta_softplus: bool, initial_state: Optional[torch.Tensor],
            cu_seqlens: Optional[torch.Tensor], reverse: bool, checkpoints: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
               torch.Tensor, torch.Tensor]:
        (u_, delta_, A_, B_, C_, D_, z_, bias_, h0_, cu_) = _triton_inputs(
            u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens)
        acc = opmath_dtype(u.dtype)
        du, ddelta = torch.empty_like(u_), torch.empty_like(u_)
        dz = torch.empty_like(u_) if z is not None else None
        dA = torch.empty_like(A_)
        dB, dC = torch.empty_like(B_), torch.empty_like(C_)
        dD = torch.empty_like(D_) if D is not None else None
        dbias = torch.empty_like(bias_) if delta_bias is not None else None
        dh0 = torch.empty_like(h0_) if initial_state is not None else None
        g_last = None if grad_last_state is None else grad_last_state.to(acc).contiguous()
        kernels.launch_selective_scan_backward(
            grad_out.to(u.dtype).contiguous(), g_last, u_, delta_, A_, B_, C_, D_, z_, bias_,
            delta_softplus, h0_, cu_, reverse, checkpoints.contiguous(), du, ddelta, dz, dA, dB, dC, dD, dbias,
            dh0)
        def absent():  # each output its own tensor: outputs of an op must not alias
            return u.new_empty((0,), dtype=acc)
        return (du, ddelta, dA.to(A.dtype), dB.to(B.dtype).reshape(B.shape), dC.to(C.dtype).reshape(C.shape),
                absent() if dD is None else dD.to(D.dtype),
                u.new_empty((0,)) if dz is None else dz,
                absent() if dbias is None else dbias.to(delta_bias.dtype),
                absent() if dh0 is None else dh0.to(initial_state.dtype))

    @triton_op("scangraph::selective_state_update_triton", mutates_args={"state"})
    def selective_state_update_triton(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                                      B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
                                      z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
                                      dt_softplus: bool) -> torch.Tensor:
        acc = opmath_dtype(x.dtype)
        out = torch.empty_like(x)
        work = state if state.dtype == acc and state.is_contiguous() else state.to(acc).contiguous()
        bc = [(t.unsqueeze(1) if t.dim() == 2 else t).contiguous() for t in (B, C)]
        kernels.launch_selective_state_update(
            work, x.contiguous(), dt.contiguous(), A.to(acc).contiguous(), bc[0], bc[1],
            None if D is None else D.to(acc).contiguous(), None if z is None else z.contiguous(),
            None if dt_bias is None else dt_bias.to(acc).contiguous(), dt_softplus, out)
        if work is not state:
            state.copy_(work)
        return out

    register_autograd(autograd, "triton")


if hasattr(torch.ops.scangraph, "selective_scan"):  # else the compiled library is not loaded
    register_compiled(FAKES, autograd)
_register_triton_ops()
