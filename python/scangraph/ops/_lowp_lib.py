"""The torch.library face of scangraph.ops.lowp: each op's fake kernel, its autograd (whose
backward runs on the forward's own backend) and its Triton twin `<op>_triton`, registered on
import. The public functions, their docstrings and their checks: scangraph/ops/lowp.py."""
from typing import Optional, Tuple

import torch

from scangraph.ops._twins import register_autograd, register_compiled
from scangraph.triton_kernels import UNAVAILABLE as _TRITON_UNAVAILABLE


# ---- fake kernels ------------------------------------------------------------------------------
def _quantize_fake(x, bits, axis):
    shape = list(x.shape)
    if bits == 4:
        shape[-1] = (shape[-1] + 1) // 2
    channels = 1 if axis is None else x.shape[axis]
    return (x.new_empty(shape, dtype=torch.uint8 if bits == 4 else torch.int8),
            x.new_empty((channels,), dtype=torch.float32))


def _qlinear_fake(x, w, w_scale, w_bits, in_features, bias, activation="none", out_dtype=None):
    torch._check(x.dim() == 2 and w.dim() == 2)
    dtype = out_dtype or (torch.float32 if x.dtype == torch.float64 else x.dtype)
    return x.new_empty((x.shape[0], w.shape[0]), dtype=dtype)


def _qlinear_isa_fake(x, w, w_scale, w_bits, in_features, bias, activation, out_dtype, isa):
    return _qlinear_fake(x, w, w_scale, w_bits, in_features, bias, activation, out_dtype)


def _qspmm_fake(rowptr, col, weight, x, x_scale, reduce="sum"):
    return x.new_empty((rowptr.shape[0] - 1, x.shape[1]), dtype=torch.float32)


def _qspmm_isa_fake(rowptr, col, weight, x, x_scale, reduce, isa):
    return _qspmm_fake(rowptr, col, weight, x, x_scale, reduce)


def _not_differentiable(name):
    def backward(ctx, *grads):
        raise RuntimeError(f"scangraph.{name} is an inference op and has no gradient; train with "
                           "scangraph.fake_quantize (straight-through estimator) on float weights instead")

    def setup(ctx, inputs, output):
        pass
    return backward, setup


def autograd(ops):
    """qlinear and qspmm are inference ops: their backward raises (ops/_twins.py)."""
    return {name: _not_differentiable(name) for name in ("qlinear", "qspmm")}


FAKES = {"quantize": _quantize_fake, "qlinear": _qlinear_fake, "qspmm": _qspmm_fake}


def _register_triton_ops():
    if _TRITON_UNAVAILABLE is not None:
        return
    from torch.library import triton_op

    from scangraph.triton_kernels import lowp as kernels

    @triton_op("scangraph::quantize_triton", mutates_args=())
    def quantize_triton(x: torch.Tensor, bits: int, axis: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        data, scale = _quantize_fake(x, bits, axis)
        kernels.launch_quantize(x.contiguous(), bits, axis, data, scale)
        return data, scale

    @triton_op("scangraph::qlinear_triton", mutates_args=())
    def qlinear_triton(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, w_bits: int, in_features: int,
                       bias: Optional[torch.Tensor], activation: str = "none",
                       out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        out = _qlinear_fake(x, w, w_scale, w_bits, in_features, bias, activation, out_dtype)
        kernels.launch_qlinear(x if x.stride(-1) == 1 else x.contiguous(), w.contiguous(),
                               w_scale.contiguous(), w_bits, in_features,
                               None if bias is None else bias.float().contiguous(), activation, out)
        return out

    @triton_op("scangraph::qspmm_triton", mutates_args=())
    def qspmm_triton(rowptr: torch.Tensor, col: torch.Tensor, weight: Optional[torch.Tensor], x: torch.Tensor,
                     x_scale: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
        out = _qspmm_fake(rowptr, col, weight, x, x_scale, reduce)
        kernels.launch_qspmm(rowptr, col, weight, x.contiguous(), x_scale.contiguous(), reduce, out)
        return out

    register_autograd(autograd, "triton")


if hasattr(torch.ops.scangraph, "qlinear"):  # else the compiled library is not loaded (or too old)
    register_compiled(FAKES, autograd)
    torch.library.register_fake("scangraph::_qlinear_cpu_isa")(_qlinear_isa_fake)
    torch.library.register_fake("scangraph::_qspmm_cpu_isa")(_qspmm_isa_fake)
_register_triton_ops()
