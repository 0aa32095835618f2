"""Benchmark cases of the causal depthwise convolution: forward and forward + backward of
scangraph.causal_conv1d_fn with SiLU, at Mamba's block shape (d_model 768: d_inner 1536, width 4).

The baseline is what Mamba code runs without the causal-conv1d package (mamba_ssm's and HF
transformers' fallback): torch's grouped conv1d padded by width - 1 on both sides, the first L
outputs kept, then SiLU. Bytes are the compulsory traffic: x read once and out written once,
2 * batch * dim * L elements (the backward reads x and grad_out and writes dx: 3 more).
"""
import torch
import torch.nn.functional as F

import scangraph
from scangraph import reference
from scangraph.bench.case import Case, Options, our_backends

OPS = ("causal_conv1d",)

# (batch, dim, L, width)
FULL = (4, 1536, 2048, 4)
QUICK = (2, 64, 256, 4)


def _label(batch, dim, seqlen, width):
    return f"b{batch} d{dim} L{seqlen} w{width}"


def torch_conv(x, weight, bias):
    """Mamba's fallback: nn.Conv1d(groups=dim, padding=width - 1), the first L outputs, SiLU."""
    width = weight.shape[1]
    return F.silu(F.conv1d(x, weight[:, None, :], bias, padding=width - 1, groups=weight.shape[0])[..., :x.shape[-1]])


def _case(shape, dtype, device, options):
    batch, dim, seqlen, width = shape
    element = torch.empty((), dtype=dtype).element_size()
    x = torch.randn(batch, dim, seqlen, dtype=dtype, device=device)
    weight = torch.randn(dim, width, dtype=dtype, device=device) * 0.5
    bias = torch.randn(dim, dtype=dtype, device=device)
    grad = torch.randn_like(x)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    case = Case(op="causal_conv1d", label=_label(*shape), dtype=dtype, device=device,
                bytes_fwd=element * 2 * batch * dim * seqlen,
                columns={"batch": batch, "dim": dim, "L": seqlen, "width": width})

    def add(impl, forward):
        def fwd_bwd():
            for t in leaves:
                t.grad = None
            forward(*leaves).backward(grad)
        case.impls[impl] = {"fwd": lambda: forward(x, weight, bias), "fwd+bwd": fwd_bwd}

    for backend in our_backends("causal_conv1d", device, options):
        add(f"scangraph.{backend}",
            lambda x, w, b, backend=backend: scangraph.causal_conv1d_fn(x, w, b, activation="silu", backend=backend))
    add("torch_conv1d", torch_conv)
    if options.quick:
        add("reference", lambda x, w, b: reference.causal_conv1d(x, w, b, silu=True))
    return case


def cases(device: torch.device, dtype: torch.dtype, options: Options):
    if "causal_conv1d" not in options.ops:
        return
    shape = QUICK if options.quick else FULL
    if options.only is None or options.only == _label(*shape):
        yield _case(shape, dtype, device, options)
