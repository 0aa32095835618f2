"""Determinism of every op, forward and backward: bitwise identical across runs and across
torch.set_num_threads(1) vs 2 on CPU, and free of errors under torch.use_deterministic_algorithms.

The per-family files already check some backward passes across thread counts (spmm mean / max,
sddmm with common neighbours, the fixed-length selective scan, prefix attention with a batch
state). This file covers the rest: spmm sum / min with per-head weights, GAT across threads, the
scan with cu_seqlens and reverse, prefix attention with cu_seqlens, the two decode steps and the
low-precision ops and the causal convolution. Inputs are large enough that the C++ kernels split them over two threads
(row chunks balanced by edges, 16 channels per scan task, 2^16 elements per attention task,
256 pairs per common-neighbour task, 64 rows per quantization task, one (batch, channel) row
per convolution task)."""
import pytest
import torch

import scangraph
from scangraph import CSRGraph
from conftest import HAS_CUDA


def _graph(device, nodes=3000, edges=30000, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, nodes, (edges,), generator=g)
    # Skewed destinations: a few hub rows much longer than the rest, plus empty rows.
    dst = (torch.rand(edges, generator=g) ** 3 * nodes).long()
    return CSRGraph.from_edge_index(torch.stack([src, dst]), nodes).to(device)


def _leaf(*shape, device, scale=1.0, positive=False, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(*shape, generator=g) if positive else torch.randn(*shape, generator=g)
    return (t * scale).to(device).requires_grad_()


def _with_grads(out, leaves, seed=99):
    """The outputs and the gradients of <out, fixed random weights> for every leaf."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.float() * torch.randn(o.shape, generator=g).to(o.device)).sum()
               for o in outs if o.is_floating_point())
    grads = torch.autograd.grad(loss, leaves) if leaves else ()
    return [o.detach().clone() for o in outs] + list(grads)


def spmm_sum(device):
    graph = _graph(device)
    x, w = _leaf(3000, 3, 24, device=device, seed=1), _leaf(graph.num_edges, 3, device=device, positive=True, seed=2)
    return _with_grads(scangraph.spmm(graph, x, "sum", w), [x, w])


def spmm_min(device):
    graph = _graph(device)
    x, w = _leaf(3000, 40, device=device, seed=3), _leaf(graph.num_edges, device=device, positive=True, seed=4)
    return _with_grads(scangraph.spmm(graph, x, "min", w), [x, w])


def gat(device):
    graph = _graph(device)
    x = _leaf(3000, 2, 16, device=device, seed=5)
    a_src, a_dst = _leaf(3000, 2, device=device, seed=6), _leaf(3000, 2, device=device, seed=7)
    return _with_grads(scangraph.gat_aggregate(graph, x, a_src, a_dst), [x, a_src, a_dst])


def common_neighbors(device):
    graph = _graph(device, 600, 12000)
    x = _leaf(600, 8, device=device, seed=8)
    g = torch.Generator().manual_seed(9)
    src, dst = torch.randint(0, 600, (2, 1500), generator=g).to(device)
    return _with_grads(scangraph.common_neighbor_aggregate(graph, x, src, dst), [x])


def sddmm(device):
    graph = _graph(device)
    a, b = _leaf(3000, 2, 12, device=device, seed=10), _leaf(3000, 2, 12, device=device, seed=11)
    return _with_grads(scangraph.sddmm(graph, a, b), [a, b])


def scan_varlen_reverse(device):
    dim, length, dstate = 64, 300, 8
    u, z = _leaf(1, dim, length, device=device, seed=12), _leaf(1, dim, length, device=device, seed=13)
    delta = _leaf(1, dim, length, device=device, positive=True, seed=14)
    A = (-torch.rand(dim, dstate, generator=torch.Generator().manual_seed(15)) - 0.1).to(device).requires_grad_()
    B, C = _leaf(1, 2, dstate, length, device=device, seed=16), _leaf(1, 2, dstate, length, device=device, seed=17)
    D, bias = _leaf(dim, device=device, seed=18), _leaf(dim, device=device, scale=0.5, seed=19)
    cu = torch.tensor([0, 70, 70, 200, 300], dtype=torch.int32, device=device)
    h0 = _leaf(4, dim, dstate, device=device, seed=20)
    leaves = [u, delta, A, B, C, D, z, bias, h0]
    out = scangraph.selective_scan(u, delta, A, B, C, D, z, bias, True, True, initial_state=h0, cu_seqlens=cu,
                                   reverse=True)
    return _with_grads(out, leaves)


def state_update(device):
    torch.manual_seed(21)  # the same inputs on every call
    batch, dim, dstate = 4, 96, 16
    state = torch.randn(batch, dim, dstate).to(device)
    x, dt = torch.randn(batch, dim).to(device), torch.rand(batch, dim).to(device)
    A = -torch.rand(dim, dstate).to(device)
    B, C = torch.randn(batch, 2, dstate).to(device), torch.randn(batch, 2, dstate).to(device)
    D, z, bias = torch.randn(dim).to(device), torch.randn(batch, dim).to(device), torch.randn(dim).to(device)
    y = scangraph.selective_state_update(state, x, dt, A, B, C, D, z, bias, True)
    return [y, state]


def attention_varlen(device):
    heads, dim, dim_v, length = 4, 32, 32, 1500
    q = _leaf(heads, dim, device=device, seed=22)
    k, v = _leaf(1, length, heads, dim, device=device, seed=23), _leaf(1, length, heads, dim_v, device=device, seed=24)
    cu = torch.tensor([0, 600, 600, 1100, 1500], dtype=torch.int32, device=device)
    o, state = scangraph.prefix_attention(q, k, v, cu_seqlens=cu, return_state=True)
    return _with_grads((o, state[1], state[2]), [q, k, v])


def attention_step(device):
    torch.manual_seed(26)  # the same inputs on every call
    batch, heads, dim, dim_v = 64, 8, 64, 64
    state = (torch.randn(batch, heads).to(device), torch.rand(batch, heads).to(device) + 0.5,
             torch.randn(batch, heads, dim_v).to(device))
    q, k, v = (torch.randn(batch, heads, dim).to(device), torch.randn(batch, heads, dim).to(device),
               torch.randn(batch, heads, dim_v).to(device))
    o = scangraph.prefix_attention_step(state, q, k, v)
    return [o, *state]


def causal_conv(device):
    batch, dim, length, width = 2, 48, 700, 4  # 700 positions: 3 blocks of the weight gradient's partials
    x, weight = _leaf(batch, dim, length, device=device, seed=27), _leaf(dim, width, device=device, seed=28)
    bias = _leaf(dim, device=device, seed=29)
    seq_idx = torch.tensor([0] * 300 + [1] * 400, dtype=torch.int32, device=device).expand(batch, length).contiguous()
    out = scangraph.causal_conv1d_fn(x, weight, bias, seq_idx=seq_idx, activation="silu")
    torch.manual_seed(30)  # the same decoding inputs on every call
    state = torch.randn(batch, dim, 9).to(device)
    step = scangraph.causal_conv1d_update(torch.randn(batch, dim, 3).to(device), state, weight.detach(),
                                          bias.detach(), "silu", cache_seqlens=torch.tensor([5, 11], dtype=torch.int32).to(device))
    return _with_grads(out, [x, weight, bias]) + [step, state]


def lowp(device):
    g = torch.Generator().manual_seed(25)
    x = torch.randn(300, 200, generator=g).to(device)
    w = torch.randn(96, 200, generator=g).to(device)
    q8, q4 = scangraph.quantize(x, 8, 0), scangraph.quantize(w, 4, 0)
    out = [q8.data, q8.scale, q4.data, q4.scale, scangraph.quantize(x, 8, None).scale]
    wq = scangraph.quantize(w, 8, 0)
    out += [scangraph.qlinear(x, wq, torch.randn(96, generator=g).to(device), "gelu"),
            scangraph.qlinear(x, q4, out_dtype=torch.int32)]
    graph = _graph(device, 300, 6000)
    out += [scangraph.qspmm(graph, q8, "mean"), scangraph.qspmm(graph, q8, "max")]
    xf = x.clone().requires_grad_()
    out += _with_grads(scangraph.fake_quantize(xf, 8, 1) * 1.5, [xf])
    return out


OPS = {f.__name__: f for f in (spmm_sum, spmm_min, gat, common_neighbors, sddmm, scan_varlen_reverse, state_update,
                               attention_varlen, attention_step, lowp, causal_conv)}


def _assert_bitwise(first, second, name):
    assert len(first) == len(second)
    for i, (a, b) in enumerate(zip(first, second)):
        assert a.shape == b.shape and torch.equal(a, b), f"{name}: result {i} differs between runs"


@pytest.mark.parametrize("name", OPS)
def test_cpu_bitwise_across_runs_and_threads(name):
    threads = torch.get_num_threads()
    runs = []
    try:
        for run_threads in (1, 2, 2):
            torch.set_num_threads(run_threads)
            runs.append(OPS[name]("cpu"))
    finally:
        torch.set_num_threads(threads)
    # The results are not trivially equal (not all zeros): the comparison below means something.
    assert any(t.is_floating_point() and bool(t.abs().sum() > 0) for t in runs[0])
    _assert_bitwise(runs[0], runs[1], name)
    _assert_bitwise(runs[1], runs[2], name)


def _devices():
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("name", OPS)
def test_deterministic_algorithms_mode(name, device):
    """Under torch.use_deterministic_algorithms(True) every op and backward runs (no op of the
    library, nor of the torch glue around it, is flagged nondeterministic) and repeats bitwise."""
    if device == "cuda" and not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = OPS[name](device), OPS[name](device)
    finally:
        torch.use_deterministic_algorithms(previous)
    _assert_bitwise(first, second, name)
