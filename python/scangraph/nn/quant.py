"""Low-precision layers: W8A8 / W4A8 `QuantLinear` and the GCN layer `QGCNConv` on it.

One design, two phases:
1. Quantization-aware training (QAT, the state after construction): the float `weight` is a
   Parameter and every forward (train or eval mode) simulates the integer arithmetic with
   `scangraph.fake_quantize` (symmetric; weights per output channel at `weight_bits`,
   activations per row at 8 bits) around fp32 `F.linear` / `spmm`. The straight-through
   gradient trains the float weights (Degree-Quant / LPGNAS style).
2. `convert()` (in place, once, returns the module): the weight is quantized for good and
   stored as int8 (or packed int4) buffers `qweight` + `weight_scale`, the float `weight` is
   dropped, and forward runs the integer kernels: `scangraph.qlinear` for the transform and,
   in QGCNConv, `scangraph.qspmm` over int8 per-row features for the aggregation. A converted
   module is inference only (the kernels have no gradient).

The quantizers of both phases are the same op with the same rounding, so a converted layer
reproduces its QAT forward up to fp32 summation order (and the rare message whose rounding that
order flips, one quantization step). Parameter names are nn.Linear's (`weight`, `bias`) and
GCNConv's (`lin.weight`, `bias`): a float layer's state_dict loads in either phase (a converted
module quantizes the incoming float weight).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from scangraph.graph import CSRGraph
from scangraph.nn.conv import GCNConv
from scangraph.nn.graph_cache import GraphLike
from scangraph.ops.lowp import QTensor, fake_quantize, qlinear, qspmm, quantize
from scangraph.ops.sparse import spmm

ACT_BITS = 8  # the kernels quantize activations to int8 only


def _check_bits(weight_bits: int, act_bits: int) -> None:
    if weight_bits not in (4, 8) or isinstance(weight_bits, bool):
        raise ValueError(f"weight_bits must be 8 or 4, got {weight_bits!r}")
    if act_bits != ACT_BITS:
        raise ValueError(f"act_bits must be {ACT_BITS} (the kernels quantize activations to int8), got {act_bits!r}")


def _fake_quantize_rows(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-row (per-token) fake quantization of (..., K): one scale per row of the flattened
    (-1, K) view, which is what qlinear's in-kernel quantization of x does."""
    return fake_quantize(x.reshape(-1, x.shape[-1]), bits, 0).view(x.shape)


class QuantLinear(nn.Module):
    """Linear layer y = x W^T + b with weight_bits-bit weights (8: W8A8, 4: W4A8) and 8-bit
    activations; QAT until `convert()`, integer kernels after (see the module docstring).

    Args: in_features, out_features, bias (as nn.Linear), weight_bits (8 or 4), act_bits (8).
    Parameters (QAT): `weight` (out, in), `bias` (out,), nn.Linear's names and init.
    After convert(): buffers `qweight` (out, in) int8 or (out, ceil(in / 2)) uint8 with two
    4-bit values per byte, `weight_scale` (out,) float32; `bias` stays a float Parameter.
    Shapes: x (..., in) -> (..., out). Converted, the output is float32 for float32 / float64
    inputs (qlinear's output dtype), else x's dtype.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, weight_bits: int = 8,
                 act_bits: int = ACT_BITS, device=None, dtype=None):
        super().__init__()
        _check_bits(weight_bits, act_bits)
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = in_features, out_features
        self.weight_bits, self.act_bits = weight_bits, act_bits
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.converted = False
        self.reset_parameters()

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_bits: int = 8) -> "QuantLinear":
        """A QAT layer holding a copy of `linear`'s weight and bias (call convert() to quantize)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, weight_bits,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        layer.load_state_dict(linear.state_dict())
        return layer

    def reset_parameters(self):
        if self.converted:
            raise RuntimeError("QuantLinear.reset_parameters: the layer is converted (its float weight is gone)")
        # nn.Linear's init, so a QuantLinear starts like the float layer it replaces.
        nn.Linear.reset_parameters(self)

    def quantized_weight(self) -> QTensor:
        """The weight as a QTensor: the stored integers once converted, else quantized now."""
        if self.converted:
            # .float(): module.half() / .to(dtype) casts float buffers, the kernels take fp32 scales.
            return QTensor(self.qweight, self.weight_scale.float(), self.weight_bits, 0,
                           (self.out_features, self.in_features))
        return quantize(self.weight.detach(), self.weight_bits, 0)

    @torch.no_grad()
    def convert(self) -> "QuantLinear":
        """Quantize the weight for good (per output channel) and switch forward to qlinear."""
        if self.converted:
            return self
        q = quantize(self.weight.detach().float(), self.weight_bits, 0)
        del self.weight  # the float weight is what conversion saves: drop it, don't keep a copy
        self.register_buffer("qweight", q.data)
        self.register_buffer("weight_scale", q.scale)
        self.converted = True
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.converted:
            return qlinear(x, self.quantized_weight(), self.bias, act_bits=self.act_bits)
        w = fake_quantize(self.weight, self.weight_bits, 0)
        return F.linear(_fake_quantize_rows(x, self.act_bits), w, self.bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A float state_dict (nn.Linear's, or a QAT layer's) loaded into a converted layer:
        # quantize its weight into the buffers, so checkpoints of either phase load.
        if self.converted and prefix + "weight" in state_dict and prefix + "qweight" not in state_dict:
            state_dict = dict(state_dict)
            weight = state_dict.pop(prefix + "weight")
            if tuple(weight.shape) != (self.out_features, self.in_features):
                error_msgs.append(f"size mismatch for {prefix}weight: expected "
                                  f"{(self.out_features, self.in_features)}, got {tuple(weight.shape)}")
                return
            q = quantize(weight.detach().float().to(self.qweight.device), self.weight_bits, 0)
            state_dict[prefix + "qweight"], state_dict[prefix + "weight_scale"] = q.data, q.scale
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"W{self.weight_bits}A{self.act_bits}{', converted' if self.converted else ''}")


class QGCNConv(GCNConv):
    """GCNConv (Kipf & Welling 2017: out = D^-1/2 (A + I) D^-1/2 X W^T + b, PyG's options and
    normalisation, cached graphs) in low precision: the transform X W^T is a QuantLinear
    (W8A8 / W4A8) and, with quantize_messages (default), the transformed node features are
    quantized per row to int8 before the aggregation, which then reads int8 features through
    `scangraph.qspmm` (4x fewer feature bytes moved along the edges). Edge weights (the
    normalisation) stay fp32. QAT until `convert()`; see the module docstring.

    Args: GCNConv's (in_channels, out_channels, improved, add_self_loops, normalize, bias),
        weight_bits (8 or 4), act_bits (8), quantize_messages (False: fp32 spmm aggregation).
    Parameters: `lin.weight` (out, in), `bias` (out,): GCNConv's and PyG's names, so their
        state_dict loads. Shapes: x (N, in_channels) -> (N, out_channels).
    """

    def __init__(self, in_channels: int, out_channels: int, improved: bool = False, add_self_loops: Optional[bool] = None,
                 normalize: bool = True, bias: bool = True, weight_bits: int = 8, act_bits: int = ACT_BITS,
                 quantize_messages: bool = True):
        _check_bits(weight_bits, act_bits)
        super().__init__(in_channels, out_channels, improved, add_self_loops, normalize, bias)
        self.weight_bits, self.act_bits, self.quantize_messages = weight_bits, act_bits, quantize_messages
        # GCNConv's float nn.Linear replaced by the quantized one; GCNConv's glorot init again.
        self.lin = QuantLinear(in_channels, out_channels, bias=False, weight_bits=weight_bits, act_bits=act_bits)
        self.reset_parameters()

    @property
    def converted(self) -> bool:
        return self.lin.converted

    def convert(self) -> "QGCNConv":
        """Integer kernels from now on (in place; inference only)."""
        self.lin.convert()
        return self

    def reset_parameters(self):
        if isinstance(self.lin, QuantLinear) and self.lin.converted:
            raise RuntimeError("QGCNConv.reset_parameters: the layer is converted (its float weight is gone)")
        super().reset_parameters()

    def forward(self, x: torch.Tensor, edge_index: GraphLike,
                edge_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        graph: CSRGraph = self.propagation_graph(x, edge_index, edge_weight)
        h = self.lin(x)
        # the graph's own (normalised) weights in every branch
        if not self.quantize_messages:
            out = spmm(graph, h, "sum")
        elif self.converted:
            out = qspmm(graph, quantize(h, ACT_BITS, 0), "sum")
        else:  # what qspmm will read: each node's features at 8 bits with its own scale
            out = spmm(graph, fake_quantize(h, ACT_BITS, 0), "sum")
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, W{self.weight_bits}A{self.act_bits}"
                f"{', int8 messages' if self.quantize_messages else ''}{', converted' if self.converted else ''}")


def convert_quantized(module: nn.Module) -> nn.Module:
    """Convert every QuantLinear / QGCNConv inside `module` (in place) and return it."""
    for sub in module.modules():
        if isinstance(sub, (QuantLinear, QGCNConv)):
            sub.convert()
    return module
