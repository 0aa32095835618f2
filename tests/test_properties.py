"""Property tests (hypothesis): random shapes, dtypes, strides and graphs, the C++ backend against
scangraph.reference, forward and backward.

Hypothesis draws the sizes, flags and a seed; the tensors come from a torch generator seeded with
it, so a failing example is replayed exactly and shrinks towards small sizes. The reference runs in
float64 on the inputs as rounded to the tested dtype, so only the kernel's own error is measured.
"""
import os

import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import scangraph
from scangraph import CSRGraph, reference
from scangraph.ops._rules import opmath_dtype
from conftest import assert_close

# Derandomized: CI runs the same examples every time (a red run is reproducible); set
# SCANGRAPH_HYPOTHESIS_EXPLORE=1 to draw fresh examples on every run while developing.
SETTINGS = dict(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                derandomize=os.environ.get("SCANGRAPH_HYPOTHESIS_EXPLORE") != "1")
DTYPES = st.sampled_from([torch.float64, torch.float32])
SEEDS = st.integers(0, 2**31 - 1)


def _rand(generator, *shape, dtype=torch.float64, transposed=False):
    """Random values rounded to `dtype`; transposed: the same values seen through a transposed
    (non-contiguous) view of storage laid out the other way round."""
    if transposed and len(shape) >= 2:
        t = torch.randn(*shape[::-1], generator=generator, dtype=torch.float64).to(dtype)
        return t.permute(*range(len(shape) - 1, -1, -1))
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)


@st.composite
def graphs(draw, square=False):
    """CSR graphs with empty rows, self loops and duplicate edges (edges drawn with replacement
    from few nodes), or rectangular ones with num_cols != num_rows."""
    rows = draw(st.integers(0, 12))
    cols = rows if square or draw(st.booleans()) else draw(st.integers(1, 12))
    if rows == 0 or cols == 0:
        edges = 0
    else:
        edges = draw(st.integers(0, 40))
    seed = draw(SEEDS)
    g = torch.Generator().manual_seed(seed)
    dst = torch.randint(0, max(rows, 1), (edges,), generator=g)
    # Half the time only a few rows receive edges: many empty rows.
    if edges and draw(st.booleans()):
        dst = dst % max(1, rows // 3)
    src = torch.randint(0, max(cols, 1), (edges,), generator=g)
    if edges and draw(st.booleans()):
        src[: edges // 3] = dst[: edges // 3] % cols  # self loops (for square graphs)
    order = torch.argsort(dst * max(cols, 1) + src, stable=True)
    rowptr = torch.searchsorted(dst[order], torch.arange(rows + 1))
    index_dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    return CSRGraph(rowptr, src[order].to(index_dtype), num_cols=cols)


def _grads(out, leaves, grad):
    leaves = [t for t in leaves if t is not None]
    return _grad((out * grad).sum(), leaves)


def _grad(loss, leaves):
    """Gradients of a scalar loss, zeros where a leaf does not reach it (e.g. the reference on empty
    input, whose output is a fresh zero tensor)."""
    leaves = [t for t in leaves if t is not None]
    if not loss.requires_grad:
        return [torch.zeros_like(t) for t in leaves]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [torch.zeros_like(t) if d is None else d for d, t in zip(grads, leaves)]


def _to64(*tensors):
    return [None if t is None else t.detach().double().requires_grad_() for t in tensors]


# ---- sparse ----------------------------------------------------------------------------------
@settings(**SETTINGS)
@given(graph=graphs(), reduce=st.sampled_from(["sum", "mean", "max", "min"]), dtype=DTYPES,
       heads=st.sampled_from([None, 1, 3]), features=st.integers(0, 9), weighted=st.booleans(),
       transposed=st.booleans(), seed=SEEDS)
def test_spmm(graph, reduce, dtype, heads, features, weighted, transposed, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (graph.num_cols, features) if heads is None else (graph.num_cols, heads, features)
    x = _rand(g, *shape, dtype=dtype, transposed=transposed).requires_grad_()
    w = None
    # fp32 products of weights can reorder near-ties of max / min against the fp64 reference:
    # weights there only in float64.
    if weighted and (reduce in ("sum", "mean") or dtype == torch.float64):
        w = torch.rand(graph.num_edges, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    out = scangraph.spmm(graph, x, reduce, w, backend="cpp")
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
    got = _grads(out, [x, w], grad)
    x64, w64 = _to64(x, w)
    ref = reference.spmm(graph.rowptr, graph.col, x64, reduce, w64)
    want = _grads(ref, [x64, w64], grad.double())
    assert out.shape == ref.shape and out.dtype == dtype
    assert_close(out, ref, dtype)
    for a, b in zip(got, want):
        assert_close(a, b, dtype, scale=4)


@settings(**SETTINGS)
@given(graph=graphs(), dtype=DTYPES, heads=st.sampled_from([None, 2]), features=st.integers(0, 9),
       transposed=st.booleans(), seed=SEEDS)
def test_sddmm(graph, dtype, heads, features, transposed, seed):
    g = torch.Generator().manual_seed(seed)
    tail = (features,) if heads is None else (heads, features)
    a = _rand(g, graph.num_rows, *tail, dtype=dtype, transposed=transposed).requires_grad_()
    b = _rand(g, graph.num_cols, *tail, dtype=dtype).requires_grad_()
    out = scangraph.sddmm(graph, a, b, backend="cpp")
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
    got = _grads(out, [a, b], grad)
    a64, b64 = _to64(a, b)
    ref = reference.sddmm(graph.rowptr, graph.col, a64, b64)
    assert out.shape == ref.shape
    assert_close(out, ref, dtype)
    for mine, theirs in zip(got, _grads(ref, [a64, b64], grad.double())):
        assert_close(mine, theirs, dtype, scale=4)


@settings(**SETTINGS)
@given(graph=graphs(), dtype=DTYPES, heads=st.integers(1, 3), features=st.integers(1, 7),
       slope=st.sampled_from([0.0, 0.2, 1.0]), transposed=st.booleans(), seed=SEEDS)
def test_gat_aggregate(graph, dtype, heads, features, slope, transposed, seed):
    g = torch.Generator().manual_seed(seed)
    x = _rand(g, graph.num_cols, heads, features, dtype=dtype, transposed=transposed).requires_grad_()
    a_src = _rand(g, graph.num_cols, heads, dtype=dtype, transposed=transposed).requires_grad_()
    a_dst = _rand(g, graph.num_rows, heads, dtype=dtype).requires_grad_()
    out = scangraph.gat_aggregate(graph, x, a_src, a_dst, slope, backend="cpp")
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
    got = _grads(out, [x, a_src, a_dst], grad)
    inputs64 = _to64(x, a_src, a_dst)
    ref = reference.gat_aggregate(graph.rowptr, graph.col, *inputs64, slope)
    assert_close(out, ref, dtype)
    for mine, theirs in zip(got, _grads(ref, inputs64, grad.double())):
        assert_close(mine, theirs, dtype, scale=8)


@settings(**SETTINGS)
@given(graph=graphs(square=True), dtype=DTYPES, features=st.integers(0, 6), pairs=st.integers(0, 15),
       transposed=st.booleans(), seed=SEEDS)
def test_common_neighbor_aggregate(graph, dtype, features, pairs, transposed, seed):
    g = torch.Generator().manual_seed(seed)
    n = graph.num_rows
    pairs = pairs if n else 0
    src, dst = (torch.randint(0, max(n, 1), (pairs,), generator=g) for _ in range(2))
    x = _rand(g, n, features, dtype=dtype, transposed=transposed).requires_grad_()
    out = scangraph.common_neighbor_aggregate(graph, x, src, dst, backend="cpp")
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
    (got,) = _grads(out, [x], grad)
    (x64,) = _to64(x)
    ref = reference.common_neighbor_aggregate(graph.rowptr, graph.col, x64, src, dst)
    assert out.shape == ref.shape
    assert_close(out, ref, dtype)
    assert_close(got, _grads(ref, [x64], grad.double())[0], dtype)


# ---- selective scan --------------------------------------------------------------------------
@st.composite
def scan_cases(draw):
    dim = draw(st.integers(1, 6))
    varlen = draw(st.booleans())
    batch = 1 if varlen else draw(st.integers(1, 2))
    length = draw(st.integers(0, 70))
    cu = None
    if varlen:
        cuts = sorted(draw(st.lists(st.integers(0, length), max_size=3)))
        cu = torch.tensor([0] + cuts + [length], dtype=torch.int32)
    groups = draw(st.sampled_from([0, None] + [g for g in (1, 2, 3) if dim % g == 0]))
    return dict(batch=batch, dim=dim, length=length, dstate=draw(st.integers(1, 5)), groups=groups, cu=cu,
                with_d=draw(st.booleans()), with_z=draw(st.booleans()), with_bias=draw(st.booleans()),
                softplus=draw(st.booleans()), reverse=draw(st.booleans()), initial=draw(st.booleans()),
                transposed=draw(st.booleans()))


@settings(**SETTINGS)
@given(case=scan_cases(), dtype=DTYPES, seed=SEEDS)
def test_selective_scan(case, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    batch, dim, length, dstate, groups = (case[k] for k in ("batch", "dim", "length", "dstate", "groups"))
    acc = opmath_dtype(dtype)
    u = _rand(g, batch, dim, length, dtype=dtype, transposed=case["transposed"])
    # Raw deltas may be negative only ahead of the softplus: a negative step makes exp(delta A) > 1,
    # the state grows without bound, and no fp32 tolerance relative to the output holds.
    low = -0.5 if case["softplus"] else 0.01
    delta = (torch.rand(batch, dim, length, generator=g, dtype=torch.float64) * (1.0 - low) + low).to(dtype)
    A = (-torch.rand(dim, dstate, generator=g, dtype=torch.float64) * 2 - 0.1).to(acc)
    if groups == 0:
        B, C = _rand(g, dim, dstate, dtype=acc), _rand(g, dim, dstate, dtype=acc)
    elif groups is None:
        B, C = _rand(g, batch, dstate, length, dtype=dtype), _rand(g, batch, dstate, length, dtype=dtype)
    else:
        B = _rand(g, batch, groups, dstate, length, dtype=dtype)
        C = _rand(g, batch, groups, dstate, length, dtype=dtype, transposed=case["transposed"])
    D = _rand(g, dim, dtype=acc) if case["with_d"] else None
    z = _rand(g, batch, dim, length, dtype=dtype) if case["with_z"] else None
    bias = _rand(g, dim, dtype=acc) * 0.5 if case["with_bias"] else None
    if bias is not None and not case["softplus"]:
        bias = bias.abs()  # delta + bias is the step itself: negative, it too makes the state grow
    states = batch if case["cu"] is None else case["cu"].numel() - 1
    h0 = _rand(g, states, dim, dstate, dtype=acc) if case["initial"] else None
    inputs = [t if t is None else t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias, h0)]

    def run(tensors, backend):
        u, delta, A, B, C, D, z, bias, h0 = tensors
        return scangraph.selective_scan(u, delta, A, B, C, D, z, bias, case["softplus"], True, initial_state=h0,
                                        cu_seqlens=case["cu"], reverse=case["reverse"], backend=backend)

    out, last = run(inputs, "cpp")
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grad_last = torch.randn(last.shape, generator=g, dtype=torch.float64)
    leaves = [t for t in inputs if t is not None]
    got = _grad((out * grad_out.to(dtype)).sum() + (last * grad_last.to(last.dtype)).sum(), leaves)
    inputs64 = _to64(*inputs)
    ref_out, ref_last = run(inputs64, "reference")
    want = _grad((ref_out * grad_out).sum() + (ref_last * grad_last).sum(), inputs64)
    scale = 1 if dtype == torch.float64 else 8   # the state sums N terms per step
    assert out.shape == ref_out.shape and last.shape == ref_last.shape
    assert_close(out, ref_out, dtype, scale)
    assert_close(last, ref_last, dtype, scale)
    for mine, theirs in zip(got, want):
        assert_close(mine, theirs, dtype, 4 * scale)   # parameter gradients sum over batch and L


# ---- prefix attention ------------------------------------------------------------------------
@settings(**SETTINGS)
@given(dtype=DTYPES, batch=st.integers(1, 3), length=st.integers(0, 20), heads=st.integers(1, 3),
       dim=st.integers(1, 6), dim_v=st.integers(1, 5), per_batch_q=st.booleans(), varlen=st.booleans(),
       initial=st.booleans(), transposed=st.booleans(), cuts=st.lists(st.integers(0, 20), max_size=3), seed=SEEDS)
def test_prefix_attention(dtype, batch, length, heads, dim, dim_v, per_batch_q, varlen, initial, transposed,
                          cuts, seed):
    g = torch.Generator().manual_seed(seed)
    cu = None
    if varlen:
        batch = 1
        cu = torch.tensor([0] + sorted(min(c, length) for c in cuts) + [length], dtype=torch.int32)
    seqs = batch if cu is None else cu.numel() - 1
    acc = opmath_dtype(dtype)
    q = _rand(g, *((batch, heads, dim) if per_batch_q else (heads, dim)), dtype=dtype)
    k = _rand(g, batch, heads, length, dim, dtype=dtype).transpose(1, 2) if transposed else \
        _rand(g, batch, length, heads, dim, dtype=dtype)
    v = _rand(g, batch, length, heads, dim_v, dtype=dtype)
    state = None
    if initial:
        state = (_rand(g, seqs, heads, dtype=acc), torch.rand(seqs, heads, generator=g, dtype=torch.float64).to(acc)
                 + 0.5, _rand(g, seqs, heads, dim_v, dtype=acc))
    leaves = [q, k, v] + (list(state) if state else [])
    leaves = [t.requires_grad_() for t in leaves]
    q, k, v = leaves[:3]
    state = tuple(leaves[3:]) if initial else None
    o, last = scangraph.prefix_attention(q, k, v, initial_state=state, return_state=True, cu_seqlens=cu,
                                         backend="cpp")
    grads_in = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (o, *last)]
    # m (the running max) is not differentiable in a useful sense: weight only o, denom, numer.
    loss = (o * grads_in[0].to(dtype)).sum() + sum((t * gi.to(t.dtype)).sum() for t, gi in zip(last[1:], grads_in[2:]))
    got = _grad(loss, leaves)
    leaves64 = _to64(*leaves)
    state64 = tuple(leaves64[3:]) if initial else None
    ref_o, ref_last = reference.prefix_attention(*leaves64[:3], None, state64, cu)
    ref_loss = (ref_o * grads_in[0]).sum() + sum((t * gi).sum() for t, gi in zip(ref_last[1:], grads_in[2:]))
    want = _grad(ref_loss, leaves64)
    scale = 1 if dtype == torch.float64 else 8
    assert o.shape == ref_o.shape
    assert_close(o, ref_o, dtype, scale)
    for mine, theirs in zip(last, ref_last):
        assert_close(mine, theirs, acc, scale)
    for mine, theirs in zip(got, want):
        assert_close(mine, theirs, dtype, 4 * scale)


# ---- low precision ---------------------------------------------------------------------------
@settings(**SETTINGS)
@given(rows=st.integers(0, 9), k=st.integers(1, 70), n=st.integers(1, 20), bits=st.sampled_from([8, 4]),
       per_tensor=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
       transposed=st.booleans(), seed=SEEDS)
def test_qlinear_accumulator_is_exact(rows, k, n, bits, per_tensor, dtype, transposed, seed):
    """out_dtype=torch.int32 returns the integer accumulator: equal, bit for bit, to the int64
    product of the reference's quantized x and the weight's integers."""
    g = torch.Generator().manual_seed(seed)
    x = _rand(g, rows, k, dtype=dtype, transposed=transposed) * 3
    w = scangraph.quantize(_rand(g, n, k), bits, None if per_tensor else 0)
    acc = scangraph.qlinear(x, w, out_dtype=torch.int32, backend="cpp")
    qx, _ = reference.quantize(x, 8, 0)
    want = reference.qlinear_accumulator(qx, w.int_values())
    assert acc.dtype == torch.int32 and acc.shape == (rows, n)
    assert torch.equal(acc.to(torch.int64), want)
