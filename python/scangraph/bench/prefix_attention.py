"""Benchmark cases of prefix-scan attention (Aaren): forward and forward + backward of
scangraph.prefix_attention with one learned query per head.

Baselines are what a user would write otherwise:
  sdpa_causal   torch's scaled_dot_product_attention with the query repeated at every position
                (q broadcast to (batch, heads, L, d), is_causal=True): O(L^2) work
  torch_cumsum  plain PyTorch: scores, exp relative to each sequence's global max (so nothing
                overflows), cumulative sums of the weights and the weighted values: O(L)
                work, but (batch, L, heads, dv) intermediates per step of the formula
  reference     scangraph.reference.prefix_attention (the L x L weights materialised)
Bytes are the compulsory traffic of docs/prefix_attention.md: k and v read once, o written once,
s * batch * L * heads * (d + 2 dv) (the backward moves as much again).
"""
import torch

import scangraph
from scangraph import reference
from scangraph.bench.case import Case, Options, our_backends

OPS = ("prefix_attention",)

# (batch, heads, d, dv, L): the CPU size, and a tiny one for --quick. The causal-SDPA
# baseline (one query repeated L times: L^2 work) takes about 16 s per forward + backward at
# L = 4096 on a 2-core CPU: the default run times it at L = 1024 (SDPA_SHAPE), --full at both.
FULL = (4, 8, 64, 64, 4096)
SDPA_SHAPE = (4, 8, 64, 64, 1024)
QUICK = (2, 2, 16, 16, 128)


def _label(batch, heads, dim, dim_v, seqlen):
    return f"b{batch} h{heads} d{dim}" + ("" if dim_v == dim else f" dv{dim_v}") + f" L{seqlen}"


def torch_cumsum(q, k, v, scale):
    """Prefix attention as a user would write it in PyTorch (one query per head)."""
    s = torch.einsum("hd,blhd->blh", q, k) * scale
    p = torch.exp(s - s.amax(dim=1, keepdim=True))   # <= 1; the shift cancels in the ratio
    return (p[..., None] * v).cumsum(1) / p.cumsum(1)[..., None]


def sdpa_causal(q, k, v, scale):
    batch, seqlen, heads, dim = k.shape
    queries = q[None, :, None, :].expand(batch, heads, seqlen, dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        queries, k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=scale)
    return out.transpose(1, 2)


def _case(shape, dtype: torch.device, device: torch.device, options: Options, sdpa: bool = True,
          cumsum: bool = True) -> Case:
    batch, heads, dim, dim_v, seqlen = shape
    element = torch.empty((), dtype=dtype).element_size()
    scale = dim ** -0.5
    q = torch.randn(heads, dim, dtype=dtype, device=device)
    k = torch.randn(batch, seqlen, heads, dim, dtype=dtype, device=device)
    v = torch.randn(batch, seqlen, heads, dim_v, dtype=dtype, device=device)
    grad = torch.randn(batch, seqlen, heads, dim_v, dtype=dtype, device=device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    case = Case(op="prefix_attention", label=_label(*shape), dtype=dtype, device=device,
                bytes_fwd=element * batch * seqlen * heads * (dim + 2 * dim_v),
                columns={"batch": batch, "heads": heads, "d": dim, "dv": dim_v, "L": seqlen})

    def add(impl, forward):
        def fwd_bwd():
            for t in leaves:
                t.grad = None
            forward(*leaves).backward(grad)
        case.impls[impl] = {"fwd": lambda: forward(q, k, v), "fwd+bwd": fwd_bwd}

    for backend in our_backends("prefix_attention", device, options):
        add(f"scangraph.{backend}", lambda q, k, v, b=backend: scangraph.prefix_attention(q, k, v, backend=b))
    if sdpa:
        add("sdpa_causal", lambda q, k, v: sdpa_causal(q, k, v, scale))
    if cumsum:
        add("torch_cumsum", lambda q, k, v: torch_cumsum(q, k, v, scale))
    if options.full or options.quick:
        add("reference", lambda q, k, v: reference.prefix_attention(q, k, v, scale)[0])
    return case


def cases(device: torch.device, dtype: torch.dtype, options: Options):
    if "prefix_attention" not in options.ops:
        return
    if options.quick:
        shapes = [(QUICK, True, True)]
    elif options.full or options.gpu(device):
        shapes = [(FULL, True, True)]
    else:  # the headline against the cumsum formulation, and causal SDPA where it runs in seconds
        shapes = [(FULL, False, True), (SDPA_SHAPE, True, False)]
    for shape, sdpa, cumsum in shapes:
        if options.only is None or options.only == _label(*shape):
            yield _case(shape, dtype, device, options, sdpa, cumsum)
