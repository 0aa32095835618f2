"""One table of op samples that every backend runs (tests/test_op_samples.py).

A sample is a public function of scangraph with keyword arguments built fresh for a dtype, the
arguments it differentiates, and how its results compare with the reference backend evaluated
in float64 on the same (already rounded) inputs. The family test files keep only what is
specific to a family (varlen equals separate calls, reverse equals flipped input, streaming in
pieces, peer parity).
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Tuple

import torch

import scangraph
from scangraph.ops._rules import opmath_dtype as opmath
from graphs import make_graph

FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# (backend, device): every backend that runs without a GPU, and the two that run on one (the
# `cuda`-marked parameters, skipped without a GPU; bench/gpu_check.sh runs them).
BACKENDS = (("cpp", "cpu"), ("cuda_emulated", "cpu"), ("triton", "cpu"), ("reference", "cpu"),
            ("cuda", "cuda"), ("triton", "cuda"))


@dataclass(frozen=True)
class Sample:
    op: str                                        # public function: scangraph.<op>
    case: str
    make: Callable[[torch.dtype], Dict[str, Any]]  # keyword arguments, fresh random values of a dtype
    grads: Tuple[str, ...] = ()                    # arguments that get gradients
    mutated: Tuple[str, ...] = ()                  # arguments updated in place, compared after the call
    dtypes: Tuple[torch.dtype, ...] = FLOATS
    exact: bool = False                            # integer results: equal to the reference on the same inputs
    tol: float = 1.0                               # widens atol of the outputs
    grad_tol: float = 1.0                          # widens atol of the gradients (sums over many terms)
    skip: Dict[str, str] = field(default_factory=dict)  # backend -> why it does not run this sample
    core: bool = False                             # one of the few per op that opcheck and the repeat test run

    @property
    def id(self):
        return f"{self.op}-{self.case}"


def rnd(*shape, dtype, scale=1.0, shift=0.0):
    """Standard-normal values, rounded once to the dtype (the reference sees the same values)."""
    return (torch.randn(*shape, dtype=torch.float64) * scale + shift).to(dtype)


def uniform(*shape, dtype, low=0.0, high=1.0):
    return (torch.rand(*shape, dtype=torch.float64) * (high - low) + low).to(dtype)


# ---- sparse message passing -------------------------------------------------------------------
def _spmm(graph_name, reduce, features, weight, index_dtype=torch.int64):
    def make(dtype):
        g = make_graph(graph_name, index_dtype)
        x = rnd(g.num_cols, *features, dtype=dtype)
        heads = features[0] if len(features) == 2 else 1
        w = None if weight is None else uniform(g.num_edges, *((heads,) if weight == "per_head" else ()),
                                                dtype=dtype, low=0.2, high=1.5)
        return dict(graph=g, x=x, reduce=reduce, edge_weight=w)
    return make


def _sddmm(graph_name, trailing):
    def make(dtype):
        g = make_graph(graph_name)
        return dict(graph=g, a=rnd(g.num_rows, *trailing, dtype=dtype), b=rnd(g.num_cols, *trailing, dtype=dtype))
    return make


def _gat(graph_name, heads, features, dropout=0.0):
    """With dropout, a CPU generator (test_op_samples reseeds it before every run, so each backend
    and the reference draw the same mask, on any device)."""
    def make(dtype):
        g = make_graph(graph_name)
        shape = (heads, features) if heads else (features,)
        a_shape = (heads,) if heads else ()
        kwargs = dict(graph=g, x=rnd(g.num_cols, *shape, dtype=dtype), alpha_src=rnd(g.num_cols, *a_shape, dtype=dtype),
                      alpha_dst=rnd(g.num_rows, *a_shape, dtype=dtype), negative_slope=0.2)
        if dropout:
            kwargs.update(dropout=dropout, generator=torch.Generator().manual_seed(int(torch.randint(1 << 30, ()))))
        return kwargs
    return make


def _common_neighbors(graph_name, pairs, features):
    def make(dtype):
        g = make_graph(graph_name)
        n = max(g.num_rows, 1)
        src, dst = torch.randint(0, n, (pairs,)), torch.randint(0, n, (pairs,))
        if g.num_rows == 0:
            src = dst = torch.zeros(0, dtype=torch.int64)
        return dict(graph=g, x=rnd(g.num_rows, features, dtype=dtype), src=src, dst=dst)
    return make


SPARSE = [
    Sample("spmm", f"{graph}-{reduce}-{weight}", _spmm(graph, reduce, feats, weight), grads=("x", "edge_weight"),
           grad_tol=2.0)
    for graph, feats in (("random", (33,)), ("hub", (2, 5)), ("isolated", (7,)), ("bipartite", (3, 4)),
                         ("no_edges", (6,)), ("empty", (5,)))
    for reduce in ("sum", "mean", "max", "min")
    for weight in ((None, "per_edge") if len(feats) == 1 else (None, "per_head"))
] + [
    Sample("spmm", "random-sum-int32-wide", _spmm("random", "sum", (130,), None, torch.int32), grads=("x",)),
    Sample("spmm", "hub-max-int32", _spmm("hub", "max", (9,), "per_edge", torch.int32), grads=("x", "edge_weight")),
    Sample("sddmm", "random", _sddmm("random", (19,)), grads=("a", "b")),
    Sample("sddmm", "hub-heads", _sddmm("hub", (3, 6)), grads=("a", "b")),
    Sample("sddmm", "bipartite-heads", _sddmm("bipartite", (2, 5)), grads=("a", "b")),
    Sample("sddmm", "no_edges", _sddmm("no_edges", (4,)), grads=("a", "b")),
    Sample("gat_aggregate", "random", _gat("random", 2, 8), grads=("x", "alpha_src", "alpha_dst"), grad_tol=2.0),
    Sample("gat_aggregate", "hub", _gat("hub", 3, 5), grads=("x", "alpha_src", "alpha_dst"), grad_tol=4.0),
    Sample("gat_aggregate", "isolated-one-head", _gat("isolated", 0, 7), grads=("x", "alpha_src", "alpha_dst"),
           grad_tol=2.0),
    Sample("gat_aggregate", "no_edges", _gat("no_edges", 2, 3), grads=("x", "alpha_src", "alpha_dst")),
    Sample("gat_aggregate", "hub-dropout", _gat("hub", 2, 6, dropout=0.4), grads=("x", "alpha_src", "alpha_dst"),
           grad_tol=4.0, core=True),
    Sample("common_neighbor_aggregate", "random", _common_neighbors("random", 30, 6), grads=("x",)),
    Sample("common_neighbor_aggregate", "hub", _common_neighbors("hub", 25, 5), grads=("x",)),
    Sample("common_neighbor_aggregate", "karate", _common_neighbors("karate", 40, 3), grads=("x",)),
    Sample("common_neighbor_aggregate", "empty", _common_neighbors("empty", 0, 4), grads=("x",)),
]


# ---- selective scan -----------------------------------------------------------------------------
def _scan(batch, dim, length, dstate, groups, full, reverse=False, varlen=None, initial=True):
    """groups 0: fixed (dim, N) B / C; None: varying (batch, N, L); g: (batch, g, N, L)."""
    def make(dtype):
        acc = opmath(dtype)
        b = 1 if varlen else batch
        if groups == 0:
            B, C = rnd(dim, dstate, dtype=acc), rnd(dim, dstate, dtype=acc)
        elif groups is None:
            B, C = rnd(b, dstate, length, dtype=dtype), rnd(b, dstate, length, dtype=dtype)
        else:
            B, C = rnd(b, groups, dstate, length, dtype=dtype), rnd(b, groups, dstate, length, dtype=dtype)
        cu = None if varlen is None else torch.tensor(varlen, dtype=torch.int32)
        states = b if cu is None else len(varlen) - 1
        return dict(u=rnd(b, dim, length, dtype=dtype), delta=uniform(b, dim, length, dtype=dtype, low=-0.5, high=1.0),
                    A=-uniform(dim, dstate, dtype=acc, low=0.1, high=2.0), B=B, C=C,
                    D=rnd(dim, dtype=acc) if full else None, z=rnd(b, dim, length, dtype=dtype) if full else None,
                    delta_bias=rnd(dim, dtype=acc, scale=0.5) if full else None, delta_softplus=full,
                    return_last_state=True,
                    initial_state=rnd(states, dim, dstate, dtype=acc) if initial else None,
                    cu_seqlens=cu, reverse=reverse)
    return make


def _mixed(fixed, batch, dim, length, dstate, groups, reverse=False):
    """B or C (`fixed`) as (dim, N), the other varying with `groups` groups, as mamba_ssm allows."""
    base = _scan(batch, dim, length, dstate, groups, True, reverse=reverse)

    def make(dtype):
        kwargs = base(dtype)
        kwargs[fixed] = rnd(dim, dstate, dtype=opmath(dtype))
        return kwargs
    return make


SCAN_GRADS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
SCAN = [
    Sample("selective_scan", "fixed-plain", _scan(2, 4, 37, 5, 0, False), grads=SCAN_GRADS, grad_tol=4.0),
    Sample("selective_scan", "fixed-full", _scan(1, 2, 70, 8, 0, True), grads=SCAN_GRADS, tol=4.0, grad_tol=8.0,
           core=True),
    Sample("selective_scan", "varying-full", _scan(2, 2, 41, 9, None, True), grads=SCAN_GRADS, tol=4.0,
           grad_tol=8.0, core=True),
    Sample("selective_scan", "groups2-reverse", _scan(1, 4, 66, 4, 2, True, reverse=True), grads=SCAN_GRADS,
           tol=4.0, grad_tol=8.0, core=True),
    Sample("selective_scan", "varlen", _scan(1, 2, 70, 4, 1, False, varlen=[0, 5, 5, 64, 70]), grads=SCAN_GRADS,
           tol=4.0, grad_tol=8.0, core=True),
    Sample("selective_scan", "N1-L1", _scan(2, 3, 1, 1, 0, True, initial=False), grads=SCAN_GRADS, tol=4.0),
    Sample("selective_scan", "N64", _scan(1, 1, 19, 64, None, False), grads=SCAN_GRADS, tol=4.0, grad_tol=8.0),
    Sample("selective_scan", "L0", _scan(2, 3, 0, 4, 0, False), grads=SCAN_GRADS),
    # Longer than a CUDA tile of 128 positions with few channels: the CUDA kernels cut the scan
    # into segments (summary, composition, full pass), and sequences straddle tiles and segments
    # (Triton: six segments of one chunk; CUDA: three tiles).
    Sample("selective_scan", "segments-varlen-reverse",
           _scan(1, 2, 330, 4, None, True, reverse=True, varlen=[0, 70, 71, 200, 200, 330]),
           grads=SCAN_GRADS, tol=4.0, grad_tol=8.0, core=True),
    Sample("selective_scan", "segments-fixed", _scan(2, 1, 300, 3, 0, True), grads=SCAN_GRADS, tol=4.0,
           grad_tol=8.0),
    # One of B / C fixed, the other varying: the kernels run both per channel.
    Sample("selective_scan", "B-fixed-C-groups2", _mixed("B", 2, 4, 37, 3, 2), grads=SCAN_GRADS, tol=4.0,
           grad_tol=8.0),
    Sample("selective_scan", "B-varying-C-fixed-reverse", _mixed("C", 1, 3, 70, 4, None, reverse=True),
           grads=SCAN_GRADS, tol=4.0, grad_tol=8.0),
]


def _state_update(batch, dim, dstate, groups, full):
    def make(dtype):
        acc = opmath(dtype)
        bc = (batch, groups, dstate) if groups else (batch, dstate)
        return dict(state=rnd(batch, dim, dstate, dtype=acc), x=rnd(batch, dim, dtype=dtype),
                    dt=uniform(batch, dim, dtype=dtype, low=-0.5, high=1.0),
                    A=-uniform(dim, dstate, dtype=acc, low=0.1, high=2.0),
                    B=rnd(*bc, dtype=dtype), C=rnd(*bc, dtype=dtype), D=rnd(dim, dtype=acc) if full else None,
                    z=rnd(batch, dim, dtype=dtype) if full else None,
                    dt_bias=rnd(dim, dtype=acc, scale=0.5) if full else None, dt_softplus=full)
    return make


SCAN += [
    Sample("selective_state_update", "plain", _state_update(3, 5, 7, 0, False), mutated=("state",), tol=2.0),
    Sample("selective_state_update", "groups-full", _state_update(2, 4, 16, 2, True), mutated=("state",), tol=2.0,
           core=True),
]


# ---- causal convolution ---------------------------------------------------------------------------
def _conv(batch, dim, length, width, bias=True, silu=True, mode="plain", final=False, weight_acc=False):
    """mode: plain, init (initial_states in, their gradient out) or seq (three packed sequences
    per row, empty and one-position ones included)."""
    def make(dtype):
        w_dtype = opmath(dtype) if weight_acc else dtype
        kwargs = dict(x=rnd(batch, dim, length, dtype=dtype), weight=rnd(dim, width, dtype=w_dtype, scale=0.5),
                      bias=rnd(dim, dtype=w_dtype) if bias else None, activation="silu" if silu else None,
                      return_final_states=final)
        if mode == "init":
            kwargs["initial_states"] = rnd(batch, dim, width - 1, dtype=dtype)
        if mode == "seq":
            cuts = torch.sort(torch.randint(0, length + 1, (batch, 3)), dim=1).values
            kwargs["seq_idx"] = (torch.arange(length)[None, :, None] >= cuts[:, None, :]).sum(-1).to(torch.int32)
        return kwargs
    return make


def _conv_update(batch, dim, seqlen, width, state_len, circular=False, slots=False):
    """slots: four cache slots for three rows, the middle row a padding one (-1)."""
    def make(dtype):
        rows = 4 if slots else batch
        kwargs = dict(x=rnd(batch, dim, seqlen, dtype=dtype), conv_state=rnd(rows, dim, state_len, dtype=dtype),
                      weight=rnd(dim, width, dtype=dtype, scale=0.5), bias=rnd(dim, dtype=dtype), activation="silu")
        if circular:  # negative ones too: the index wraps as torch.remainder's
            kwargs["cache_seqlens"] = torch.randint(-3 * state_len, 3 * state_len, (batch,), dtype=torch.int32)
        if slots:
            kwargs["conv_state_indices"] = torch.tensor([3, -1, 0], dtype=torch.int32)
        return kwargs
    return make


CONV_GRADS = ("x", "weight", "bias", "initial_states")
CONV = [
    Sample("causal_conv1d_fn", "w4-silu-final", _conv(2, 5, 37, 4, final=True), grads=CONV_GRADS, grad_tol=2.0,
           core=True),
    Sample("causal_conv1d_fn", "w3-init-final", _conv(2, 3, 20, 3, mode="init", final=True), grads=CONV_GRADS,
           grad_tol=2.0, core=True),
    Sample("causal_conv1d_fn", "w2-seq_idx", _conv(3, 4, 40, 2, mode="seq"), grads=CONV_GRADS, grad_tol=2.0,
           core=True),
    Sample("causal_conv1d_fn", "w4-nobias-linear-fp32-weight", _conv(1, 6, 19, 4, bias=False, silu=False,
                                                                     weight_acc=True), grads=CONV_GRADS),
    # Longer than a gradient block (256 positions): the weight gradients' partials span blocks.
    Sample("causal_conv1d_fn", "w4-blocks-init", _conv(2, 2, 600, 4, mode="init"), grads=CONV_GRADS, grad_tol=4.0),
    Sample("causal_conv1d_fn", "w1", _conv(2, 3, 9, 1, final=True), grads=CONV_GRADS),
    Sample("causal_conv1d_fn", "short-init-final", _conv(2, 3, 2, 4, mode="init", final=True), grads=CONV_GRADS),
    Sample("causal_conv1d_fn", "L0", _conv(2, 3, 0, 4, mode="init", final=True), grads=CONV_GRADS),
    Sample("causal_conv1d_update", "one-step", _conv_update(3, 5, 1, 4, 3), mutated=("conv_state",), core=True),
    Sample("causal_conv1d_update", "chunk-long-state", _conv_update(2, 4, 3, 3, 5), mutated=("conv_state",)),
    Sample("causal_conv1d_update", "circular-slots", _conv_update(3, 4, 2, 4, 5, circular=True, slots=True),
           mutated=("conv_state",), core=True),
    Sample("causal_conv1d_update", "circular-wraps", _conv_update(2, 3, 7, 2, 3, circular=True),
           mutated=("conv_state",)),
]


# ---- prefix attention -------------------------------------------------------------------------
def _prefix(batch, length, heads, dim, dim_v, per_batch_query=False, initial=False, varlen=None):
    def make(dtype):
        acc = opmath(dtype)
        b = 1 if varlen else batch
        seqs = b if varlen is None else len(varlen) - 1
        q = rnd(*((b,) if per_batch_query else ()), heads, dim, dtype=dtype)
        state = None
        if initial:
            state = (rnd(seqs, heads, dtype=acc), uniform(seqs, heads, dtype=acc, low=0.5, high=1.5),
                     rnd(seqs, heads, dim_v, dtype=acc))
        return dict(q=q, k=rnd(b, length, heads, dim, dtype=dtype), v=rnd(b, length, heads, dim_v, dtype=dtype),
                    initial_state=state, return_state=True,
                    cu_seqlens=None if varlen is None else torch.tensor(varlen, dtype=torch.int32))
    return make


def _prefix_step(batch, heads, dim, dim_v):
    def make(dtype):
        acc = opmath(dtype)
        state = (rnd(batch, heads, dtype=acc), uniform(batch, heads, dtype=acc, low=0.5, high=1.5),
                 rnd(batch, heads, dim_v, dtype=acc))
        return dict(state=state, q=rnd(heads, dim, dtype=dtype), k_t=rnd(batch, heads, dim, dtype=dtype),
                    v_t=rnd(batch, heads, dim_v, dtype=dtype))
    return make


PREFIX_GRADS = ("q", "k", "v", "initial_state")
PREFIX = [
    Sample("prefix_attention", "shared-query", _prefix(2, 45, 3, 8, 5), grads=PREFIX_GRADS, grad_tol=4.0),
    Sample("prefix_attention", "per-batch-query-state", _prefix(2, 33, 2, 16, 16, True, True), grads=PREFIX_GRADS,
           grad_tol=4.0, core=True),
    Sample("prefix_attention", "varlen", _prefix(1, 40, 2, 4, 6, True, True, varlen=[0, 13, 13, 40]),
           grads=PREFIX_GRADS, grad_tol=4.0, core=True),
    Sample("prefix_attention", "L1", _prefix(3, 1, 1, 2, 3), grads=PREFIX_GRADS),
    # Few (sequence, head) pairs over a long L: the CUDA kernels cut it into segments of 32,
    # which straddle the packed sequences.
    Sample("prefix_attention", "segments-varlen", _prefix(1, 300, 1, 8, 40, True, True, varlen=[0, 5, 5, 170, 300]),
           grads=PREFIX_GRADS, grad_tol=4.0, core=True),
    Sample("prefix_attention_step", "step", _prefix_step(2, 3, 8, 5), mutated=("state",), core=True),
]


# ---- low precision --------------------------------------------------------------------------------
def _quantize(shape, bits, axis):
    def make(dtype):
        return dict(x=rnd(*shape, dtype=dtype, scale=3.0), bits=bits, axis=axis)
    return make


def _qlinear(m, k, n, bits, activation, bias, out_dtype=None):
    def make(dtype):
        w = scangraph.quantize(torch.randn(n, k), bits, 0, backend="reference")
        return dict(x=rnd(m, k, dtype=dtype), w=w, bias=torch.randn(n) if bias else None, activation=activation,
                    out_dtype=out_dtype)
    return make


def _qspmm(graph_name, features, reduce, weighted):
    def make(dtype):
        g = make_graph(graph_name)
        xq = scangraph.quantize(torch.randn(g.num_cols, features, dtype=dtype).float(), 8, 0, backend="reference")
        w = torch.rand(g.num_edges) + 0.2 if weighted else None
        return dict(graph=g, xq=xq, reduce=reduce, edge_weight=w)
    return make


LOWP = [
    Sample("quantize", f"{'x'.join(map(str, shape))}-int{bits}-axis{axis}", _quantize(shape, bits, axis), exact=True)
    for shape, axis in (((37, 21), 0), ((37, 21), 1), ((5, 6, 7), None), ((4, 9), -1), ((0, 5), 0))
    for bits in (8, 4)
] + [
    Sample("qlinear", f"w{bits}a8-{act}-{'bias' if bias else 'nobias'}", _qlinear(70, 50, 40, bits, act, bias),
           exact=True)
    for bits in (8, 4) for act, bias in (("relu", True), ("gelu", False), ("silu", True), (None, False))
] + [
    Sample("qlinear", "int32-out", _qlinear(33, 70, 17, 8, None, False, torch.int32), exact=True),
    Sample("qlinear", "m0", _qlinear(0, 16, 8, 8, "relu", True), exact=True),
] + [
    Sample("qspmm", f"{graph}-{reduce}-{'weighted' if w else 'plain'}", _qspmm(graph, f, reduce, w), exact=True,
           dtypes=(torch.float32,))
    for graph, f in (("random", 37), ("hub", 140), ("no_edges", 4))
    for reduce in ("sum", "mean", "max", "min") for w in (False, True)
] + [
    Sample("fake_quantize", "int8-rows", lambda dtype: dict(x=rnd(9, 13, dtype=dtype), bits=8, axis=0), grads=("x",),
           exact=True),
    Sample("fake_quantize", "int4-tensor", lambda dtype: dict(x=rnd(4, 5, 6, dtype=dtype), bits=4, axis=None),
           grads=("x",), exact=True),
]

# opcheck and the repeat test run these: each raw op path once, the split (hub) rows included.
CORE = {"spmm-hub-sum-per_head", "spmm-hub-max-per_head", "spmm-random-mean-per_edge", "spmm-bipartite-min-None",
        "sddmm-hub-heads", "gat_aggregate-hub", "gat_aggregate-isolated-one-head", "common_neighbor_aggregate-hub",
        "quantize-37x21-int8-axis0", "quantize-5x6x7-int4-axisNone", "qlinear-w8a8-gelu-nobias",
        "qlinear-w4a8-relu-bias", "qlinear-int32-out", "qspmm-hub-sum-weighted", "qspmm-hub-max-plain",
        "fake_quantize-int8-rows"}
SAMPLES = [s if s.core or s.id not in CORE else Sample(**{**s.__dict__, "core": True})
           for s in SPARSE + SCAN + CONV + PREFIX + LOWP]
assert CORE <= {s.id for s in SAMPLES}, CORE - {s.id for s in SAMPLES}


def to_device(value, device):
    """Tensors, graphs, QTensors and tuples of them on `device` (other values as they are)."""
    if isinstance(value, (torch.Tensor, scangraph.CSRGraph, scangraph.QTensor)):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(to_device(v, device) for v in value)
    return value


def to_reference(value):
    """Float tensors (and tuples of them) in float64, requiring grad as the original did."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().to(torch.float64, copy=True).requires_grad_(value.requires_grad)
    if isinstance(value, tuple):
        return tuple(to_reference(v) for v in value)
    return value


def tensors_of(result):
    """The tensors of a result, in order: tensors, tuples, QTensors (data, scale)."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, scangraph.QTensor):
        return [result.data, result.scale]
    if isinstance(result, (tuple, list)):
        return [t for r in result for t in tensors_of(r)]
    return []
