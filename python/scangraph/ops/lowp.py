"""Low-precision GNN matmul: quantize, QTensor, qlinear (W8A8 / W4A8), qspmm and fake_quantize.

Symmetric quantization with fp32 scales (docs/lowp.md). The ops
`scangraph::quantize`, `scangraph::qlinear` and `scangraph::qspmm` have CPU and CUDA kernels
under one name and Triton twins `<op>_triton`; all carry fake kernels (torch.compile, export).
qlinear and qspmm are inference ops: their backward raises (train with fake_quantize, whose
straight-through gradient is plain PyTorch autograd around the quantize op).
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from scangraph import backend as _backend
from scangraph import reference
from scangraph.graph import CSRGraph
from scangraph.ops import _lowp_lib  # noqa: F401  (importing it registers the ops, their fakes and autograd)
from scangraph.ops._rules import check_reduce, check_tensor, dtype_name

ACTIVATIONS = (None, "none", "relu", "gelu", "silu")


@dataclass
class QTensor:
    """A symmetrically quantized tensor.

    data: int8 of `shape` (8 bits), or uint8 with the last dimension packed two values per byte
        (4 bits: element 2i in the low nibble of byte i, two's complement, odd lengths padded 0).
    scale: float32, (shape[axis],) for a per-channel axis, 0-d for axis=None.
    The value of element e is int(e) * scale[channel(e)]. Plain tensors and ints only, so
    torch.save / torch.load work (with weights_only=True after add_safe_globals([QTensor])).
    """
    data: torch.Tensor
    scale: torch.Tensor
    bits: int
    axis: Optional[int]
    shape: Tuple[int, ...]

    def int_values(self) -> torch.Tensor:
        """The integers as int8 of `shape` (4-bit values unpacked)."""
        if self.bits == 4:
            # Each nibble sign-extended by an arithmetic shift of int8: the low one moved up first.
            low = (self.data << 4).view(torch.int8) >> 4
            high = self.data.view(torch.int8) >> 4
            return torch.stack((low, high), dim=-1).flatten(-2)[..., :self.shape[-1]]
        return self.data

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """int_values() * scale in float32, as the kernels scale, then cast to `dtype`."""
        scale = self.scale.reshape([-1 if i == self.axis else 1 for i in range(len(self.shape))])
        return (self.int_values().float() * scale).to(dtype)

    @property
    def device(self) -> torch.device:
        return self.data.device

    def nbytes(self) -> int:
        """Bytes of data and scales."""
        return self.data.numel() * self.data.element_size() + self.scale.numel() * 4

    def to(self, device) -> "QTensor":
        return QTensor(self.data.to(device), self.scale.to(device), self.bits, self.axis, self.shape)


try:  # torch.load(weights_only=True) refuses classes it was not told about
    torch.serialization.add_safe_globals([QTensor])
except AttributeError:  # older torch without the allow-list
    pass

# ---- public functions --------------------------------------------------------------------------
# The largest magnitude of a symmetric `bits`-bit integer (quant_max of scangraph/lowp_params.h).
QMAX = {8: 127, 4: 7}


def _check_bits(op: str, bits) -> None:
    if bits not in (8, 4) or isinstance(bits, bool):
        raise ValueError(f"{op}: bits must be 8 or 4, got {bits!r}")


def _normalize_axis(op: str, axis, ndim: int) -> Optional[int]:
    if axis is None:
        return None
    if not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise ValueError(f"{op}: axis must be None or an int in [{-ndim}, {ndim}), got {axis!r}")
    return axis % ndim


def _compiled_op(op: str, backend: str, device: torch.device):
    """The op of the chosen backend, or None for the reference."""
    name = _backend.resolve(op, backend, device)
    return None if name == "reference" else _backend.op_for(op, name)


def quantize(x: torch.Tensor, bits: int = 8, axis: Optional[int] = 0, *, backend: str = "auto") -> QTensor:
    """Symmetric quantization: scale = absmax / qmax per index along `axis` (axis=None: one
    scale), q = clamp(round_half_even(x / scale), -qmax, qmax) with qmax = 127 (8 bits) or 7
    (4 bits, packed two per byte along the last dimension). A zero channel has scale 0.

    Args:
        x: float32 / float64 / float16 / bfloat16 tensor of any shape (at least 1-D), finite.
        axis: torch's per-channel convention: for (rows, cols), axis=0 is one scale per row
            (per-token activations; per-output-channel weights of an (out, in) weight).
    """
    _check_bits("quantize", bits)
    check_tensor("quantize", "x", x)
    if x.dim() == 0:
        raise ValueError("quantize: x must have at least one dimension, got a scalar")
    axis = _normalize_axis("quantize", axis, x.dim())
    compiled = _compiled_op("quantize", backend, x.device)
    if compiled is None:
        q, scale = reference.quantize(x, bits, axis)
        data = reference.pack_int4(q) if bits == 4 else q
    else:
        data, scale = compiled(x, bits, axis)
        if axis is None:
            scale = scale.reshape(())
    return QTensor(data, scale, bits, axis, tuple(x.shape))


def dequantize(q: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """data * scale as a float tensor of q's logical shape (4-bit data unpacked), in `dtype`."""
    return q.dequantize(dtype)


def _check_qtensor(op: str, name: str, q) -> None:
    if not isinstance(q, QTensor):
        raise TypeError(f"{op}: {name} must be a scangraph.QTensor (from scangraph.quantize), got {type(q).__name__}")


def qlinear(x: torch.Tensor, w: QTensor, bias: Optional[torch.Tensor] = None, activation: Optional[str] = None,
            act_bits: int = 8, out_dtype: Optional[torch.dtype] = None, *, backend: str = "auto") -> torch.Tensor:
    """out = act(x @ w.T + bias) with x quantized per row to int8 inside the kernel, an int8
    (W8A8) or packed int4 (W4A8) weight, int32 accumulation, and dequantization, bias and
    activation in an fp32 epilogue: out[m, n] = act(acc[m, n] * sx[m] * sw[n] + bias[n]).

    Args:
        x: (..., K) float32 / float64 / float16 / bfloat16.
        w: QTensor of an (N, K) weight, per output channel (axis=0) or per tensor (axis=None).
        bias: (N,) float or None. activation: None | "relu" | "gelu" | "silu".
        act_bits: 8 (the activations' width; int8 is the only one the kernels take).
        out_dtype: float32 | float16 | bfloat16 (default: x's dtype, float32 for float64), or
            torch.int32 for the exact integer accumulator (bias and activation must be None).
    Returns (..., N). Not differentiable (backward raises): use fake_quantize for training.
    """
    op = "qlinear"
    check_tensor(op, "x", x)
    _check_qtensor(op, "w", w)
    if act_bits != 8:
        raise ValueError(f"{op}: act_bits must be 8 (activations are quantized to int8), got {act_bits!r}")
    if len(w.shape) != 2:
        raise ValueError(f"{op}: w must quantize an (N, K) weight, got shape {w.shape}")
    if w.axis not in (0, None):
        raise ValueError(f"{op}: w must be quantized per output channel (axis=0) or per tensor (axis=None); "
                         f"per-input-channel scales (axis={w.axis}) cannot be applied after the integer product")
    if x.dim() == 0 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"{op}: x must be (..., K) with K = {w.shape[1]} (the weight's in_features), "
                         f"got shape {tuple(x.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if out_dtype not in (None, torch.float32, torch.float16, torch.bfloat16, torch.int32):
        got = dtype_name(out_dtype) if isinstance(out_dtype, torch.dtype) else repr(out_dtype)
        raise ValueError(f"{op}: out_dtype must be None, float32, float16, bfloat16 or int32, got {got}")
    if out_dtype == torch.int32 and (bias is not None or activation not in (None, "none")):
        raise ValueError(f"{op}: out_dtype=int32 returns the raw integer accumulator: bias and activation must be None")
    if w.device != x.device:
        raise ValueError(f"{op}: x is on {x.device} but w is on {w.device}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"{op}: bias must be a float ({w.shape[0]},) tensor or None, got {type(bias).__name__}")
    if bias is not None and (bias.shape != (w.shape[0],) or not bias.is_floating_point()):
        raise ValueError(f"{op}: bias must be a float ({w.shape[0]},) tensor, got {dtype_name(bias.dtype)} "
                         f"{tuple(bias.shape)}")
    if bias is not None and bias.device != x.device:
        raise ValueError(f"{op}: bias is on {bias.device} but x is on {x.device}")
    n = w.shape[0]
    w_scale = w.scale.float().reshape(-1).expand(n).contiguous() if w.axis is None else w.scale
    act = "none" if activation is None else activation
    x2 = x.reshape(-1, x.shape[-1])
    compiled = _compiled_op(op, backend, x.device)
    if compiled is None:
        out = reference.qlinear(x2, w.int_values(), w_scale, bias, act, out_dtype)
    else:
        out = compiled(x2, w.data, w_scale, w.bits, w.shape[1], bias, act, out_dtype)
    return out.reshape(tuple(x.shape[:-1]) + (n,))


def qspmm(graph: CSRGraph, xq: QTensor, reduce: str = "sum", edge_weight: Optional[torch.Tensor] = None, *,
          backend: str = "auto") -> torch.Tensor:
    """Message passing over int8 node features: out[i] = reduce_{j in N(i)} w_ij * sx[j] * q[j],
    dequantization fused per edge, fp32 accumulation (4x fewer feature bytes than fp32 spmm).

    Args:
        graph: CSRGraph. xq: QTensor of (num_cols, F) features, 8 bits, per row (axis=0) or per
            tensor. reduce: sum | mean | max | min. edge_weight: (num_edges,) float or None, in
            the caller's edge order (defaults to the graph's own weights).
    Returns (num_rows, F) float32. Not differentiable.
    """
    op = "qspmm"
    if not isinstance(graph, CSRGraph):
        raise TypeError(f"{op}: graph must be a scangraph.CSRGraph, got {type(graph).__name__}")
    _check_qtensor(op, "xq", xq)
    if xq.bits != 8:
        raise ValueError(f"{op}: xq must be 8-bit (quantize(x, bits=8, axis=0)), got {xq.bits} bits")
    if len(xq.shape) != 2 or xq.shape[0] != graph.num_cols:
        raise ValueError(f"{op}: xq must quantize ({graph.num_cols}, F) features (one row per source node), "
                         f"got shape {xq.shape}")
    if xq.axis not in (0, None):
        raise ValueError(f"{op}: xq must be quantized per row (axis=0) or per tensor, got axis={xq.axis}")
    check_reduce(op, reduce)
    if xq.device != graph.device:
        raise ValueError(f"{op}: xq is on {xq.device} but the graph is on {graph.device}")
    weight = edge_weight
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
            got = dtype_name(weight.dtype) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise TypeError(f"{op}: edge_weight must be a float ({graph.num_edges},) tensor, got {got}")
        if weight.device != graph.device:
            raise ValueError(f"{op}: edge_weight is on {weight.device} but the graph is on {graph.device}")
        if weight.shape != (graph.num_edges,):
            raise ValueError(f"{op}: edge_weight must be ({graph.num_edges},), got {tuple(weight.shape)}")
        weight = graph.to_csr_order(weight)  # the caller's edge order, gathered into CSR order
    elif graph.edge_weight is not None:
        weight = graph.edge_weight
    if weight is not None:
        weight = weight.float()
    scale = xq.scale.float().reshape(-1).expand(graph.num_cols).contiguous() if xq.axis is None else xq.scale
    compiled = _compiled_op(op, backend, xq.device)
    if compiled is None:
        return reference.qspmm(graph.rowptr, graph.col, xq.data, scale, reduce, weight, torch.float32)
    return compiled(graph.rowptr, graph.col, weight, xq.data, scale, reduce)


def fake_quantize(x: torch.Tensor, bits: int = 8, axis: Optional[int] = 0, scale: Optional[torch.Tensor] = None,
                  *, backend: str = "auto") -> torch.Tensor:
    """dequantize(quantize(x)) in x's dtype with a straight-through gradient (Degree-Quant,
    LPGNAS): the gradient passes unchanged where |x| <= qmax * scale and is 0 outside.

    Without `scale`, the scale is absmax / qmax per channel (the quantize op): its range holds
    every element, so the gradient passes everywhere. A given `scale` ((channels,) or 0-d,
    e.g. a running calibration) clamps outliers, which then get zero gradient. The backward is
    plain autograd (x - x.detach() masked), so torch.compile traces it.
    """
    _check_bits("fake_quantize", bits)
    check_tensor("fake_quantize", "x", x)
    axis = _normalize_axis("fake_quantize", axis, max(x.dim(), 1))
    if scale is not None:
        # Shape and dtype only: a check of the values would synchronise the device every step.
        channels = 1 if axis is None else x.shape[axis]
        if not isinstance(scale, torch.Tensor) or not scale.is_floating_point():
            got = dtype_name(scale.dtype) if isinstance(scale, torch.Tensor) else type(scale).__name__
            raise TypeError(f"fake_quantize: scale must be a float tensor, got {got}")
        if scale.numel() != channels or scale.dim() > 1:
            raise ValueError(f"fake_quantize: scale must hold {channels} value(s), one per index along axis "
                             f"{axis} (axis=None: one), as a 0-d or 1-D tensor, got shape {tuple(scale.shape)}")
        if scale.device != x.device:
            raise ValueError(f"fake_quantize: scale is on {scale.device} but x is on {x.device}")
        return _fake_quantize_with_scale(x, bits, axis, scale)
    q = quantize(x.detach(), bits, axis, backend=backend)
    return q.dequantize(x.dtype) + (x - x.detach())


def _fake_quantize_with_scale(x: torch.Tensor, bits: int, axis: Optional[int], scale: torch.Tensor) -> torch.Tensor:
    """fake_quantize with a given scale: q = clamp(round(x / scale), -qmax, qmax) in float32, as
    the quantize kernels round; a zero scale gives 0. Elementwise and memory-bound, so plain torch
    ops (torch.compile fuses them) rather than a kernel of its own."""
    qmax = QMAX[bits]
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    s = scale.float().reshape(shape)
    positive = s > 0
    x0 = x.detach()
    q = torch.round(x0.float() / torch.where(positive, s, 1.0)).clamp_(-qmax, qmax).masked_fill_(~positive, 0)
    passes = x0.abs() <= qmax * s  # the straight-through gradient stops where the clamp bites
    return (q * s).to(x.dtype) + (x - x0) * passes
